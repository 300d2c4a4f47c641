"""Images + cameras -> training ray batches and full-image test rays.

Short names:
  N            images in a split; H, W their size at the training factor.
  images       uint8 [H, W, 3] per image (exact for 8-bit photos; halves the
               host and device memory of float16 and quarters float32's).
  pixels       [..., 2] int (column, row); rays pass through pixel centres.
  Batch        a pytree: rays (types.Rays [B, ...]) and rgb [B, 3] float32.

Splits follow multinerf (llffhold): images are sorted by name and every
`test_every`-th one (0, k, 2k, ...) is held out; `test_every=0` holds none out.
`cam_idx` of a training ray is the image's position among the training
images (it indexes the model's appearance table); held-out views get 0 (and
are rendered with `zero_glo`).

Training rays are made *inside* the jitted step from (image, pixel) indices
drawn there (`RayBatcher.sample`): only the uint8 images and the cameras live
on the devices, not 13 floats per pixel, so big captures fit. Two layouts:
  replicate  every device holds every training image; the global batch is
             drawn from one key, so it is the same for any number of devices
             or processes (the partitionable threefry generator makes every
             device draw only its own slice).
  shard      device d holds images d, d + D, d + 2D, ... (ceil(N / D) slots,
             the last one empty on some devices) and draws batch_size / D rays
             from them with key fold_in(key, d); each process loads only the
             images of its own devices. Memory per device is 1/D; the batch
             then depends on D.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Iterator

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nerflib import cameras as cam_lib
from nerflib import parallel
from nerflib.layout import SceneLayout
from nerflib.types import Camera, Rays, Scene

SPLITS = ("train", "test", "all")


@flax.struct.dataclass
class Batch:
    """A training batch: rays [B] and their ground-truth colours rgb [B, 3]."""

    rays: Rays
    rgb: jnp.ndarray


@dataclasses.dataclass
class Dataset:
    """One split of a posed image set at one downsampling factor (host side).

    names      image file names (sorted), `indices` their positions in the sorted scene.
    cameras    per image, intrinsics at this factor; `camera_model` and
               `camera_params` [N, P] express them in one common model.
    c2w        [N, 3, 4] float32 poses in the (normalized) training frame.
    near, far  ray bounds (world units of the normalized frame).
    cam_idx    [N] int32 appearance index (position among training images, 0 for held-out).
    num_train_images  size of the appearance table (training images of the scene).
    scene, normalization  the whole (normalized) scene and scene_io.normalize_scene's
               transform (None when the frame was kept).
    """

    names: list[str]
    indices: np.ndarray
    cameras: list[Camera]
    c2w: np.ndarray
    near: float
    far: float
    split: str
    cam_idx: np.ndarray
    num_train_images: int
    image_paths: list[Path]
    background: str = "white"
    scene: Scene | None = None
    normalization: dict | None = None
    _images: list[np.ndarray | None] = dataclasses.field(default_factory=list, repr=False)

    def __post_init__(self):
        if not self._images:
            self._images = [None] * len(self.names)
        self.camera_model, self.camera_params = (
            cam_lib.stack_params(self.cameras) if self.cameras else ("PINHOLE", np.zeros((0, 4)))
        )

    def __len__(self) -> int:
        return len(self.names)

    def image(self, i: int) -> np.ndarray:
        """uint8 [H, W, 3] of image i, read on first use (then kept)."""
        if self._images[i] is None:
            self._images[i] = _read_image(self.image_paths[i], self.cameras[i], self.background)
        return self._images[i]

    def image_float(self, i: int) -> np.ndarray:
        return self.image(i).astype(np.float32) / 255.0

    def load_all(self) -> "Dataset":
        for i in range(len(self)):
            self.image(i)
        return self

    @property
    def sizes(self) -> np.ndarray:
        """[N, 2] int (width, height)."""
        return np.array([(c.width, c.height) for c in self.cameras], np.int32).reshape(-1, 2)

    @property
    def num_pixels(self) -> int:
        return int(np.prod(self.sizes, axis=1).sum()) if len(self) else 0

    def rays(self, i: int) -> Rays:
        """Full-image rays [H, W] (numpy float32) of image i."""
        return cam_lib.generate_rays(
            self.cameras[i], self.c2w[i], near=self.near, far=self.far, cam_idx=int(self.cam_idx[i])
        )

    def iterate_views(self) -> Iterator[tuple[str, Rays, np.ndarray]]:
        """(name, rays [H, W], rgb float32 [H, W, 3]) for every image of the split."""
        for i, name in enumerate(self.names):
            yield name, self.rays(i), self.image_float(i)


def iterate_test_views(dataset: Dataset) -> Iterator[tuple[str, Rays, np.ndarray]]:
    """Full-image rays and ground truth of each view of `dataset` (load it with split='test')."""
    return dataset.iterate_views()


def _read_image(path: Path, camera: Camera, background: str) -> np.ndarray:
    from nerflib.images import load_image

    rgb = load_image(path, background=background)
    if rgb.shape[:2] != (camera.height, camera.width):
        raise ValueError(
            f"image {path} is {rgb.shape[1]}x{rgb.shape[0]} but its camera at this factor expects "
            f"{camera.width}x{camera.height}; is the image folder at the right factor (images_F/ for factor F)?"
        )
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _image_dir_of(scene: Scene, factor: int) -> str:
    """The scene's photos at `factor`: its image_dir for 1, else images_{factor}/ of the COLMAP project
    (or results folder) whose images/ they are (nerflib.layout)."""
    if scene.image_dir is None:
        raise ValueError("no image_dir given and the scene names none")
    if factor == 1:
        return scene.image_dir
    project = SceneLayout.containing(scene.image_dir, "photos_link")
    if project is None:
        raise ValueError(f"no image_dir given for factor {factor}, and the scene's photos ({scene.image_dir}) are not "
                         f"the images/ folder of a COLMAP project with images_{factor}/ beside it; pass image_dir=")
    return project.images(factor)


def split_indices(n: int, split: str, test_every: int) -> np.ndarray:
    """Indices of `split` among n images sorted by name (llffhold: every test_every-th is test)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if test_every < 0:
        raise ValueError(f"test_every must be >= 0, got {test_every}")
    all_idx = np.arange(n)
    if split == "all":
        return all_idx
    test = np.zeros(n, bool)
    if test_every > 0:
        test[::test_every] = True
    return all_idx[test] if split == "test" else all_idx[~test]


