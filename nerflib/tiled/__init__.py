"""A scene's field split in space over K tiles (NeRF-XL, issue #26).

  model   TileLayout, layout_from_points, TiledModel (per-tile fields, per-tile proposal rounds,
          segments composited exactly), untiled_reference (the same fields as one sequence, for tests)
  train   TiledState, make_optimizer, init_state, make_train_step: one step on a `data x tile`
          mesh (tiles' params and optimizer state sharded on 'tile', rays on 'data'), exchange_bytes,
          save_state / restore_state (orbax, sharded per tile)
"""

from nerflib.tiled.model import (
                                 TiledModel,
                                 TileLayout,
                                 before_of,
                                 layout_from_points,
                                 untiled_reference,
                                 whole_space_layout,
)
from nerflib.tiled.train import (
                                 TiledState,
                                 exchange_bytes,
                                 init_state,
                                 make_mesh,
                                 make_optimizer,
                                 make_train_step,
                                 restore_state,
                                 save_state,
                                 state_shardings,
)

__all__ = [
                                 "TileLayout",
                                 "TiledModel",
                                 "TiledState",
                                 "before_of",
                                 "exchange_bytes",
                                 "init_state",
                                 "layout_from_points",
                                 "make_mesh",
                                 "make_optimizer",
                                 "make_train_step",
                                 "restore_state",
                                 "save_state",
                                 "state_shardings",
                                 "untiled_reference",
                                 "whole_space_layout",
]
