"""Image helpers shared by the tests (not a test module)."""

import cv2
import numpy as np


def write_encoded(path, image, params=()):
    """Write an OpenCV (BGR) image with imencode, so any file name works."""
    ok, buf = cv2.imencode(path.suffix, image, list(params))
    assert ok
    path.write_bytes(buf.tobytes())


def noise(h, w, c=3, seed=0, dtype=np.uint8):
    """Random uint8 (or uint16) pixels; c == 1 gives a 2-D grey image."""
    rng = np.random.default_rng(seed)
    hi = 256 if dtype == np.uint8 else 65536
    return rng.integers(0, hi, size=(h, w, c) if c > 1 else (h, w)).astype(dtype)


def jpeg_with_orientation(path, image_rgb, orientation: int):
    """A JPEG of `image_rgb` tagged with EXIF `orientation` (6 = rotate 90 CW for viewers)."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(image_rgb).save(path, exif=exif.tobytes(), quality=95)
