"""What a model folder's checkpoints were trained from, so that a rerun never resumes a stale model.

Checkpoints live outside the workflow's declared outputs (a preempted job must
resume from them), so Snakemake cannot tell a checkpoint of other photos,
other poses or other settings from one of this run. `model/fingerprint.json`
records what training saw:

  config   the resolved `configs.Config` as a dict, without the fields that
           only change how a run is carried out (RUN_ONLY_FIELDS);
  poses    a digest of the training split's cameras as training sees them
           (poses in the normalized frame, intrinsics, ray bounds, names);
  images   {name: sha256 of the file} of the training split's images;
  tile_points  (tiled models only, Config.tiles > 1) a digest of the points the tiles are split at
           (nerflib.tiled.pipeline.layout_points: the SfM points, else the camera centres), which
           the checkpoints' layout was made from.

A run whose fingerprint equals the stored one resumes; any difference (or no
stored fingerprint beside existing checkpoints) starts a fresh training, and
`differences` says why in words.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from nerflib import fileio

FILE_NAME = "fingerprint.json"
VERSION = 1
# Config fields that change how a run is carried out (checkpointing, logging, memory layout,
# evaluation during training, failure handling), never the trained parameters: a change resumes.
RUN_ONLY_FIELDS = frozenset({
    "image_sharding", "shard_threshold_mb", "checkpoint_every", "keep_checkpoints", "print_every", "tb_every",
    "eval_every", "render_chunk_size", "eval_quantize", "nan_patience", "max_lr_drops",
})
_MAX_NAMED = 5


def file_digest(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _cameras_digest(dataset) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"names": list(dataset.names), "model": str(dataset.camera_model),
                         "near": float(dataset.near), "far": float(dataset.far)}).encode())
    for array in (dataset.c2w, dataset.camera_params):
        a = np.ascontiguousarray(np.asarray(array, dtype=np.float64))
        h.update(f"{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def of_training(cfg, dataset) -> dict:
    """The fingerprint of training `cfg` on `dataset` (the training split)."""
    from nerflib import configs

    config = {k: v for k, v in configs.to_dict(cfg).items() if k not in RUN_ONLY_FIELDS}
    paths = [Path(p) for p in dataset.image_paths]
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # hashlib releases the GIL
        digests = list(pool.map(file_digest, paths))
    fp = {"version": VERSION, "config": config, "poses": _cameras_digest(dataset),
          "images": dict(zip(dataset.names, digests))}
    if cfg.tiles > 1:
        from nerflib.tiled.pipeline import layout_points

        points = np.ascontiguousarray(layout_points(dataset)[0], np.float64)
        fp["tile_points"] = hashlib.sha256(f"{points.shape};".encode() + points.tobytes()).hexdigest()
    return fp


def digest(fp: dict) -> str:
    """A short name of a fingerprint (for logs and the report)."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]


def read(model_dir: str | os.PathLike) -> dict | None:
    """The stored fingerprint of a model folder; None if there is none (or it is unreadable)."""
    try:
        fp = json.loads((Path(model_dir) / FILE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return fp if isinstance(fp, dict) and fp.get("version") == VERSION else None


def write(model_dir: str | os.PathLike, fp: dict) -> None:
    fileio.write_json(Path(model_dir) / FILE_NAME, fp)


def _named(names) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_MAX_NAMED])
    return shown + (f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else "")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(old: dict | None, new: dict) -> list[str]:
    """Why checkpoints trained from `old` are not a run of `new`, in words ([] = the same run)."""
    if old is None:
        return ["no record of what the existing checkpoints were trained from (no readable fingerprint.json)"]
    reasons = []
    before, after = old.get("images", {}), new["images"]
    added, removed = set(after) - set(before), set(before) - set(after)
    changed = {n for n in set(after) & set(before) if after[n] != before[n]}
    for what, names in (("added", added), ("removed", removed), ("changed", changed)):
        if names:
            reasons.append(f"{len(names)} training image(s) {what}: {_named(names)}")
    if old.get("poses") != new["poses"] and not (added or removed):
        reasons.append("the camera poses or intrinsics changed")
    if old.get("tile_points") != new.get("tile_points"):
        reasons.append("the points the tiles are split at changed (SfM points or camera centres)")
    a, b = _flat(old.get("config", {})), _flat(new["config"])
    settings = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if settings:
        shown = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in settings[:_MAX_NAMED]]
        more = f" and {len(settings) - _MAX_NAMED} more" if len(settings) > _MAX_NAMED else ""
        reasons.append(f"training settings changed: {', '.join(shown)}{more}")
    return reasons