def load_dataset(
    scene: Scene,
    *,
    image_dir: str | os.PathLike | None = None,
    factor: int = 1,
    split: str = "train",
    test_every: int = 8,
    white_background: bool = True,
    normalize: str | None = "360",
    near: float | None = None,
    far: float | None = None,
    lazy: bool = False,
) -> Dataset:
    """A split of `scene` with images read from `image_dir` (already at `factor`).

    image_dir: the folder holding the images at this factor (e.g. images_4/);
      None -> `scene.image_dir` for factor 1, its sibling images_{factor} otherwise.
    factor: divides the scene's (full-resolution) cameras (cameras.scale_camera).
    normalize: '360' / 'forward' -> scene_io.normalize_scene(scene, mode=...)
      on the whole scene before splitting; None keeps the given frame.
    near, far: ray bounds; None -> the (normalized) scene's own, which must then exist.
    lazy: read images on first use (each process of a sharded run reads only its own).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if len(scene) == 0:
        raise ValueError("the scene has no images")
    normalization = None
    if normalize is not None:
        scene, normalization = _normalize(scene, normalize)
    if image_dir is None:
        image_dir = _image_dir_of(scene, factor)
    image_dir = Path(image_dir)
    near = scene.near if near is None else near
    far = scene.far if far is None else far
    if near is None or far is None:
        raise ValueError("ray bounds unknown: pass near= and far= (the scene file has none)")
    if not 0 <= near < far:
        raise ValueError(f"need 0 <= near < far, got near={near}, far={far}")

    order = np.argsort(np.array(scene.names, dtype=object), kind="stable")
    train_pos = {int(j): k for k, j in enumerate(split_indices(len(scene), "train", test_every))}
    chosen = split_indices(len(scene), split, test_every)
    idx = order[chosen]
    names = [scene.names[i] for i in idx]
    paths = [image_dir / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) of the scene are missing in {image_dir}, e.g. {', '.join(missing[:3])}; "
            f"build the pyramid for factor {factor} or point image_dir at the right folder"
        )
    cameras = [cam_lib.scale_camera(scene.camera_of(i), factor) for i in idx]
    cam_idx = np.array([train_pos.get(int(c), 0) for c in chosen], np.int32)
    ds = Dataset(
        names=names,
        indices=np.asarray(chosen, np.int64),
        cameras=cameras,
        c2w=np.asarray(scene.c2w[idx], np.float32),
        near=float(near),
        far=float(far),
        split=split,
        cam_idx=cam_idx,
        num_train_images=max(1, len(train_pos)),
        image_paths=paths,
        background="white" if white_background else "black",
        scene=scene,
        normalization=normalization,
    )
    return ds if lazy else ds.load_all()


def load_for_config(cfg, scene: Scene, *, image_dir: str | os.PathLike | None = None, split: str = "train",
                    lazy: bool = False) -> Dataset:
    """`load_dataset` with a `configs.Config`'s data settings.

    factor, test_every, normalize and the background come from `cfg`; ray
    bounds from cfg.near/cfg.far when set, else the (normalized) scene's own,
    else the model's defaults (ModelConfig.near/far: 0.2 and 1e6, mip-NeRF 360's).
    """
    probe, normalization = (scene, None) if cfg.normalize is None else _normalize(scene, cfg.normalize)
    near = cfg.near if cfg.near is not None else (probe.near if probe.near is not None else cfg.model.near)
    far = cfg.far if cfg.far is not None else (probe.far if probe.far is not None else cfg.model.far)
    ds = load_dataset(probe, image_dir=image_dir, factor=cfg.factor, split=split, test_every=cfg.test_every,
                      white_background=cfg.white_background, normalize=None, near=near, far=far, lazy=lazy)
    ds.normalization = normalization
    return ds


def _normalize(scene: Scene, mode: str) -> tuple[Scene, dict | None]:
    """scene_io.normalize_scene(scene, mode=mode) -> (scene, transform)."""
    from nerflib import scene_io

    out = scene_io.normalize_scene(scene, mode=mode)
    return out if isinstance(out, tuple) else (out, None)


def dataset_from_arrays(
    images: np.ndarray, cameras: list[Camera], c2w: np.ndarray, *, near: float, far: float,
    names: list[str] | None = None, split: str = "train",
) -> Dataset:
    """A Dataset from in-memory images [N, H, W, 3] (float in [0, 1] or uint8), for tests and tools."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    n = len(images)
    if len(cameras) == 1 and n > 1:
        cameras = list(cameras) * n
    names = names or [f"{i:03d}.png" for i in range(n)]
    return Dataset(
        names=names, indices=np.arange(n), cameras=list(cameras), c2w=np.asarray(c2w, np.float32).reshape(n, 3, 4),
        near=float(near), far=float(far), split=split,
        cam_idx=np.arange(n, dtype=np.int32) if split == "train" else np.zeros(n, np.int32),
        num_train_images=n, image_paths=[Path(x) for x in names], _images=[im for im in images],
    )


