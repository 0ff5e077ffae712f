"""Benchmark: the shortcut probes and Grad-CAM's lung share measured with the learned lung
masks and with the heuristic's, on the same finished runs.

    uv run python benchmarks/lung_probes.py RUN [RUN ...] [--data DIR] [--out DIR]

For each run folder (``model.pt``, ``config.json``, ``split.csv``), and for each segmenter
(``heuristic``, then the learned one: ``$CXRLAB_LUNG_SEGMENTER`` is set for each), the three
files are copied to ``OUT/<run>/<segmenter>/`` and :func:`cxrlab.pipelines.diagnose.diagnose_run`
writes ``robustness.json`` and ``gradcam.json`` there, exactly as ``cxrlab train`` does after
training (every test film of the run's split for the probes, 100 films per class for Grad-CAM).
The decoded films are shared, the lung masks are not. ``OUT/probes.md``: per run and segmenter,
the share of test films whose lungs were found, the balanced accuracy with the lungs hidden and
with only the lungs kept (and chance), and Grad-CAM's lung share and enrichment.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from cxrlab.lungs import ENV, HEURISTIC, segmenter_label
from cxrlab.pipelines import diagnose
from cxrlab.progress import progress_bars

ROOT = Path(__file__).resolve().parents[1]
KAGGLE = ROOT.parent / "shared" / "data" / "chest-xray-covid19-pneumonia"
FILES = ("model.pt", "config.json", "split.csv")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, default=KAGGLE)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/lung-probes"))
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"skipped: {args.data} not found")
        return 0
    rows = [
        "| run | lung masks | found | lungs hidden: bal. acc. | lungs only: bal. acc. | chance "
        "| Grad-CAM lung share | enrichment |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in args.runs:
        for choice in (HEURISTIC, ""):
            os.environ[ENV] = choice
            label = segmenter_label()
            folder = args.out / run.name / ("heuristic" if choice else "learned")
            folder.mkdir(parents=True, exist_ok=True)
            for name in FILES:
                shutil.copy2(run / name, folder / name)
            for images in diagnose._DECODED.values():  # the films stay, the masks go
                for key in [k for k in images if k.startswith(("lungs-", "segmented-"))]:
                    del images[key]
            result = diagnose.diagnose_run(folder, args.data)
            robustness, gradcam = result.robustness, result.gradcam
            hidden = robustness.variants["lungs-hidden"].balanced_accuracy
            only = robustness.variants["lungs-only"].balanced_accuracy
            rows.append(
                f"| {run.name} | {label} | {robustness.lung_fields.segmented:.1%} | "
                f"{hidden:.3f} | {only:.3f} | {robustness.chance.balanced_accuracy:.3f} | "
                f"{gradcam.lung_share:.3f} | {gradcam.lung_enrichment:.2f} |"
            )
            print(rows[-1], flush=True)
    os.environ.pop(ENV, None)
    (args.out / "probes.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
    print(f"wrote {args.out / 'probes.md'}")
    return 0


if __name__ == "__main__":
    with progress_bars(False):  # the log keeps the numbers only
        raise SystemExit(main())
