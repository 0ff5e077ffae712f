from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cxrlab.data.cache import CacheSpec, build_cache, resize_square
from cxrlab.data.datasets import CachedImageDataset, rows_for
from cxrlab.data.discover import discover
from cxrlab.errors import CxrlabError
from conftest import save, smooth_image


def build(root: Path, cache_root: Path, size: int = 32, resize: str = "squash"):
    return build_cache(discover(root), CacheSpec(size, resize), cache_root=cache_root, workers=1, progress=False)


def test_build_then_reuse(kaggle_tree: Path, tmp_path: Path) -> None:
    first = build(kaggle_tree, tmp_path / "c")
    assert first.rebuilt == 18 and first.images.shape == (18, 32, 32)
    assert isinstance(first.images, np.memmap) and not first.images.flags.writeable
    again = build(kaggle_tree, tmp_path / "c")
    assert again.rebuilt == 0 and np.array_equal(np.asarray(first.images), np.asarray(again.images))


def test_changed_file_is_redecoded_and_others_copied(kaggle_tree: Path, tmp_path: Path) -> None:
    first = build(kaggle_tree, tmp_path / "c")
    before = np.array(first.images)
    target = kaggle_tree / "Data/train/B/B(1).png"
    save(target, 255 - smooth_image(99))
    os.utime(target, ns=(1, 1))  # a different mtime even on coarse clocks
    again = build(kaggle_tree, tmp_path / "c")
    row = again.paths.index("Data/train/B/B(1).png")
    assert again.rebuilt == 1
    assert not np.array_equal(again.images[row], before[row])
    others = [i for i in range(len(before)) if i != row]
    assert np.array_equal(np.asarray(again.images)[others], before[others])


def test_new_file_and_new_size_invalidate(kaggle_tree: Path, tmp_path: Path) -> None:
    first = build(kaggle_tree, tmp_path / "c")
    save(kaggle_tree / "Data/test/C/C(9).png", smooth_image(77))
    assert build(kaggle_tree, tmp_path / "c").rebuilt == 1
    bigger = build(kaggle_tree, tmp_path / "c", size=48)
    assert bigger.folder != first.folder and bigger.rebuilt == 19


def test_unreadable_files_are_flagged_not_fatal(kaggle_tree: Path, tmp_path: Path) -> None:
    (kaggle_tree / "Data/train/A/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0junk")
    cache = build(kaggle_tree, tmp_path / "c")
    assert "Data/train/A/broken.jpg" in cache.errors
    assert len(cache.rows("train")) == 12
    rows = rows_for(cache, [("Data/train/A/broken.jpg", "A"), ("Data/train/A/A(0).png", "A")])
    dataset = CachedImageDataset(cache, rows)
    image, label = dataset[0]
    assert len(dataset) == 1 and image.shape == (1, 32, 32) and label == 0
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_pad_keeps_aspect_ratio() -> None:
    wide = np.full((20, 80), 200, dtype=np.uint8)
    padded = resize_square(wide, CacheSpec(40, "pad"))
    assert padded.shape == (40, 40)
    assert padded[:10].max() == 0 and padded[20, :].min() == 200  # black bars above, image in the middle
    assert resize_square(wide, CacheSpec(40, "squash")).min() == 200


def test_bad_spec_names_the_option() -> None:
    with pytest.raises(CxrlabError, match="--resize"):
        CacheSpec(64, "crop")
    with pytest.raises(CxrlabError, match="--image-size"):
        CacheSpec(4)
