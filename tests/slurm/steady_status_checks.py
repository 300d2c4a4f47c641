"""`python -m snakemake` for tests/test_slurm.py, with the SLURM executor's status checks at a steady interval.

    python tests/slurm/steady_status_checks.py SNAKEMAKE_ARGS...

snakemake-executor-plugin-slurm checks the state of its jobs
`slurm-init-seconds-before-status-checks` seconds (the test profile: 2 s) after a
check that found a job finished, and 10 s more after each check that found none
(2, 12, 22, ... s apart, up to 180 s). That suits a real cluster's queues; on the
test cluster, where the reduced demo's jobs take 5 to 60 s, it leaves a finished
job unnoticed for up to half its run time (a 40 s job is seen at 68 s), and the
SLURM tests mostly waited. The 10 s step is not a setting (plugin 2.8; its
settings have only the initial interval), so this wrapper brings the interval
back to the initial one after every check. Nothing else changes: submission,
the squeue query, job states and their handling are the plugin's own code, and
the profiles are used as they are. Should a plugin version lack the method, the
wrapper leaves the plugin alone (the tests are then slower, not different).
"""

from __future__ import annotations

import sys


def _steady_status_checks() -> None:
    try:
        from snakemake_executor_plugin_slurm import Executor
    except ImportError:
        return
    check = getattr(Executor, "check_active_jobs", None)
    if check is None:
        return

    async def check_active_jobs(self, active_jobs):
        async for job in check(self, active_jobs):
            yield job
        initial = getattr(self.workflow.executor_settings, "init_seconds_before_status_checks", None)
        if initial:
            self.next_seconds_between_status_checks = initial

    Executor.check_active_jobs = check_active_jobs


if __name__ == "__main__":
    _steady_status_checks()
    from snakemake.cli import main

    sys.argv[0] = "snakemake"
    sys.exit(main())
