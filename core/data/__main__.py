"""Validate a dataset from the command line and print its report as JSON (exit status 1 if unusable).

    python -m core.data photos.zip --resolution 1024 --min-side 256 [--strict]
"""
from __future__ import annotations

import argparse
import json
import sys

from .report import DatasetError
from .validate import DEFAULT_MIN_SIDE, validate_dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.data", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a dataset folder or .zip")
    p.add_argument("--resolution", type=int, default=1024, help="training side: images train at ~resolution^2")
    p.add_argument("--min-side", type=int, default=None,
                   help=f"shorter images are rejected (default: min({DEFAULT_MIN_SIDE}, resolution))")
    p.add_argument("--strict", action="store_true", help="fail when any file is rejected")
    a = p.parse_args(argv)
    try:
        report = validate_dataset(a.source, resolution=a.resolution, min_side=a.min_side, strict=a.strict)
    except DatasetError as e:
        print(json.dumps(e.report.to_dict(), indent=1))
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        p.error(str(e))
    print(json.dumps(report.to_dict(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
