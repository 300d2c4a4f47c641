"""Options: the hyperparameters of `localize` (docstring of nerflib.localize).

The fields of WORKFLOW_OPTIONS are declared settings (nerflib.settings): config.yaml
`localize:` and `nerf localize` derive from them; any other field goes through
`localize.options` / `--set`.
"""

from __future__ import annotations

import dataclasses

from nerflib.settings import setting

LOSSES = ("mse", "charbonnier", "huber", "cauchy")


SAMPLINGS = ("edges", "keypoints", "uniform")


@dataclasses.dataclass(frozen=True)
class Options:
    """Hyperparameters of `localize` (keyword arguments of the same names)."""

    # The settings of the workflow (config.yaml `localize:`) and of `nerf localize` (nerflib.settings);
    # the defaults measured on the demo in CI (commit 1e474f8: 4/4 queries at 0.08 deg). The GPU
    # benchmarks of bench/RESULTS.md ran 300 iterations, 512 rays, 4096 evaluation pixels
    # (bench/localize_bench.py passes those).
    iters: int = setting(250, "Optimization steps per query (split over the coarse-to-fine levels).", minimum=1)
    restarts: int = setting(3, "Starts per query (the guess, then perturbed copies); the best photometric fit wins.",
                            minimum=1)
    n_pixels: int = setting(256, "Rays per start and step.", minimum=1, flag="--pixels")
    n_eval: int = setting(1024, "Pixels per query of the final photometric score (winner selection, convergence "
                                "flag), a regular grid of the base-level image.", minimum=1)
    # The rest: config.yaml localize.options, nerf localize --set.
    restart_rot_deg: float = 10.0  # perturbation of restarts 1.. (rotation about the camera centre) ...
    restart_trans: float = 0.1  # ... and translation (normalized units; cameras lie in the unit ball).
    coarse_to_fine: tuple[int, ...] = (4, 2, 1)  # extra downsampling per level; iterations split evenly.
    supersample: int = 2  # sub-pixel rays per axis at coarse levels (at most the level's factor).
    sampling: str = "edges"
    uniform_fraction: float = 0.25
    dilate: int = 1
    loss: str = "cauchy"
    loss_scale: float = 0.1
    lr_rot: float = 0.01  # Adam step sizes (radians, normalized units, log focal).
    lr_trans: float = 0.01
    lr_focal: float = 0.005
    lr_final_mult: float = 0.05  # exponential decay to lr * this at the last iteration.
    refine_focal: bool = False
    pivot: str = "world"  # see apply_twist; "world" (iNeRF) converged better on object-centric scenes.
    eval_chunk: int = 2048  # evaluation rays per problem per call ...
    eval_rays: int = 65536  # ... and at most this many over all problems (memory bound: 50 queries x 8 restarts).
    min_psnr: float = 20.0  # converged thresholds when `localize` is given none.
    min_ncc: float = 0.3
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "coarse_to_fine", tuple(int(m) for m in self.coarse_to_fine))

        def need(ok, what, value):
            if not ok:
                raise ValueError(f"localize: {what}, got {value!r}")

        need(self.iters >= 1, "iters must be >= 1", self.iters)
        need(self.n_pixels >= 1, "n_pixels must be >= 1", self.n_pixels)
        need(self.restarts >= 1, "restarts must be >= 1", self.restarts)
        need(len(self.coarse_to_fine) >= 1 and all(m >= 1 for m in self.coarse_to_fine),
             "coarse_to_fine must be a non-empty tuple of factors >= 1", self.coarse_to_fine)
        need(self.supersample >= 1, "supersample must be >= 1", self.supersample)
        need(self.sampling in SAMPLINGS, f"sampling must be one of {SAMPLINGS}", self.sampling)
        need(0.0 <= self.uniform_fraction <= 1.0, "uniform_fraction must be in [0, 1]", self.uniform_fraction)
        need(self.loss in LOSSES, f"loss must be one of {LOSSES}", self.loss)
        need(self.loss_scale > 0, "loss_scale must be > 0", self.loss_scale)
        need(self.pivot in ("camera", "world"), "pivot must be 'camera' or 'world'", self.pivot)
        need(min(self.lr_rot, self.lr_trans, self.lr_focal) >= 0, "learning rates must be >= 0",
             (self.lr_rot, self.lr_trans, self.lr_focal))
        need(0 < self.lr_final_mult <= 1, "lr_final_mult must be in (0, 1]", self.lr_final_mult)
        need(min(self.n_eval, self.eval_chunk, self.eval_rays) >= 1, "n_eval, eval_chunk and eval_rays must be >= 1",
             (self.n_eval, self.eval_chunk, self.eval_rays))


WORKFLOW_OPTIONS = ("iters", "restarts", "n_pixels", "n_eval")  # the Options fields of config.yaml `localize:`
