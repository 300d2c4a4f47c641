"""Pixels: interest-region sampling, robust losses on the colour residual, the evaluation
grid, downsampling of photos to a coarse-to-fine level, PSNR.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from nerflib.localize.options import LOSSES, SAMPLINGS


def robust_loss(residual, *, kind: str = "cauchy", scale: float = 0.1):
    """Per-pixel loss of colour residuals [..., 3] -> [...] (see the module docstring)."""
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    r2 = jnp.sum(jnp.square(residual), axis=-1)
    c2 = scale * scale
    if kind == "mse":
        return r2
    if kind == "charbonnier":
        return jnp.sqrt(r2 + c2)
    if kind == "cauchy":
        return c2 * jnp.log1p(r2 / c2)
    # Huber on r = |residual|; the double `where` keeps sqrt's gradient finite at 0.
    big = r2 > c2
    r = jnp.sqrt(jnp.where(big, r2, 1.0))
    return jnp.where(big, 2.0 * scale * r - c2, r2)


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """float [H, W, 3] -> [H // f, W // f, 3] by area averaging (the pyramid's cv2.INTER_AREA)."""
    if factor == 1:
        return np.asarray(image, np.float32)
    import cv2

    h, w = image.shape[:2]
    return cv2.resize(np.asarray(image, np.float32), (w // factor, h // factor), interpolation=cv2.INTER_AREA)


def interest_pixels(image: np.ndarray, count: int, rng: np.random.Generator, *, sampling: str = "edges",
                    dilate: int = 1, quantile: float = 0.7) -> np.ndarray:
    """`count` pixel indices (column, row) [count, 2] int32 drawn from interest regions of image [H, W, 3].

    'edges': gradient magnitude (Sobel on grey) at or above its `quantile`;
    'keypoints': FAST corners (falls back to edges with fewer than 8 corners);
    'uniform': every pixel. The region is dilated by `dilate` pixels, then
    `count` pixels are drawn from it with replacement (a fixed shape for jit).
    """
    import cv2

    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    h, w = image.shape[:2]
    gray = np.asarray(image, np.float32).mean(-1)
    mask = np.ones((h, w), bool)
    if sampling == "keypoints":
        fast = cv2.FastFeatureDetector_create(threshold=10)
        kps = fast.detect(np.clip(gray * 255, 0, 255).astype(np.uint8), None)
        if len(kps) >= 8:
            mask = np.zeros((h, w), bool)
            for kp in kps:
                x, y = int(round(kp.pt[0])), int(round(kp.pt[1]))
                mask[min(y, h - 1), min(x, w - 1)] = True
        else:
            sampling = "edges"
    if sampling == "edges":
        gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
        mag = np.hypot(gx, gy)
        thr = np.quantile(mag, quantile)
        mask = mag > thr if np.any(mag > thr) else mag >= thr  # '>' so flat images do not select everything
    if dilate > 0 and sampling != "uniform":
        kernel = np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8)
        mask = cv2.dilate(mask.astype(np.uint8), kernel) > 0
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        ys, xs = np.nonzero(np.ones((h, w), bool))
    pick = rng.integers(0, len(xs), count)
    return np.stack([xs[pick], ys[pick]], axis=-1).astype(np.int32)


def eval_grid(width: int, height: int, n_eval: int) -> np.ndarray:
    """A regular grid of about n_eval pixel indices (column, row) [E, 2] covering the image."""
    stride = max(1, math.ceil(math.sqrt(width * height / max(n_eval, 1))))
    xs = np.arange(stride // 2, width, stride)
    ys = np.arange(stride // 2, height, stride)
    grid = np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1).reshape(-1, 2)
    return grid.astype(np.int32)


def psnr_from_mse(mse):
    return -10.0 * np.log10(np.maximum(np.asarray(mse, np.float64), 1e-10))
