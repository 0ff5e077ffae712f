from __future__ import annotations

import numpy as np

from cxrlab.data.scan import ImageRecord
from cxrlab.data.shortcuts import shortcut_check

CLASSES = ["COVID19", "NORMAL", "PNEUMONIA"]


def records(n: int, format_leaks: bool, seed: int = 0) -> list[ImageRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = int(rng.integers(0, 3))
        if format_leaks and label == 0:
            width, height = int(rng.integers(300, 400)), 256  # adult films: own aspect
        else:
            width = height = int(rng.integers(200, 260)) if not format_leaks else 224
        out.append(
            ImageRecord(
                path=f"{i}.jpg",
                split="train",
                label=label,
                file_size=int(rng.integers(8000, 12000)),
                width=width,
                height=height,
                mean=float(rng.normal(120, 10)),
                std=50.0,
                border_fraction=float(rng.uniform(0, 0.05)),
            )  # fmt: skip
        )
    return out


def test_format_shortcut_is_detected_and_explained() -> None:
    report = shortcut_check(records(300, True), CLASSES, records(100, True, seed=1))
    assert report is not None and report.level in {"moderate", "high"}
    assert report.per_class_recall["COVID19"] > 0.95
    assert report.single_feature["aspect"] > report.single_feature["mean_intensity"]
    assert any("224x224" in line for line in report.explanation)
    assert report.test_accuracy is not None and report.majority_rate < 0.45


def test_no_shortcut_when_format_is_independent_of_class() -> None:
    report = shortcut_check(records(300, False), CLASSES)
    assert report is not None and report.level == "low"
    assert abs(report.cv_balanced_accuracy - 1 / 3) < 0.12 and report.explanation == []


def test_too_few_images_skips_the_check() -> None:
    assert shortcut_check(records(3, True), CLASSES) is None
