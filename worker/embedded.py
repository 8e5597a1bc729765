"""Moved to ops/embedded.py (worker/ holds the job runners only); `python -m worker.embedded` still runs it, for the
deployments and habits that name the old path."""

import runpy

if __name__ == "__main__":
    runpy.run_module("ops.embedded", run_name="__main__", alter_sys=True)
