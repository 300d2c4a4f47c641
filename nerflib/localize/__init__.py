"""Camera localization against a frozen radiance field (iNeRF-style pose refinement).

Given photos of a scene the field was trained on, find each photo's pose by
rendering a subset of its pixels at a candidate pose and descending the
photometric error with respect to the pose (Yen-Chen et al., "iNeRF", 2021).

Short names and shapes (see also types.py and rigid.py):
  twist   [..., 6]   (omega, v) pose update: rotation vector (radians) first, then
                     translation (normalized-frame units).
  var     [B, 7]     the optimized vector of each problem: twist and the log focal
                     scale (0 unless `refine_focal`).
  c2w0    [B, 3, 4]  the starting pose of each problem (normalized frame).
  problem            one (query, restart) pair; B = Q * restarts, batched with vmap.
  level              one round of the coarse-to-fine schedule: images (and the
                     camera) downsampled by factor * coarse_to_fine[level].

The pose update (`apply_twist`) is the exp map of the twist left-multiplied on
the starting pose, c2w = exp(twist) c2w0 (iNeRF; pivot='world'): in the
normalized frame of a 360 capture the world origin is the cameras' focus
point, so omega orbits the camera about what it looks at and v shifts it.
pivot='camera' uses C exp(twist) C^-1 c2w0 with C = [I | c0] instead (turn in
place, then move). Measured on the analytic test scene from 10 deg / 10 %
starts (120 iterations, Adam): 'world' reached 0.01-0.06 deg on 3 of 4 queries
where 'camera' was still at 1-3 deg, its rotation and translation being
nearly interchangeable for the image (a long, flat valley). Each problem has
its own Adam state (optax, elementwise) with separate learning rates for
rotation, translation and focal scale, decayed exponentially over all
iterations.

Pixel sampling: every step draws `n_pixels` rays per problem: a fraction
`uniform_fraction` uniformly over the image, the rest from interest regions
(iNeRF's interest-region sampling): pixels of high gradient magnitude
('edges') or FAST keypoints ('keypoints'), dilated by `dilate` pixels.
At a coarse level m > 1 each pixel is rendered as the mean of s x s sub-pixel
rays (s = min(m, supersample)) with n_pixels / s^2 pixels, so the render is
box-filtered like the downsampled target (hash-grid fields do not anti-alias
on their own) and the ray count per step stays constant.

Robust loss on the colour residual r = |rgb - target| per pixel (`loss`, with
scale c = `loss_scale`): 'mse' r^2, 'charbonnier' sqrt(r^2 + c^2), 'huber'
(quadratic below c), 'cauchy' c^2 log(1 + r^2 / c^2).

Selection and convergence: after optimization every problem is rendered on a
fixed evaluation pixel set (a regular grid of about `n_eval` pixels of the
base-level image, plus each pixel's right and lower neighbour); per query the
restart with the lowest MSE there wins. Two scores are reported: PSNR, and
`gradient_ncc`, the correlation of the grey forward-difference gradients of
photo and render (edges in the same places: 1 for an exact render, ~0 for
misaligned or unrelated content). `converged` = psnr >= threshold_psnr and
gradient_ncc >= threshold_ncc. PSNR alone is a poor judge on a blurry field:
on the demo's tiny field a query stuck 7 deg off scored 18.3 dB against 19.1-
19.5 dB at true poses, while its gradient correlation fell to 0.19 against
0.26-0.35 (and to ~0 at 7 deg off without optimization). The thresholds are
calibrated per field (`step.calibrate`, used by the pipeline step):
the field's median scores on a few held-out views (else training views) at their known poses,
threshold_ncc = ncc_fraction (0.5) x that correlation, threshold_psnr = that
PSNR - 5 dB. Without calibration `min_psnr` / `min_ncc` apply. Noise or a photo
of another scene fails both. The criterion is only as sharp as the field: a
field that cannot render fine detail cannot confirm a pose to a fraction of
a degree either (a 300-step tiny field, ~18 dB, passed a query 6.9 deg off
and failed one 0.75 deg off), and neither score pins the camera's depth
along its optical axis well.

Frames: `localize` works in the field's normalized frame; `to_original` /
`to_normalized` convert poses with a scene_io.normalize_scene transform.

Modules, each importing only those above it:
  options   Options (the hyperparameters of `localize`), WORKFLOW_OPTIONS
  poses     apply_twist, perturb_pose, to_normalized / to_original
  pixels    interest-region sampling, robust losses, the evaluation grid, downsampling
  optimize  localize, score_poses (the batched, sharded optimizer)
  starts    initial guesses: COLMAP absolute pose registration, the nearest training view
  truth     ground truth mapped into the scene's frame, perturbed starts, errors.tsv
  step      the pipeline step (localize_step, calibrate) and its settings (StartSettings,
            workflow_settings: what config.yaml `localize:` and `nerf localize` take)
"""

from nerflib.localize.optimize import NUM_VARS, localize, score_poses
from nerflib.localize.options import LOSSES, SAMPLINGS, WORKFLOW_OPTIONS, Options
from nerflib.localize.pixels import (
    downsample,
    eval_grid,
    interest_pixels,
    psnr_from_mse,
    robust_loss,
)
from nerflib.localize.poses import apply_twist, perturb_pose, to_normalized, to_original
from nerflib.localize.starts import nearest_view, register_with_colmap
from nerflib.localize.step import (
    STARTS,
    StartSettings,
    calibrate,
    localize_step,
    step_settings,
    workflow_settings,
)
from nerflib.localize.truth import (
    ERRORS_COLUMNS,
    load_ground_truth,
    localize_errors,
    perturbed_starts,
    scene_radius,
)

__all__ = [
    "ERRORS_COLUMNS", "LOSSES", "NUM_VARS", "SAMPLINGS", "STARTS", "WORKFLOW_OPTIONS", "Options", "StartSettings",
    "apply_twist", "calibrate", "downsample", "eval_grid", "interest_pixels", "load_ground_truth", "localize",
    "localize_errors", "localize_step", "nearest_view", "perturb_pose", "perturbed_starts", "psnr_from_mse",
    "register_with_colmap", "robust_loss", "scene_radius", "score_poses", "step_settings", "to_normalized",
    "to_original", "workflow_settings",
]
