"""Moved to ops/health.py (worker/ holds the job runners only); `python -m worker.health` still runs it, for the
deployments and habits that name the old path."""

import runpy

if __name__ == "__main__":
    runpy.run_module("ops.health", run_name="__main__", alter_sys=True)
