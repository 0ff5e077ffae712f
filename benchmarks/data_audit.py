"""Benchmark: `cxrlab audit` and `cxrlab analyze` on the real Kaggle data, plus the
near-duplicate detector's recall and false-positive rate.

    uv run python benchmarks/data_audit.py [DATA] [--out runs/bench-data]

Prints the findings and the time taken. Skips (exit 0, with a message) when the data is absent.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cxrlab.data.audit_records import AuditReport
from cxrlab.progress import progress_bars

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "chest-xray-covid19-pneumonia"
)


def timed_cli(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cxrlab", *args, "--no-progress"], check=True)
    return time.perf_counter() - started


def dhash_bits(thumb64: np.ndarray) -> np.uint64:
    small = np.asarray(
        Image.fromarray(thumb64).resize((9, 8), Image.Resampling.BOX), dtype=np.int16
    )
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return np.uint64(int("".join("1" if b else "0" for b in bits), 2))


def detector_check(data: Path, seed: int = 0, n_copies: int = 200) -> dict[str, float]:
    """Recall on re-encoded/resized/squashed copies of real images, and false positives."""
    from cxrlab.data.discover import discover
    from cxrlab.data.duplicates import DEFAULT_THRESHOLD, near_pairs
    from cxrlab.data.scan import ImageRecord, pixel_hash, scan_dataset, thumbnail

    index = discover(data)
    records = scan_dataset(index)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(records), n_copies, replace=False)
    copies = []
    for k, i in enumerate(chosen):
        pixels = np.asarray(Image.open(index.samples[i].path).convert("L"))
        height, width = pixels.shape
        if k % 3 == 2:  # squashed to 224 x 224, as in this dataset's history
            size = (224, 224)
        else:
            scale = rng.uniform(0.4, 0.9)
            size = (max(int(width * scale), 32), max(int(height * scale), 32))
        buffer = io.BytesIO()
        Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS).save(
            buffer, format="JPEG", quality=int(rng.integers(50, 85))
        )
        copy = np.asarray(Image.open(buffer).convert("L"))
        copies.append(
            ImageRecord(
                path=f"copy-of-{i}",
                split="copy",
                label=-1,
                file_size=0,
                width=copy.shape[1],
                height=copy.shape[0],
                pixel_hash=pixel_hash(copy),
                thumbs={s: thumbnail(copy, s) for s in (16, 64)},
            )  # fmt: skip
        )
    everything = records + copies
    pairs = near_pairs(everything, DEFAULT_THRESHOLD)
    n = len(records)
    source_of = {n + k: int(i) for k, i in enumerate(chosen)}
    found, false = set(), 0
    for pair in pairs:
        a, b = sorted((pair.first, pair.second))
        if b >= n and a < n:
            src = source_of[b]
            if a == src or records[a].pixel_hash == records[src].pixel_hash:
                found.add(b)
            elif not any(
                {p.first, p.second} == {a, src} for p in pairs
            ):  # a is not itself a known copy of the source
                false += 1
    train = [i for i, r in enumerate(records) if r.split == "train"]
    test = [i for i, r in enumerate(records) if r.split == "test"]
    cross_ncc = sum(
        1 for p in near_pairs(records, DEFAULT_THRESHOLD)
        if records[p.first].split != records[p.second].split
    )  # fmt: skip
    dh = np.array([dhash_bits(r.thumbs[64]) for r in records], dtype=np.uint64)
    dist = np.bitwise_count(dh[train][:, None] ^ dh[test][None, :])
    return {
        "copies": n_copies,
        "recall": len(found) / n_copies,
        "false_matches_of_copies": false,
        "false_positive_rate_per_pair": false / (n_copies * (n - 1)),
        "cross_split_pairs": len(train) * len(test),
        "cross_split_flagged_ncc": cross_ncc,
        "cross_split_flagged_dhash_le_5": int((dist <= 5).sum()),
        "cross_split_flagged_dhash_le_10": int((dist <= 10).sum()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-data"))
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"SKIP: real dataset not found at {args.data} (place ../shared/data beside the repo)")
        return 0
    audit_s = timed_cli("audit", str(args.data), "--out", str(args.out / "audit"))
    analyze_s = timed_cli("analyze", str(args.data), "--out", str(args.out / "analysis"))
    audit = AuditReport.load(args.out / "audit" / "audit.json")
    s, sc = audit.summary, audit.shortcut
    print("\n=== cxrlab data benchmark ===")
    print(f"data: {args.data}")
    print(f"audit:   {audit_s:6.1f} s   analyze: {analyze_s:6.1f} s   (goal: each < 120 s)")
    print(f"files {s.files}, unreadable {s.unreadable or 0}, excluded {s.status['excluded']}")
    print(f"exact duplicates: {s.exact_duplicate_groups} groups / {s.exact_duplicate_files} files")
    print(f"near duplicates:  {s.near_duplicate_groups} groups / {s.near_duplicate_files} files")
    print(f"leakage across splits: {s.leakage_groups} groups / {s.leakage_files} files")
    print(f"label conflicts: {s.label_conflict_groups} groups")
    print(
        f"shortcut check ({sc.level}): CV accuracy {sc.cv_accuracy:.3f} vs majority "
        f"{sc.majority_rate:.3f}; balanced {sc.cv_balanced_accuracy:.3f} vs chance "
        f"{sc.chance_balanced:.3f}; train->test accuracy {sc.test_accuracy:.3f}"
    )
    for line in sc.explanation:
        print(f"  - {line}")
    started = time.perf_counter()
    check = detector_check(args.data)
    print(f"near-duplicate detector ({time.perf_counter() - started:.1f} s):")
    print(
        f"  recall on {check['copies']} re-encoded/resized/squashed copies of real images: "
        f"{check['recall']:.3f}"
    )
    print(
        f"  false matches of those copies to other images: {check['false_matches_of_copies']} "
        f"(rate per pair {check['false_positive_rate_per_pair']:.2e})"
    )
    print(
        f"  train x test pairs flagged ({check['cross_split_pairs']:,} pairs): 64x64 NCC >= 0.98: "
        f"{check['cross_split_flagged_ncc']}; "
        f"8x8 dHash <= 5 bits: {check['cross_split_flagged_dhash_le_5']:,}; "
        f"<= 10 bits: {check['cross_split_flagged_dhash_le_10']:,}"
    )
    return 0


if __name__ == "__main__":
    with progress_bars(False):  # the log keeps the numbers only
        sys.exit(main())
