"""Whether two folders of runs hold the same results: the check behind "behaviour unchanged".

    uv run python benchmarks/same_results.py BEFORE AFTER

BEFORE and AFTER are folders with the same runs in them (say two ``cxrlab demo`` outputs, one
from each checkout, same seed). Every number of every ``metrics.json`` is compared (timings
left out: they are measured, not computed), within 1e-6; the predictions and the split are
compared byte for byte. Exits 1 when anything differs, naming it.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from pathlib import Path

TOLERANCE = 1e-6
SAME_BYTES = ("test_predictions.csv", "val_predictions.csv", "split.csv")


def leaves(value: object, at: str = "") -> Iterator[tuple[str, object]]:
    """``(path, value)`` of every number and string of a JSON document."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{at}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from leaves(item, f"{at}[{i}]")
    else:
        yield at, value


def is_timing(key: str) -> bool:
    return ".timings." in key or key.endswith(("_s", "img_per_s"))


def differences(before: Path, after: Path) -> tuple[list[str], int, float]:
    """What differs, how many values were compared, the largest difference of two numbers."""
    found: list[str] = []
    compared, largest = 0, 0.0
    names = sorted(p.relative_to(before) for p in before.rglob("metrics.json"))
    if names != sorted(p.relative_to(after) for p in after.rglob("metrics.json")):
        found.append("the two folders hold different metrics.json files")
    for name in names:
        old = dict(leaves(json.loads((before / name).read_text())))
        new = dict(leaves(json.loads((after / name).read_text())))
        if old.keys() != new.keys():
            found.append(f"{name}: keys differ: {sorted(set(old) ^ set(new))}")
        for key in sorted(old.keys() & new.keys()):
            if is_timing(key):
                continue
            compared += 1
            a, b = old[key], new[key]
            if isinstance(a, float) and isinstance(b, float):
                if math.isnan(a) and math.isnan(b):
                    continue
                largest = max(largest, abs(a - b))
                if not abs(a - b) <= TOLERANCE:
                    found.append(f"{name}{key}: {a!r} != {b!r}")
            elif a != b and not (isinstance(a, str) and str(before) in a):  # paths name the folder
                found.append(f"{name}{key}: {a!r} != {b!r}")
    for file_name in SAME_BYTES:
        for path in sorted(before.rglob(file_name)):
            other = after / path.relative_to(before)
            if not other.is_file() or other.read_bytes() != path.read_bytes():
                found.append(f"{path.relative_to(before)}: not byte-identical")
    return found, compared, largest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    found, compared, largest = differences(args.before, args.after)
    files = {name: len(list(args.before.rglob(name))) for name in ("metrics.json", *SAME_BYTES)}
    print(
        f"{compared} values of {files['metrics.json']} metrics.json compared (timings left out), "
        f"largest difference of two numbers {largest:g}; "
        + ", ".join(f"{files[name]} {name}" for name in SAME_BYTES)
        + " compared byte for byte"
    )
    for line in found:
        print("DIFFERS", line)
    print("same results" if not found else f"{len(found)} difference(s)")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
