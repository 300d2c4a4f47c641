"""Moved to the nerflib.localize subpackage (step, starts, truth). This name stays only until
tests/test_pose_checks.py imports `from nerflib.localize import truth` (or `localize.load_ground_truth`)."""

from nerflib.localize.truth import load_ground_truth  # noqa: F401
