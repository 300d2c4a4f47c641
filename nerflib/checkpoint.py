"""Checkpoints (orbax) and the resolved config beside them.

Layout under a model folder (docs/architecture.md):
  model/config.json          the resolved `configs.Config` (atomic write, process 0)
  model/checkpoints/<step>/  orbax checkpoints of the whole TrainState (params,
                             optimizer state, step, LR multiplier), the last
                             `keep` of them.

Arrays are stored as global arrays, so a checkpoint written on D devices (or
P processes) restores on any other count: `restore` builds its targets with
the *current* mesh's replicated sharding. All processes of a multi-process
run must call `save`/`restore` together (orbax synchronises them); only
process 0 writes config.json. Saves are asynchronous (the device-to-host copy
happens inside `save`, the file writes in the background); `wait()` blocks
until they are on disk, and `close()` waits too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nerflib import configs

CONFIG_NAME = "config.json"
CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints.corrupt"  # checkpoints that failed to restore, moved out of the way


def save_config(model_dir: str | os.PathLike, cfg: configs.Config) -> None:
    """model_dir/config.json, atomically, from process 0 only."""
    if jax.process_index() == 0:
        configs.save_json(cfg, Path(model_dir) / CONFIG_NAME)


def load_config(model_dir: str | os.PathLike) -> configs.Config:
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist: {model_dir} is not a trained model folder; point at the model/ folder "
            "that training wrote (results/{scene}/model), or train first"
        )
    return configs.load_json(path)


class Checkpointer:
    """Save every N steps (the caller decides when), keep the last K, restore onto a mesh."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any) -> bool:
        """Save `state` as checkpoint `step` (skipped if that step exists); True if saved."""
        step = int(step)
        if step in self._manager.all_steps():
            return False
        return bool(self._manager.save(step, args=ocp.args.StandardSave(state), force=True))

    def delete(self, step: int) -> None:
        self._manager.delete(int(step))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def restore(self, mesh: Mesh, *, template: Any = None, step: int | None = None, shardings: Any = None) -> Any:
        """Checkpoint `step` (default: the latest) replicated over `mesh`, or with `shardings`.

        template: a pytree with the saved structure (e.g. a freshly initialised
        TrainState, or its `jax.eval_shape`); None restores the saved tree as
        nested dicts (enough to get the parameters without rebuilding the optimizer).
        shardings: a pytree of shardings like `template` (e.g. a tiled model's P('tile'): each
        device reads only its shards); None = replicated over `mesh`.
        """
        self.wait()
        if step is None:
            step = self.latest_step()
        if step is None:
            raise ValueError(f"no checkpoint in {self.directory}")
        sharding = NamedSharding(mesh, P())
        if template is None:
            meta = self._manager.item_metadata(step)
            template = getattr(meta, "tree", meta)
        if shardings is None:
            shardings = jax.tree_util.tree_map(lambda _: sharding, template)
        abstract = jax.tree_util.tree_map(
            lambda x, s: jax.ShapeDtypeStruct(np.shape(x), _dtype(x), sharding=s), template, shardings
        )
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def restore_latest_good(self, mesh: Mesh, *, template: Any = None, log=print, move_aside: bool = False,
                            shardings: Any = None) -> tuple[Any, int | None]:
        """(state, step) of the newest checkpoint that restores; (None, None) if there is none.

        A checkpoint that fails to restore (an empty or damaged folder: a disk that filled up, a copy
        cut short) is skipped with a warning and the next older one is tried. With `move_aside`
        (the trainer, which owns the folder) it is moved to `checkpoints.corrupt/` beside this
        folder first, so that training continues from the good one and never saves over it.
        """
        for step in sorted(self.all_steps(), reverse=True):
            try:
                return self.restore(mesh, template=template, step=step, shardings=shardings), step
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for damaged data
                bad = self.directory.parent / CORRUPT_DIR / str(step)
                log(f"WARNING: checkpoint {self.directory / str(step)} cannot be restored ({type(e).__name__}: "
                    f"{str(e)[:200]}); " + (f"moved it to {bad}; " if move_aside else "")
                    + "falling back to the previous checkpoint")
                if move_aside:
                    if jax.process_index() == 0:
                        bad.parent.mkdir(parents=True, exist_ok=True)
                        shutil.rmtree(bad, ignore_errors=True)
                        os.replace(self.directory / str(step), bad)
                    self._manager.reload()
        return None, None

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _dtype(x):
    dtype = getattr(x, "dtype", None)
    return np.asarray(x).dtype if dtype is None else dtype


def checkpoint_dir(model_dir: str | os.PathLike) -> Path:
    return Path(model_dir) / CHECKPOINT_DIR


def has_checkpoints(directory: str | os.PathLike) -> bool:
    """True if `directory` (a checkpoints/ folder) holds any step folder."""
    directory = Path(directory)
    return directory.is_dir() and any(p.is_dir() and p.name.isdigit() for p in directory.iterdir())


def restore_params(model_dir: str | os.PathLike, mesh: Mesh, *, step: int | None = None):
    """(config, params, step) of a trained model folder, params replicated over `mesh`."""
    cfg = load_config(model_dir)
    if not checkpoint_dir(model_dir).is_dir():
        raise ValueError(f"{checkpoint_dir(model_dir)} does not exist; train the model first")
    with Checkpointer(checkpoint_dir(model_dir), keep=1 << 30) as ckpt:  # keep all: reading never deletes
        if step is None:
            tree, step = ckpt.restore_latest_good(mesh)
            if step is None:
                raise ValueError(f"{checkpoint_dir(model_dir)} holds no checkpoint that can be restored; "
                                 "train the model first")
        else:
            available = ckpt.all_steps()
            if step not in available:
                raise ValueError(
                    f"{checkpoint_dir(model_dir)} holds no checkpoint of step {step}; available steps: "
                    f"{', '.join(map(str, available))}; pick one of them, or leave step unset for the latest"
                )
            tree = ckpt.restore(mesh, step=step)
    params = tree["params"] if isinstance(tree, dict) else tree.params
    return cfg, params, int(step)
