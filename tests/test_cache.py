from __future__ import annotations

import itertools
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import save, smooth_image

from cxrlab.data.cache import CacheSpec, ImageCache, build_cache, load_square, resize_square
from cxrlab.data.datasets import CachedImageDataset, rows_for
from cxrlab.data.discover import discover
from cxrlab.errors import CxrlabError


def build(root: Path, cache_root: Path, size: int = 32, resize: str = "squash"):
    return build_cache(discover(root), CacheSpec(size, resize), cache_root=cache_root, workers=1)


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
    assert (
        padded[:10].max() == 0 and padded[20, :].min() == 200
    )  # black bars above, image in the middle
    assert resize_square(wide, CacheSpec(40, "squash")).min() == 200


def test_bad_spec_names_the_option() -> None:
    with pytest.raises(CxrlabError, match="^resize"):
        CacheSpec(64, "crop")
    with pytest.raises(CxrlabError, match="^image_size"):
        CacheSpec(4)


def assert_rows_match(cache: ImageCache, root: Path) -> None:
    """Every row of ``cache`` holds the pixels of its own file, as decoded now."""
    wrong = [
        p
        for p, image in zip(cache.paths, cache.images)
        if not np.array_equal(image, load_square(root / p, cache.spec))
    ]
    assert wrong == [], f"{len(wrong)} of {len(cache.paths)} rows hold another file's pixels"


KILLED = 137


def build_killed_at(step: int, root: Path, cache_root: Path) -> int | None:
    """Exit code of a build in a child process that dies like ``kill -9`` (``os._exit``, no cleanup)
    just before its ``step``-th file-system call inside ``cache_root`` (0 when it had fewer)."""

    def child() -> None:
        calls = 0

        def kill_at_step(event: str, args: tuple) -> None:
            nonlocal calls
            if any(str(arg).startswith(f"{cache_root}{os.sep}") for arg in args):
                calls += 1
                if calls == step:
                    os._exit(KILLED)

        sys.addaudithook(kill_at_step)  # sees every open, rename, remove, mkdir, listdir ...
        build(root, cache_root)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(60)
    return process.exitcode


def test_kill_at_any_moment_of_an_update_leaves_a_correct_cache(
    kaggle_tree: Path, tmp_path: Path
) -> None:
    cache_root, before = tmp_path / "cache", tmp_path / "before"
    build(kaggle_tree, cache_root)
    shutil.copytree(cache_root, before)
    save(
        kaggle_tree / "Data/test/A/A(00).png", smooth_image(50)
    )  # an added file shifts the rows after it
    for step in itertools.count(1):
        shutil.rmtree(cache_root)
        shutil.copytree(before, cache_root)
        code = build_killed_at(step, kaggle_tree, cache_root)
        assert code in (0, KILLED)
        cache = build(kaggle_tree, cache_root)
        assert_rows_match(cache, kaggle_tree)
        assert (
            len(list(cache.folder.glob("*images*"))) == 1
        )  # leftovers of the killed build are gone
        if code == 0:
            break
    assert step > 5  # the sweep did kill the update at every file-system call it makes


def test_inconsistent_cache_is_rebuilt_not_served(kaggle_tree: Path, tmp_path: Path) -> None:
    cache = build(kaggle_tree, tmp_path / "c")
    array = Path(cache.images.filename)
    del cache
    with array.open("r+b") as handle:
        handle.truncate(array.stat().st_size - 100)
    again = build(kaggle_tree, tmp_path / "c")
    assert again.rebuilt == 18
    assert_rows_match(again, kaggle_tree)


RACER = """
import sys, time
from pathlib import Path
import cxrlab.data.cache as cache
from cxrlab.data.discover import discover
from cxrlab.progress import progress_bars

decode = cache.load_square
cache.load_square = lambda *args: (time.sleep(0.02), decode(*args))[1]  # slow decodes: \
the builds overlap
index = discover(Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
with progress_bars(False):
    print(cache.build_cache(index, cache.CacheSpec(32), cache_root=Path(sys.argv[2]), workers=1)\
.rebuilt)
"""


def test_concurrent_builds_wait_for_each_other_and_reuse(kaggle_tree: Path, tmp_path: Path) -> None:
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(kaggle_tree), str(tmp_path / "c")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for racer in racers:
        assert racer.stdout.readline() == "ready\n", racer.communicate()
    for racer in racers:  # both start building at the same moment
        racer.stdin.write("go\n")
        racer.stdin.flush()
    outputs = [racer.communicate(timeout=60) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs
    assert sorted(int(out) for out, _ in outputs) == [0, 18]  # the second waited, then reused all
    assert_rows_match(build(kaggle_tree, tmp_path / "c"), kaggle_tree)