# --------------------------------------------------------------------------- training batches


@flax.struct.dataclass
class RayData:
    """What the jitted step needs to make rays: images and cameras on the devices.

    images [M, Hmax, Wmax, 3] uint8 (zero-padded), sizes [M, 2] int32 (W, H;
    0 for empty slots), params [M, P] float32, c2w [M, 3, 4] float32, where
    M = N (replicate) or D * ceil(N / D) (shard).
    """

    images: jnp.ndarray
    sizes: jnp.ndarray
    params: jnp.ndarray
    c2w: jnp.ndarray


class RayBatcher:
    """Random training rays from all pixels of the training images, drawn inside jit.

    batcher = RayBatcher(dataset, batch_size=..., mesh=...)
    batch = batcher.sample(key, batcher.data)     # inside the train step
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, mesh: Mesh, mode: str = "replicate"):
        if mode not in ("replicate", "shard"):
            raise ValueError(f"mode must be 'replicate' or 'shard', got {mode!r}")
        if len(dataset) == 0:
            raise ValueError("the training set has no images")
        num_devices = mesh.devices.size
        parallel.check_batch_size(batch_size, num_devices)
        self.batch_size = int(batch_size)
        self.mesh = mesh
        self.mode = mode
        self.num_images = len(dataset)
        self.camera_model = dataset.camera_model
        self.near, self.far = dataset.near, dataset.far
        sizes = dataset.sizes
        self.hmax, self.wmax = int(sizes[:, 1].max()), int(sizes[:, 0].max())
        self.uniform_size = bool(np.all(sizes == sizes[0]))
        n = len(dataset)
        if mode == "shard" and n < num_devices:
            raise ValueError(f"image sharding needs at least one training image per device ({n} images, "
                             f"{num_devices} devices); use image_sharding='replicate'")
        per = n if mode == "replicate" else math.ceil(n / num_devices)
        slots = n if mode == "replicate" else per * num_devices
        self.per_device = per
        # Slot s holds image order[s]. Sharded: device d's j-th slot holds image
        # j * D + d, so devices differ by at most one image; -1 marks an empty slot.
        if mode == "replicate":
            order = np.arange(n)
        else:
            d, j = np.divmod(np.arange(slots), per)
            order = np.where(j * num_devices + d < n, j * num_devices + d, -1)
        spec = P() if mode == "replicate" else P(parallel.DATA_AXIS)
        sharding = NamedSharding(mesh, spec)
        valid = order >= 0
        safe = np.where(valid, order, 0)
        host = {
            "sizes": np.where(valid[:, None], sizes[safe], 0).astype(np.int32),
            "params": dataset.camera_params[safe].astype(np.float32),
            "c2w": dataset.c2w[safe].astype(np.float32),
        }
        shape = (slots, self.hmax, self.wmax, 3)

        def image_block(index):
            rows = range(slots)[index[0]]
            block = np.zeros((len(rows), self.hmax, self.wmax, 3), np.uint8)
            for k, s in enumerate(rows):
                if order[s] >= 0:
                    im = dataset.image(int(order[s]))
                    block[k, : im.shape[0], : im.shape[1]] = im
            return block[(slice(None),) + tuple(index[1:])]

        cache: dict = {}

        def cached_block(index):
            key = tuple((s.start, s.stop) for s in index)
            if key not in cache:
                cache[key] = image_block(index)
            return cache[key]

        self.data = RayData(
            images=jax.make_array_from_callback(shape, sharding, cached_block),
            **{k: parallel.global_array(v, sharding) for k, v in host.items()},
        )
        self.sharding = RayData(images=sharding, sizes=sharding, params=sharding, c2w=sharding)

    def poisoned_data(self) -> RayData:
        """`data` with NaN camera poses (every ray NaN): the debug knob Config.debug_nan_steps feeds it."""
        if getattr(self, "_poisoned", None) is None:
            self._poisoned = self.data.replace(c2w=self.data.c2w * jnp.float32(jnp.nan))
        return self._poisoned

    @property
    def device_bytes(self) -> int:
        """Image bytes each device holds."""
        return self.per_device * self.hmax * self.wmax * 3

    def _draw(self, key, data: RayData, n_rays: int, n_valid, image_index) -> Batch:
        """n_rays rays from slots [0, n_valid) of `data` (local arrays); image_index(slot) -> cam_idx."""
        k_img, k_x, k_y = jax.random.split(key, 3)
        sizes = data.sizes
        if self.uniform_size:
            img = jax.random.randint(k_img, (n_rays,), 0, n_valid)
        else:  # pick images in proportion to their pixel counts: uniform over pixels
            area = (sizes[:, 0] * sizes[:, 1]).astype(jnp.float32)
            img = jax.random.categorical(k_img, jnp.log(area), shape=(n_rays,))
        wh = sizes[img]
        x = jnp.minimum(jnp.floor(jax.random.uniform(k_x, (n_rays,)) * wh[:, 0]).astype(jnp.int32), wh[:, 0] - 1)
        y = jnp.minimum(jnp.floor(jax.random.uniform(k_y, (n_rays,)) * wh[:, 1]).astype(jnp.int32), wh[:, 1] - 1)
        rgb = data.images[img, y, x].astype(jnp.float32) / 255.0
        pixels = jnp.stack([x, y], axis=-1).astype(jnp.float32)
        rays = cam_lib.rays_from_pixels(
            self.camera_model, data.params, data.c2w, img, pixels, near=self.near, far=self.far
        )
        rays = rays.replace(cam_idx=image_index(img)[:, None].astype(jnp.int32))
        return Batch(rays=rays, rgb=rgb)

    def sample(self, key, data: RayData) -> Batch:
        """A global batch [batch_size] split along 'data'; call inside jit (static shapes)."""
        if self.mode == "replicate":
            batch = self._draw(key, data, self.batch_size, self.num_images, lambda slot: slot)
            return jax.lax.with_sharding_constraint(batch, NamedSharding(self.mesh, P(parallel.DATA_AXIS)))

        num_devices = self.mesh.devices.size
        per = self.batch_size // num_devices

        def local(key, data):
            d = jax.lax.axis_index(parallel.DATA_AXIS)
            n_valid = jnp.sum(data.sizes[:, 0] > 0)  # valid slots come first on every device
            return self._draw(jax.random.fold_in(key, d), data, per, n_valid, lambda slot: slot * num_devices + d)

        spec = P(parallel.DATA_AXIS)
        fn = jax.shard_map(
            local, mesh=self.mesh, in_specs=(P(), RayData(spec, spec, spec, spec)), out_specs=spec,
            check_vma=False,
        )
        return fn(key, data)


def choose_mode(dataset: Dataset, *, setting: str, threshold_mb: float) -> str:
    """'replicate' or 'shard' for Config.image_sharding ('auto' shards above threshold_mb of uint8 images)."""
    if setting in ("replicate", "shard"):
        return setting
    if setting != "auto":
        raise ValueError(f"image_sharding must be 'auto', 'replicate' or 'shard', got {setting!r}")
    return "shard" if dataset.num_pixels * 3 / 2**20 > threshold_mb else "replicate"


def toy_scene(out_dir: str | os.PathLike, *, num_images: int = 8, width: int = 16, height: int = 12) -> Scene:
    """A tiny posed image set for tests and smoke runs (not a real scene: no 3D consistency).

    Writes out_dir/images/NNN.png (smooth colour patterns that differ per view)
    and out_dir/scene.json: PINHOLE cameras on a circle of radius 2 at height
    0.5, looking at the origin (near 0.5, far 4). Takes milliseconds.
    """
    from nerflib import fileio, scene_io

    out_dir = Path(out_dir)
    f = 0.8 * width
    camera = Camera("PINHOLE", int(width), int(height), (f, f, width / 2, height / 2))
    names, poses = [], []
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    for i in range(num_images):
        a = 2 * np.pi * i / num_images
        eye = np.array([2 * np.cos(a), 2 * np.sin(a), 0.5])
        z = -eye / np.linalg.norm(eye)
        x = np.cross(z, [0.0, 0.0, 1.0])
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        poses.append(np.concatenate([np.stack([x, y, z], 1), eye[:, None]], 1))
        phase = a + xx * 3.0
        rgb = np.stack([0.5 + 0.4 * np.sin(phase), 0.5 + 0.4 * np.cos(2 * phase + yy * 4), 0.3 + 0.5 * yy], -1)
        name = f"{i:03d}.png"
        fileio.write_image(out_dir / "images" / name, np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8))
        names.append(name)
    scene = Scene(names=names, c2w=np.stack(poses), cameras=[camera], camera_idx=np.zeros(num_images, np.int32),
                  image_dir=str(out_dir / "images"), near=0.5, far=4.0)
    scene_io.write_scene_json(scene, out_dir / "scene.json")
    return scene
