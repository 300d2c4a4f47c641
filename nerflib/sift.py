"""SIFT features into a COLMAP database with pycolmap: the device (GPU or CPU), the extraction settings
and their checks, shared by structure from motion (`nerflib.matching`, `nerflib.sfm`) and by
`nerflib.vocab_tree.build_vocab_tree`."""

from __future__ import annotations

from pathlib import Path

# sift_first_octave="auto" upsamples images up to this size (longest side, px).
# Measured on a 1600x1202 Sceaux photo: first octave -1 takes 8.7 s, 0 takes
# 2.4 s for the same number of features (about 5000).
SIFT_UPSAMPLE_MAX_SIZE = 1024


def cuda_device_count() -> int:
    """CUDA devices the driver shows this process (0 without a driver or a GPU); no CUDA toolkit needed."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0  # e.g. CUDA_VISIBLE_DEVICES="" or a driver without devices
    return int(count.value)


def resolve_gpu(gpu) -> tuple[bool, str]:
    """(SIFT on the GPU?, why) for run_sfm's `gpu` ("auto", True, False).

    "auto" uses the GPU when pycolmap is a CUDA build (pycolmap.has_cuda: the
    pycolmap-cuda12 wheel; PyPI's pycolmap is CPU-only) and the driver shows a
    device (a CPU node of a cluster running the same environment does not).
    """
    import pycolmap

    if gpu not in ("auto", True, False):
        raise ValueError(f"gpu must be 'auto', True or False, got {gpu!r}")
    if gpu is False:
        return False, "gpu=False"
    if not pycolmap.has_cuda:
        if gpu is True:
            raise ValueError(
                "gpu=True but this pycolmap is a CPU-only build (pycolmap.has_cuda is False; "
                "PyPI's pycolmap wheels are CPU-only); use gpu='auto' or install the CUDA build: "
                "pip uninstall pycolmap && pip install pycolmap-cuda12"
            )
        return False, "pycolmap is a CPU-only build (pip install pycolmap-cuda12 for GPU SIFT)"
    devices = cuda_device_count()
    if devices == 0:
        if gpu is True:
            raise ValueError("gpu=True but no CUDA device is visible to this process (CUDA_VISIBLE_DEVICES, driver)")
        return False, "pycolmap has CUDA but no CUDA device is visible"
    return True, f"pycolmap CUDA build, {devices} CUDA device(s)"


def check_extraction_args(threads, max_image_size) -> None:
    """ValueError for bad `threads` (>= 1, or -1: all cores) or `max_image_size` (>= 16 px, or None)."""
    if not isinstance(threads, int) or (threads < 1 and threads != -1):
        raise ValueError(f"threads must be a positive integer or -1 (all cores), got {threads!r}")
    if max_image_size is not None and (not isinstance(max_image_size, int) or max_image_size < 16):
        raise ValueError(f"max_image_size must be an integer >= 16 pixels or None, got {max_image_size!r}")


def check_sift_args(max_num_features, sift_first_octave) -> None:
    if not isinstance(max_num_features, int) or max_num_features < 64:
        raise ValueError(f"max_num_features must be an integer >= 64, got {max_num_features!r}")
    if sift_first_octave != "auto" and sift_first_octave not in (-1, 0, 1, 2):
        raise ValueError(f"sift_first_octave must be 'auto', -1, 0, 1 or 2, got {sift_first_octave!r}")


def choose_first_octave(sizes, max_image_size, sift_first_octave) -> tuple[int, int]:
    """(longest side used for extraction, SIFT first octave) for check_images' `sizes`."""
    longest = max(max(w, h) for _, w, h in sizes)
    if max_image_size is not None:
        longest = min(longest, max_image_size)
    if sift_first_octave == "auto":
        return longest, -1 if longest <= SIFT_UPSAMPLE_MAX_SIZE else 0
    return longest, int(sift_first_octave)


def extract(database: Path, image_dir: Path, names, *, camera_model, single_camera, threads, max_image_size,
            max_num_features, first_octave, use_gpu) -> None:
    """SIFT keypoints and descriptors of `names` into `database` (run_sfm and build_vocab_tree alike)."""
    import pycolmap

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = threads
    extraction.max_image_size = -1 if max_image_size is None else int(max_image_size)
    extraction.use_gpu = use_gpu
    extraction.sift.max_num_features = int(max_num_features)
    extraction.sift.first_octave = first_octave
    pycolmap.extract_features(
        database,
        image_dir,
        image_names=list(names),
        camera_mode=pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.AUTO,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.cuda if use_gpu else pycolmap.Device.cpu,
    )

