"""Helpers shared by the test modules (no test module imports another; they import these).

  training   toy_config, subprocess_env, compile_cache, check_batch: the toy field's settings and
             the environment of a training subprocess (fast compiles, one shared compilation cache)
  processes  several local processes training together (jax.distributed on CPU): free_port,
             run_together, and flat / load_npz / train_tsv for comparing their results
  toymodel   the `toy_model` session fixture: a trained toy model for tests that need one
  workflow   Snakemake on the repository's workflow in a temporary folder: sheet and config edits,
             dry runs, the demo run in the background (DemoRun), the reduced demo config
  killharness  the runs, kills and comparisons of test_kill_resume
  images, surfaces, tbtools, browser   test images, the demo's surfaces, TensorBoard events, a headless browser
  tiled      the tiled model's toy scenes and subprocess checks (tests/test_tiled*.py)
"""
