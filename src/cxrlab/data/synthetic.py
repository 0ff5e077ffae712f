"""A procedural toy dataset of chest-X-ray-like films, so that everything runs with no download.

Three classes, told apart by the *pattern* of disease and never by the file format:

* ``NORMAL``: thorax silhouette on a dark background, two dark lung fields, a bright
  spine/mediastinum band, the heart shadow (always on the image right, i.e. the
  patient's left on a PA film), clavicles, curved ribs, hila, a gastric bubble under the
  left hemidiaphragm; random small rotation/shift/scale, lung size, brightness and
  contrast, mild noise and blur.
* ``PNEUMONIA``: as ``NORMAL`` plus one or two focal, dense, patchy consolidations,
  usually in one lung and usually in the lower or middle zone.
* ``COVID19``: as ``NORMAL`` plus bilateral, peripheral, lower-zone, hazy ground-glass
  opacities (diffuse and of low contrast, in both lungs).

No format shortcut: width and height are drawn each in ``[0.9, 1.1] * size`` independently
of the class, and the mean and standard deviation of every film are set back to those of
the same film without disease before a class-independent brightness/contrast change.

:func:`make_demo_dataset` writes the films in the Kaggle layout
(``OUT/Data/{train,test}/<CLASS>/<CLASS>(i).jpg``) and, with ``defects=True``, a handful
of deliberate problems for the data audit to find (see :data:`DEFECT_FILES`).
Generation is fully deterministic for a given seed: each film has its own seed derived
from ``(seed, split, class, index within split)``.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from cxrlab.errors import CxrlabError

DEMO_CLASSES: tuple[str, ...] = ("COVID19", "NORMAL", "PNEUMONIA")

MARKER_NAME = ".cxrlab-demo"
GENERATOR_VERSION = 1
JPEG_QUALITY = 90
MIN_SIZE = 32
MAX_SIZE = 2048

# The deliberate problems written with ``defects=True`` (paths relative to OUT/Data).
DEFECT_FILES: dict[str, str] = {
    "train/NORMAL/empty.jpg": "zero-byte file",
    "train/NORMAL/truncated.jpg": "first 40% of the bytes of a valid JPEG",
    "train/PNEUMONIA/notes.txt": "a text file, not an image",
    "train/NORMAL/NORMAL(copy).png": "PNG pixel-identical to train/NORMAL/NORMAL(1).jpg",
    "train/PNEUMONIA/PNEUMONIA(leak).jpg": (
        "first PNEUMONIA test image at 80% size, JPEG quality 70 (train/test leak)"
    ),
    "train/COVID19/COVID19(tiny).jpg": "a valid 20x20 image (too small)",
}

_SPLIT_CODES = {"train": 0, "test": 1, "defects": 2}
_HEART_SIDE = 1.0  # the heart lies on the image right (patient's left on a PA film)


# --------------------------------------------------------------------------- helpers


def _soft(x: np.ndarray, edge: float) -> np.ndarray:
    """A smooth step from 0 to 1 around ``x = 0`` with width about ``edge``."""
    return 0.5 + 0.5 * np.tanh(x / edge)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise (zero mean, unit scale): a random grid upsampled bicubically."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    image = Image.fromarray(grid)  # mode "F"
    return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CxrlabError(f"{name} must be an integer (got {value!r})")
    value = int(value)
    if value < minimum:
        raise CxrlabError(f"{name} must be at least {minimum} (got {value})")
    if maximum is not None and value > maximum:
        raise CxrlabError(f"{name} must be at most {maximum} (got {value})")
    return value


# --------------------------------------------------------------------------- one film


def synth_cxr(rng: np.random.Generator, class_name: str, size: int = 128) -> np.ndarray:
    """One synthetic film: uint8 array (H, W), H and W near `size` (independent of class).

    Height and width are each drawn uniformly in ``[0.9, 1.1] * size`` before anything
    that depends on ``class_name``, so the format carries no information about the class.
    """
    if not isinstance(rng, np.random.Generator):
        raise CxrlabError(f"rng must be a numpy.random.Generator (got {type(rng).__name__})")
    if class_name not in DEMO_CLASSES:
        raise CxrlabError(
            f"class_name must be one of {', '.join(DEMO_CLASSES)} (got {class_name!r})"
        )
    size = _check_int("size", size, MIN_SIZE, MAX_SIZE)

    # Everything up to the disease is drawn identically for every class.
    height = int(round(size * rng.uniform(0.9, 1.1)))
    width = int(round(size * rng.uniform(0.9, 1.1)))
    px = 2.0 / min(height, width)  # one pixel in normalised units

    # Normalised coordinates (x right, y down, both in about [-1, 1]) after a random
    # similarity transform: small rotation, shift and zoom of the patient in the film.
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xn = (xs + 0.5) / width * 2.0 - 1.0
    yn = (ys + 0.5) / height * 2.0 - 1.0
    angle = np.deg2rad(rng.uniform(-4.0, 4.0))
    zoom = rng.uniform(0.93, 1.06)
    xn = xn - rng.uniform(-0.04, 0.04)
    yn = yn - rng.uniform(-0.04, 0.04)
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    u = ((cos_a * xn + sin_a * yn) / zoom).astype(np.float32)
    v = ((-sin_a * xn + cos_a * yn) / zoom).astype(np.float32)
    au = np.abs(u)
    side = np.where(u >= 0, 1.0, -1.0).astype(np.float32)
    edge = 1.5 * px

    # Body: a torso with rounded shoulders, the neck at the top, arms at the sides.
    body_w = rng.uniform(0.86, 0.96)
    shoulder_y = rng.uniform(-0.78, -0.66)
    t_sh = np.clip((v - shoulder_y) / (-1.1 - shoulder_y), 0.0, 1.0)
    half_width = 0.24 + (body_w - 0.24) * np.sqrt(np.clip(1.0 - t_sh**2, 0.0, 1.0))
    body = _soft(half_width - au, 2.5 * px)
    arm_gap = rng.uniform(0.02, 0.05)
    arms = _soft(au - (body_w + arm_gap), 2.5 * px) * _soft(v - (shoulder_y + 0.12), 0.08)
    thickness = np.clip(1.0 - (au / (body_w + 0.02)) ** 2, 0.0, 1.0)
    tissue = 0.36 + 0.16 * np.sqrt(thickness)  # thicker (brighter) centrally

    # Lungs: rounded apex, convex lateral wall, domed diaphragm with a deep lateral angle.
    lung_scale = rng.uniform(0.9, 1.08)
    medial = 0.13 + rng.uniform(-0.015, 0.015)
    apex = shoulder_y + rng.uniform(-0.04, 0.06)
    base = apex + lung_scale * rng.uniform(1.22, 1.34)
    lateral_max = min(medial + lung_scale * rng.uniform(0.6, 0.68), body_w - 0.08)
    depth = np.clip((v - apex) / (base - apex), 0.0, 1.0)  # 0 apex .. 1 base
    wall = np.sqrt(np.clip(2.2 * depth - 1.2 * depth**2, 0.0, 1.0))
    lateral = medial + 0.02 + (lateral_max - medial - 0.02) * wall
    medial_wall = medial + 0.06 * (1.0 - np.clip(depth / 0.25, 0.0, 1.0)) ** 2
    frac = np.clip((au - medial) / (lateral_max - medial), 0.0, 1.2)  # 0 medial .. 1 lateral
    dome = rng.uniform(0.14, 0.22)
    diaphragm = (
        base
        - dome * np.exp(-(((frac - 0.4) / 0.45) ** 2))
        + np.where(side < 0, -0.05, 0.0)  # the right hemidiaphragm sits higher
    )
    lungs = (
        _soft(au - medial_wall, edge)
        * _soft(lateral - au, edge)
        * _soft(diaphragm - v, edge)
        * _soft(v - apex, 2 * edge)
    )

    # Heart: attached to the mediastinum, sitting on the diaphragm, bulging to the image right.
    heart_cx = _HEART_SIDE * rng.uniform(0.05, 0.09)
    heart_rx_out = rng.uniform(0.3, 0.37)  # towards the patient's left (image right)
    heart_rx_in = rng.uniform(0.19, 0.23)
    heart_ry = rng.uniform(0.26, 0.32)
    heart_cy = base - dome - rng.uniform(0.0, 0.08)
    heart_rx = np.where((u - heart_cx) * _HEART_SIDE > 0, heart_rx_out, heart_rx_in)
    heart_r = np.sqrt(((u - heart_cx) / heart_rx) ** 2 + ((v - heart_cy) / heart_ry) ** 2)
    heart = _soft(1.0 - heart_r, 0.05)
    lungs = lungs * (1.0 - heart)

    # Hila, and vascular markings: faint streaks radiating from each hilum, fading laterally.
    hilum_y = apex + 0.5 * (base - apex)
    hilum = np.exp(-(((au - medial - 0.06) / 0.08) ** 2 + ((v - hilum_y) / 0.16) ** 2))
    ray_angle = np.arctan2(v - hilum_y, au - medial)
    bins = 40
    streak_values = rng.uniform(0.0, 1.0, 2 * bins + 2) ** 3
    ray_pos = (ray_angle + np.pi) / (2 * np.pi) * bins + np.where(side < 0, 0.0, bins + 1.0)
    streaks = np.interp(ray_pos, np.arange(streak_values.size), streak_values)
    vessels = np.exp(-2.0 * frac) * (0.35 + 0.65 * streaks.astype(np.float32))

    # Ribs: posterior ribs leave the spine, rise a little, then arch down laterally.
    rib_period = (base - apex) / rng.uniform(8.5, 10.0)
    x_rib = au - 0.1
    rib_phase = (v + 0.3 * x_rib - 1.1 * x_rib**2) / rib_period + rng.uniform(0.0, 1.0)
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * rib_phase)) ** 2
    ribs = (
        ribs
        * _soft(au - 0.1, 0.03)
        * _soft(half_width - 0.04 - au, 0.03)
        * _soft(diaphragm + 0.06 - v, 0.06)
        * _soft(v - (apex - 0.08), 0.05)
    )

    # Clavicles: bright arcs from the sternal notch out to the shoulders.
    clav_y0 = apex + rng.uniform(0.08, 0.14)
    x_cl = au - 0.06
    clav_line = clav_y0 - 0.3 * x_cl + 0.22 * x_cl**2
    clavicles = np.exp(-(((v - clav_line) / 0.04) ** 2)) * _soft(au - 0.05, 0.02)
    clavicles = clavicles * _soft(0.78 - au, 0.05)

    # Spine and mediastinum: a vertical bright band at the midline, with vertebrae.
    spine_w = rng.uniform(0.06, 0.08)
    vertebrae = 0.8 + 0.2 * np.cos(np.pi * v / (0.8 * rib_period)) ** 2
    spine = np.exp(-((u / spine_w) ** 4)) * vertebrae
    mediastinum = _soft(medial + 0.03 - au, 0.04) * _soft(v - (apex - 0.15), 0.06)

    # Gastric bubble under the left hemidiaphragm (image right), often visible.
    bubble = np.exp(
        -(((u - 0.38 * _HEART_SIDE) / 0.11) ** 2 + ((v - (base + 0.08)) / 0.06) ** 2)
    ) * rng.uniform(0.0, 0.15)

    lung_dark = rng.uniform(0.3, 0.36) * (1.0 - 0.2 * depth)  # bases slightly denser
    film = (
        0.04
        + 0.03 * (1.0 - yn) * 0.5  # a faint background gradient
        + 0.35 * arms * (1.0 - 0.3 * np.abs(yn))
        + body
        * (
            tissue
            + 0.08 * mediastinum
            + 0.14 * spine * (1.0 - 0.6 * lungs)
            - lung_dark * lungs
            + lungs * (0.07 * hilum + 0.08 * vessels)
            + 0.05 * heart
            + 0.05 * ribs * (0.3 + 0.7 * lungs)
            + 0.16 * clavicles
            - bubble
        )
    ).astype(np.float32)
    film += 0.02 * _smooth_noise(rng, height, width, 6)
    base_mean, base_std = float(film.mean()), float(film.std())

    # The window, blur and noise are drawn before the disease too, so that one generator
    # state gives the same film with or without disease.
    contrast = rng.uniform(0.85, 1.15)
    brightness = rng.uniform(-0.06, 0.06)
    blur = rng.uniform(0.5, 0.9) * size / 128.0
    quantum = rng.normal(0.0, rng.uniform(0.01, 0.025), film.shape).astype(np.float32)

    if class_name == "PNEUMONIA":
        film += _consolidation(rng, u, v, lungs, apex, base, medial, lateral_max)
    elif class_name == "COVID19":
        film += _ground_glass(rng, u, frac, lungs, depth)

    # Take the disease's change of mean and contrast back out, then window the film
    # with the class-independent brightness and contrast; mild blur and quantum noise.
    film = (film - film.mean()) / max(float(film.std()), 1e-6) * base_std + base_mean
    film = (film - base_mean) * contrast + base_mean + brightness
    film = gaussian_filter(film, sigma=blur) + quantum
    return np.clip(np.rint(film * 255.0), 0, 255).astype(np.uint8)


def _consolidation(
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    lungs: np.ndarray,
    apex: float,
    base: float,
    medial: float,
    lateral_max: float,
) -> np.ndarray:
    """One or two focal, dense, patchy (lobar) consolidations, usually in one lung."""
    height, width = u.shape
    lung_side = rng.choice([-1.0, 1.0])
    count = 1 if rng.random() < 0.5 else 2
    opacity = np.zeros_like(u)
    for k in range(count):
        if k == 1 and rng.random() < 0.2:
            lung_side = -lung_side  # occasionally the other lung as well
        zone = rng.random()
        if zone < 0.75:  # lower zone
            cy = apex + (base - apex) * rng.uniform(0.58, 0.76)
        elif zone < 0.95:  # middle zone
            cy = apex + (base - apex) * rng.uniform(0.4, 0.6)
        else:  # upper zone
            cy = apex + (base - apex) * rng.uniform(0.2, 0.4)
        # Away from the heart shadow, which would hide a medial consolidation.
        low = 0.45 if lung_side == _HEART_SIDE else 0.32
        cx = lung_side * (medial + (lateral_max - medial) * rng.uniform(low, low + 0.25))
        rx = rng.uniform(0.21, 0.3)
        ry = rx * rng.uniform(0.7, 1.2)
        r2 = ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2
        outline = np.exp(-0.5 * r2) + 0.25 * np.clip(
            _smooth_noise(rng, height, width, 12), -1.0, 1.0
        )
        patch = _soft(outline - 0.6, 0.1)
        patchy = 0.75 + 0.25 * np.clip(_smooth_noise(rng, height, width, 22), -1.0, 1.0)
        opacity = np.maximum(opacity, patch * patchy * rng.uniform(0.3, 0.38))
    return (opacity * np.clip(lungs * 1.15, 0.0, 1.0)).astype(np.float32)


def _ground_glass(
    rng: np.random.Generator,
    u: np.ndarray,
    frac: np.ndarray,
    lungs: np.ndarray,
    depth: np.ndarray,
) -> np.ndarray:
    """Bilateral, peripheral, lower-zone hazy ground-glass opacities of low contrast."""
    height, width = u.shape
    periphery = _soft(frac - rng.uniform(0.4, 0.55), 0.12)
    lower = _soft(depth - rng.uniform(0.35, 0.5), 0.12)
    # Unequal but always bilateral involvement.
    left, right = rng.uniform(0.65, 1.0), rng.uniform(0.65, 1.0)
    sides = np.where(u < 0, left, right)
    haze = 0.65 + 0.35 * np.clip(_smooth_noise(rng, height, width, 10), -1.0, 1.0)
    strength = rng.uniform(0.24, 0.3)
    return (strength * sides * periphery * lower * haze * lungs).astype(np.float32)


# --------------------------------------------------------------------------- the dataset


def _film_rng(seed: int, split: str, class_name: str, index: int) -> np.random.Generator:
    entropy = [seed, _SPLIT_CODES[split], DEMO_CLASSES.index(class_name), index]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _jpeg_bytes(pixels: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("L").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _write_defects(data: Path, *, seed: int, size: int, train_per_class: int) -> None:
    """Write the files listed in :data:`DEFECT_FILES`."""
    (data / "train/NORMAL/empty.jpg").write_bytes(b"")

    valid = _jpeg_bytes(synth_cxr(_film_rng(seed, "defects", "NORMAL", 0), "NORMAL", size))
    (data / "train/NORMAL/truncated.jpg").write_bytes(valid[: int(len(valid) * 0.4)])

    (data / "train/PNEUMONIA/notes.txt").write_text(
        "Reading notes for the PNEUMONIA folder.\n"
        "This is not an image: a data audit should report it and training should skip it.\n",
        encoding="utf-8",
    )

    with Image.open(data / "train/NORMAL/NORMAL(1).jpg") as image:
        pixels = np.asarray(image.convert("L"), dtype=np.uint8)
    Image.fromarray(pixels).save(data / "train/NORMAL/NORMAL(copy).png", format="PNG")

    first_test = data / f"test/PNEUMONIA/PNEUMONIA({train_per_class}).jpg"
    with Image.open(first_test) as image:
        image = image.convert("L")
        small = image.resize(
            (round(image.width * 0.8), round(image.height * 0.8)), Image.Resampling.LANCZOS
        )
    small.save(data / "train/PNEUMONIA/PNEUMONIA(leak).jpg", format="JPEG", quality=70)

    film = synth_cxr(_film_rng(seed, "defects", "COVID19", 0), "COVID19", size)
    tiny = Image.fromarray(film).resize((20, 20), Image.Resampling.LANCZOS)
    tiny.save(data / "train/COVID19/COVID19(tiny).jpg", format="JPEG", quality=JPEG_QUALITY)


def make_demo_dataset(
    out: str | Path,
    *,
    train_per_class: int = 40,
    test_per_class: int = 15,
    size: int = 128,
    seed: int = 0,
    defects: bool = True,
) -> Path:
    """Write OUT/Data/train/<CLASS>/<CLASS>(i).jpg and OUT/Data/test/<CLASS>/<CLASS>(i).jpg.

    Returns OUT.

    Files are numbered per class as in the Kaggle set: train ``0..n-1``, test ``n..``.
    A marker ``OUT/.cxrlab-demo`` records the parameters: a second call with the same
    parameters returns at once; with other parameters only ``OUT/Data`` is replaced.
    A ``Data/`` folder that this function did not make is never touched.
    """
    train_per_class = _check_int("train_per_class", train_per_class, 2)
    test_per_class = _check_int("test_per_class", test_per_class, 1)
    size = _check_int("size", size, MIN_SIZE, MAX_SIZE)
    seed = _check_int("seed", seed, 0)
    if not isinstance(defects, (bool, np.bool_)):
        raise CxrlabError(f"defects must be True or False (got {defects!r})")
    defects = bool(defects)

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CxrlabError(f"{out}: exists and is not a folder; choose another output folder")
    data, marker = out / "Data", out / MARKER_NAME
    params = {
        "generator": GENERATOR_VERSION,
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "size": size,
        "seed": seed,
        "defects": defects,
    }
    finished = dict(params, complete=True)

    if marker.is_file():
        try:
            previous = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if previous == finished and data.is_dir():
            return out
        if data.is_symlink() or data.is_file():
            data.unlink()
        elif data.exists():
            shutil.rmtree(data)
    elif data.exists() or data.is_symlink():
        raise CxrlabError(
            f"{data}: already exists and was not made by the demo generator; "
            "choose another output folder (existing files are never overwritten)"
        )

    out.mkdir(parents=True, exist_ok=True)
    # Written first, so that an interrupted run is recognised (and redone) next time.
    marker.write_text(json.dumps(dict(params, complete=False), sort_keys=True), encoding="utf-8")
    for split, count, start in (
        ("train", train_per_class, 0),
        ("test", test_per_class, train_per_class),
    ):
        for class_name in DEMO_CLASSES:
            folder = data / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                film = synth_cxr(_film_rng(seed, split, class_name, index), class_name, size)
                (folder / f"{class_name}({start + index}).jpg").write_bytes(_jpeg_bytes(film))
    if defects:
        _write_defects(data, seed=seed, size=size, train_per_class=train_per_class)
    marker.write_text(json.dumps(finished, sort_keys=True) + "\n", encoding="utf-8")
    return out
