"""Moved to tests/helpers/tbtools.py; this name stays until tests/test_train.py imports it from there."""
from helpers.tbtools import *  # noqa: F401,F403
from helpers.tbtools import tensorboard_steps  # noqa: F401
