"""Image quality metrics in jnp: PSNR and SSIM.

Images are float `[..., H, W, C]` in [0, 1] (`data_range` = 1).

`ssim` is the Gaussian-window SSIM of Wang et al. 2004 with the constants that
NeRF papers report (the same as dm-pix, which multinerf uses, and as
`skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=-1)`): an 11-tap
Gaussian (sigma 1.5, radius int(3.5 * 1.5 + 0.5) = 5), population covariances,
K1 = 0.01, K2 = 0.03, the map averaged over the "valid" region (skimage filters
with reflect padding and then crops the 5-pixel border, so only fully inside
windows count: the padding never enters the mean) and over channels.

LPIPS is not provided (it needs pretrained network weights that nerflib does
not ship).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def mse(a, b):
    """Mean squared error over all axes."""
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    return jnp.mean((a - b) ** 2)


def psnr(a, b, *, data_range: float = 1.0):
    """Peak signal-to-noise ratio in dB: 10 log10(data_range^2 / mse); inf when identical."""
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    return 10.0 * jnp.log10(data_range**2 / mse(a, b))


def gaussian_kernel(*, sigma: float = 1.5, truncate: float = 3.5) -> np.ndarray:
    """Normalized 1-D Gaussian taps of radius int(truncate * sigma + 0.5) (scipy.ndimage's rule)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def _filter_valid(x, taps):
    """Separable 'valid' filtering of x [..., H, W, C] along H then W."""
    k = len(taps)
    h, w = x.shape[-3], x.shape[-2]
    y = sum(taps[i] * x[..., i : h - k + 1 + i, :, :] for i in range(k))
    return sum(taps[i] * y[..., :, i : w - k + 1 + i, :] for i in range(k))


def ssim(a, b, *, data_range: float = 1.0, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03):
    """Mean structural similarity of two images [..., H, W, C] -> [...] (mean over pixels and channels).

    Needs H and W of at least the window size (11 for sigma 1.5).
    """
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    if a.shape != b.shape or a.ndim < 3:
        raise ValueError(f"ssim needs two images of the same shape [..., H, W, C], got {a.shape} and {b.shape}")
    taps = gaussian_kernel(sigma=sigma)
    if min(a.shape[-3], a.shape[-2]) < len(taps):
        raise ValueError(f"ssim needs images of at least {len(taps)}x{len(taps)} pixels, got {a.shape}")
    f = lambda z: _filter_valid(z, taps)  # noqa: E731
    mu_a, mu_b = f(a), f(b)
    # Population (co)variances E[xy] - E[x]E[y]; fine in float32 for [0, 1] images.
    var_a = f(a * a) - mu_a * mu_a
    var_b = f(b * b) - mu_b * mu_b
    cov = f(a * b) - mu_a * mu_b
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return jnp.mean(num / den, axis=(-3, -2, -1))


def quantize(image):
    """Round [0, 1] images to 8-bit levels (multinerf's eval_quantize_metrics), returned as float."""
    return jnp.round(jnp.clip(jnp.asarray(image, jnp.float32), 0.0, 1.0) * 255.0) / 255.0
