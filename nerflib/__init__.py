"""Distributed NeRF as a library.

The public API is the pipeline's steps, each working on files, in `nerflib.steps` (what the
Snakemake rules and the `nerf` commands call): PUBLIC_STEPS below. Code that builds its own runs
uses `nerflib.configs` (`get_preset`, `PRESETS`, `override`), `nerflib.layout.SceneLayout` (where
a scene's results live) and `nerflib.train.train` on a `nerflib.datasets.Dataset`.

Importing `nerflib` or `nerflib.steps` imports neither JAX nor pycolmap (each step imports what
it needs when it runs). Process-wide effects happen only while a step runs: `jax.distributed`
starts only where the environment names several processes (DNERF_COORDINATOR ... or a
multi-task SLURM step; `nerflib.parallel`), and `train` catches SIGTERM, SIGUSR1 and SIGINT to
save a checkpoint first, putting the previous handlers back when it returns.
"""

PUBLIC_STEPS = ("synthetic_scene", "poses", "pyramid", "train", "evaluate", "render", "localize", "export")
