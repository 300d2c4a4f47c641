"""PSNR and SSIM against closed forms and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest

from nerflib import metrics


def _skimage_ssim(a, b):
    skm = pytest.importorskip("skimage.metrics")
    return skm.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=1.0, channel_axis=-1)


@pytest.mark.parametrize("shape,noise", [((40, 50, 3), 0.1), ((11, 11, 3), 0.3), ((64, 33, 3), 0.02), ((30, 30, 1), 0.2)])
def test_ssim_matches_skimage(shape, noise):
    rng = np.random.default_rng(sum(shape))
    a = rng.random(shape)
    a = (a + np.roll(a, 1, 0) + np.roll(a, 1, 1)) / 3  # some spatial structure
    b = np.clip(a + noise * rng.standard_normal(shape), 0, 1)
    assert abs(float(metrics.ssim(a, b)) - _skimage_ssim(a, b)) < 1e-4


def test_ssim_properties():
    rng = np.random.default_rng(0)
    a = rng.random((20, 24, 3))
    assert float(metrics.ssim(a, a)) == pytest.approx(1.0, abs=1e-5)
    b = np.clip(a + 0.05 * rng.standard_normal(a.shape), 0, 1)
    assert float(metrics.ssim(a, b)) == pytest.approx(float(metrics.ssim(b, a)), abs=1e-6)  # symmetric
    batched = metrics.ssim(np.stack([a, b]), np.stack([b, b]))
    assert batched.shape == (2,)
    assert float(batched[1]) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="same shape"):
        metrics.ssim(np.zeros((12, 12, 3)), np.zeros((12, 13, 3)))


def test_gaussian_kernel_is_scipys():
    taps = metrics.gaussian_kernel(sigma=1.5)
    assert len(taps) == 11 and taps.sum() == pytest.approx(1.0)
    x = np.arange(-5, 6)
    ref = np.exp(-x**2 / (2 * 1.5**2))
    np.testing.assert_allclose(taps, ref / ref.sum(), rtol=1e-6)


def test_psnr_closed_form_and_quantize():
    a = np.zeros((4, 4, 3))
    b = np.full((4, 4, 3), 0.1)
    assert float(metrics.psnr(a, b)) == pytest.approx(20.0, abs=1e-4)  # mse 0.01
    assert float(metrics.psnr(a, b, data_range=2.0)) == pytest.approx(20.0 + 20 * np.log10(2.0), abs=1e-4)
    q = np.asarray(metrics.quantize(np.array([-0.1, 0.5, 0.2, 1.3])))
    np.testing.assert_allclose(q, [0.0, 128 / 255, 51 / 255, 1.0], atol=1e-7)
