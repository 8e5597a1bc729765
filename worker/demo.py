"""Moved to ops/demo.py (worker/ holds the job runners only); `python -m worker.demo` still runs it, for the
deployments and habits that name the old path."""

import runpy

if __name__ == "__main__":
    runpy.run_module("ops.demo", run_name="__main__", alter_sys=True)
