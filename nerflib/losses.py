"""Training losses of mip-NeRF 360: data term, interlevel and distortion.

Short names and shapes:
  rgb, rgb_gt   [..., 3]   rendered and ground-truth colours.
  renderings    list of per-round dicts from `NerfModel` (last = final).
  ray_history   list of per-round dicts with 'sdist' [..., n+1] and
                'weights' [..., n].

All losses are means over rays (and colour channels for the data term), so
their size does not depend on the batch size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nerflib import math as nmath
from nerflib import stepfun

_EPS = float(jnp.finfo(jnp.float32).eps)

__all__ = ["data_loss", "interlevel_loss", "proposal_sparsity_loss", "distortion_loss", "total_loss"]


def _mean(x, mask=None):
    """Mean of x [..., k] over everything, or over the rays where mask [...] is True."""
    if mask is None:
        return jnp.mean(x)
    m = jnp.broadcast_to(mask[..., None], x.shape).astype(x.dtype)
    return jnp.sum(x * m) / jnp.maximum(1.0, jnp.sum(m))


def data_loss(rgb, rgb_gt, *, kind: str = "charbonnier", charb_padding: float = 0.001, mask=None):
    """Mean reconstruction error: 'mse' or 'charbonnier' sqrt(r^2 + pad^2) (over the rays in `mask`)."""
    resid_sq = (rgb - rgb_gt) ** 2
    if kind == "mse":
        return _mean(resid_sq, mask)
    if kind == "charbonnier":
        if not charb_padding > 0:
            raise ValueError(f"charb_padding must be positive, got {charb_padding!r}")
        return _mean(jnp.sqrt(resid_sq + charb_padding**2), mask)
    raise ValueError(f"unknown data loss kind {kind!r}; choose 'charbonnier' or 'mse'")


def interlevel_loss(ray_history, *, mult: float = 1.0, blur: tuple[float, ...] = (), mask=None):
    """Proposal rounds must bound the final weights from above.

    blur = (): mip-NeRF 360's loss (paper Eq. 13), on the final round's intervals against the
    proposal's outer measure. blur = (r_1, ..., r_{k}) (one half-width per proposal round, in
    normalised distance s): Zip-NeRF's anti-aliased loss, on each proposal round's intervals
    against the final weights blurred by a box of half-width r_i and re-binned there
    (`stepfun.blur_and_resample_weights`): max(0, w_blur - w_prop)^2 / (w_prop + eps). It is
    smooth in the proposal's endpoints (no jumps as intervals cross), which removes the
    z-aliasing of the plain loss; Zip-NeRF uses it with blur (0.03, 0.003) and mult 0.01.
    Gradients reach only the proposal weights: the final round is a fixed target here.
    mask [...]: the rays to average over (default: all). Means over rays *and* intervals, as in
    the reference implementations whose multipliers (1.0; Zip-NeRF's 0.01) were tuned so.
    """
    if len(ray_history) < 2:
        return jnp.zeros(())
    proposals = ray_history[:-1]
    if blur and len(blur) != len(proposals):
        raise ValueError(f"interlevel blur needs one half-width per proposal round ({len(proposals)}), got {blur}")
    final = ray_history[-1]
    t = jax.lax.stop_gradient(final["sdist"])
    w = jax.lax.stop_gradient(final["weights"])
    if not blur:
        loss = sum(_mean(stepfun.lossfun_outer(t, w, h["sdist"], h["weights"]), mask) for h in proposals)
        return mult * loss
    loss = 0.0
    for r, h in zip(blur, proposals):
        w_blur = jax.lax.stop_gradient(stepfun.blur_and_resample_weights(h["sdist"], t, w, r))
        loss += _mean(jnp.maximum(0.0, w_blur - h["weights"]) ** 2 / (h["weights"] + _EPS), mask)
    return mult * loss


def proposal_sparsity_loss(ray_history, *, mult: float, mask=None):
    """The proposal rounds' weight in front of the last interval, summed per ray, mean over rays.

    Zero where a proposal sees nothing before the far bound; the interlevel
    loss holds the weights up wherever the final round needs them.
    """
    if mult == 0 or len(ray_history) < 2:
        return jnp.zeros(())
    loss = sum(_mean(jnp.sum(h["weights"][..., :-1], axis=-1)[..., None], mask) for h in ray_history[:-1])
    return mult * loss


def distortion_loss(ray_history, *, mult: float = 0.01, mask=None):
    """Distortion regulariser (paper Eq. 15) on the final round, in s units (over the rays in `mask`)."""
    final = ray_history[-1]
    return mult * _mean(stepfun.lossfun_distortion(final["sdist"], final["weights"])[..., None], mask)


def total_loss(renderings, ray_history, rgb_gt, cfg, *, data_loss_mult: float = 1.0):
    """The mip-NeRF 360 objective for one batch.

    Args:
      renderings, ray_history: the model's outputs.
      rgb_gt: [..., 3] target colours.
      cfg: a models.ModelConfig (loss type and multipliers).
      data_loss_mult: weight of the data term.

    Returns:
      (loss, stats) with stats 'data', 'interlevel', 'distortion' (weighted
      terms), 'mse' and 'psnr' of the final rendering, and with empty-space
      skipping 'live' and 'fits', the fractions of final samples the field
      evaluated and of rays in the loss.
    """
    rgb = renderings[-1]["rgb"]
    # Empty-space skipping with a sample budget: the rays that did not fit are left out.
    mask = ray_history[-1].get("fits")
    data = data_loss_mult * data_loss(rgb, rgb_gt, kind=cfg.data_loss_type, charb_padding=cfg.charb_padding,
                                      mask=mask)
    inter = interlevel_loss(ray_history, mult=cfg.interlevel_loss_mult, blur=cfg.interlevel_blur, mask=mask)
    dist = distortion_loss(ray_history, mult=cfg.distortion_loss_mult, mask=mask)
    sparsity = proposal_sparsity_loss(ray_history, mult=cfg.prop_sparsity_mult, mask=mask)
    mse = _mean((jax.lax.stop_gradient(rgb) - rgb_gt) ** 2, mask)
    stats = {"data": data, "interlevel": inter, "distortion": dist, "mse": mse, "psnr": nmath.psnr_from_mse(mse)}
    if "live" in ray_history[-1]:  # empty-space skipping: the fractions of samples evaluated, rays trained
        stats["live"] = jnp.mean(ray_history[-1]["live"].astype(jnp.float32))
        stats["fits"] = jnp.mean(mask.astype(jnp.float32))
    if cfg.prop_sparsity_mult > 0:
        stats["prop_sparsity"] = sparsity
    return data + inter + dist + sparsity, stats
