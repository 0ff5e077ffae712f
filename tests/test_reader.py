from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import save, smooth_image
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from cxrlab.data.reader import DEFAULT_MAX_PIXELS, decode_image, read_grayscale, scale_to_uint8
from cxrlab.errors import ImageReadError


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    syntax: str = ExplicitVRLittleEndian,
    **extra: object,
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_jpeg_rgb_becomes_luma(tmp_path: Path) -> None:
    rgb = np.zeros((40, 50, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    path = save(tmp_path / "a.jpg", rgb, quality=100)
    decoded = decode_image(path)
    assert decoded.pixels.shape == (40, 50) and decoded.pixels.dtype == np.uint8
    assert decoded.file_format == "JPEG" and decoded.mode == "RGB"
    assert abs(int(decoded.pixels.mean()) - round(0.299 * 200)) <= 2


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_lossless_8bit_formats_round_trip(tmp_path: Path, suffix: str) -> None:
    pixels = smooth_image(1)
    assert np.array_equal(read_grayscale(save(tmp_path / f"x{suffix}", pixels)), pixels)


def test_png_16bit_is_scaled_min_to_max(tmp_path: Path) -> None:
    values = np.linspace(1000, 4000, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = read_grayscale(path)
    assert pixels.min() == 0 and pixels.max() == 255
    assert np.array_equal(pixels, scale_to_uint8(values))


def test_tiff_16bit(tmp_path: Path) -> None:
    values = (np.arange(32 * 32).reshape(32, 32) * 7).astype(np.uint16)
    path = tmp_path / "deep.tif"
    Image.fromarray(values).save(path)
    assert np.array_equal(read_grayscale(path), scale_to_uint8(values))


def test_dicom_monochrome2_and_rescale(tmp_path: Path) -> None:
    values = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (16, 1))
    path = write_dicom(tmp_path / "film.dcm", values, RescaleSlope=2, RescaleIntercept=-100)
    decoded = decode_image(path)
    assert decoded.file_format == "DICOM" and decoded.mode == "MONOCHROME2"
    assert np.array_equal(decoded.pixels, scale_to_uint8(values * 2.0 - 100))


def test_dicom_monochrome1_is_inverted_and_found_without_extension(tmp_path: Path) -> None:
    values = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (16, 1))
    path = write_dicom(tmp_path / "film_no_ext", values, photometric="MONOCHROME1")
    pixels = read_grayscale(path)
    assert np.array_equal(pixels, 255 - scale_to_uint8(values))


def test_dicom_window_is_applied(tmp_path: Path) -> None:
    values = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (16, 1))
    path = write_dicom(tmp_path / "w.dcm", values, WindowCenter=1024, WindowWidth=512)
    pixels = read_grayscale(path)
    # window 768..1280: below saturates black, above white, linear between
    assert (pixels[:, :12] == 0).all() and (pixels[:, 21:] == 255).all()
    assert 0 < pixels[0, 16] < 255


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((20, 60), dtype=np.uint8)
    pixels[:, :10] = 255  # bright band on the left
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    image.save(path, exif=exif, quality=100)
    out = read_grayscale(path)
    assert out.shape == (60, 20)
    assert out[:10].mean() > 200  # the band is now on top


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"", "empty"),
        (b"just some notes\n" * 10, "not_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "corrupt"),
    ],
)
def test_bad_files_raise_naming_the_file(tmp_path: Path, content: bytes, kind: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        read_grayscale(path)
    assert info.value.kind == kind
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_jpeg(tmp_path: Path) -> None:
    good = save(tmp_path / "good.jpg", smooth_image(3, (200, 200)), quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageReadError) as info:
        read_grayscale(cut)
    assert info.value.kind == "truncated"


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = save(tmp_path / "big.png", np.zeros((300, 300), dtype=np.uint8))
    with pytest.raises(ImageReadError) as info:
        read_grayscale(path, max_pixels=50_000)
    assert info.value.kind == "too_large" and "300x300" in str(info.value)


def test_draft_decoding_keeps_requested_size(tmp_path: Path) -> None:
    path = save(tmp_path / "big.jpg", smooth_image(4, (800, 1000)), quality=90)
    pixels = decode_image(path, draft_size=200).pixels
    assert min(pixels.shape) >= 200 and pixels.shape[0] < 800


def forged_png(path: Path, width: int, height: int) -> Path:
    """A 1x1 PNG whose header claims ``width`` x ``height`` (CRC fixed, so Pillow believes it)."""
    data = bytearray(save(path, np.zeros((1, 1), dtype=np.uint8)).read_bytes())
    data[16:24] = struct.pack(
        ">II", width, height
    )  # IHDR payload starts after signature, length, type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "side", [10_000, 20_000]
)  # over Pillow's warning limit (89M), over its error limit (179M)
def test_decompression_bomb_message_states_cxrlabs_limit(tmp_path: Path, side: int) -> None:
    path = forged_png(tmp_path / "bomb.png", side, side)
    with pytest.raises(ImageReadError) as info:
        read_grayscale(path)
    message = str(info.value)
    assert info.value.kind == "too_large" and str(path) in message
    assert (
        str(DEFAULT_MAX_PIXELS) in message
        and "89478485" not in message
        and "178956970" not in message
    )
    with pytest.raises(ImageReadError, match="limit of 1000 pixels"):
        read_grayscale(path, max_pixels=1000)


def test_bytes_decode_as_the_file_does(tmp_path: Path) -> None:
    values = np.linspace(1000, 4000, 48 * 40).reshape(48, 40).astype(np.uint16)
    deep = tmp_path / "deep.png"
    Image.fromarray(values).save(deep)
    dicom = write_dicom(tmp_path / "film.dcm", values, photometric="MONOCHROME1")
    jpeg = save(tmp_path / "a.jpg", smooth_image(5, (300, 260)), quality=90)
    for path in (deep, dicom, jpeg):
        from_file = decode_image(path, draft_size=64)
        from_bytes = decode_image(path.read_bytes(), draft_size=64, name=path.name)
        assert from_bytes.file_format == from_file.file_format
        assert from_bytes.mode == from_file.mode
        assert np.array_equal(from_bytes.pixels, from_file.pixels)
    with open(jpeg, "rb") as handle:  # a binary stream reads like bytes
        assert np.array_equal(decode_image(handle).pixels, read_grayscale(jpeg))


def test_rgba_png_is_read_as_its_luma(tmp_path: Path) -> None:
    rgba = np.zeros((30, 40, 4), dtype=np.uint8)
    rgba[..., :3] = 120
    rgba[..., 3] = np.linspace(0, 255, 40).astype(np.uint8)  # transparency varies across
    path = save(tmp_path / "alpha.png", rgba)
    decoded = decode_image(path.read_bytes(), name="alpha.png")
    assert decoded.mode == "RGBA" and decoded.pixels.shape == (30, 40)
    assert (decoded.pixels == 120).all()  # alpha is dropped, the stored grey kept


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"", "empty"),
        (b"<html><script>alert(1)</script></html>", "not_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "corrupt"),
    ],
)
def test_bad_bytes_name_the_upload(content: bytes, kind: str) -> None:
    with pytest.raises(ImageReadError) as info:
        decode_image(content, name="up<load>.png")
    assert info.value.kind == kind and str(info.value).startswith("up<load>.png: ")
    with pytest.raises(ImageReadError, match="^<upload>: "):
        decode_image(content)


def test_truncated_and_bomb_bytes(tmp_path: Path) -> None:
    good = save(tmp_path / "good.png", smooth_image(6, (300, 300)))
    with pytest.raises(ImageReadError) as info:
        decode_image(good.read_bytes()[:2000], name="cut.png")
    assert info.value.kind in {"truncated", "corrupt"} and "cut.png" in str(info.value)
    bomb = forged_png(tmp_path / "bomb.png", 20_000, 20_000).read_bytes()
    with pytest.raises(ImageReadError) as info:
        decode_image(bomb, name="bomb.png")
    assert info.value.kind == "too_large" and str(DEFAULT_MAX_PIXELS) in str(info.value)


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "film.dcm", np.zeros((8, 8)))
    import pydicom

    dataset = pydicom.dcmread(path)
    del dataset.PixelData
    dataset.save_as(path, enforce_file_format=True)
    for source in (path, path.read_bytes()):
        with pytest.raises(ImageReadError) as info:
            decode_image(source, name="report.dcm")
        assert info.value.kind == "no_pixels" and "report.dcm: no pixels:" in str(info.value)


def gradient16(side: int) -> np.ndarray:
    """A 16-bit horizontal gradient, ``side`` x ``side``: the film of issue 23's memory blow-up."""
    return np.broadcast_to(np.linspace(0, 65535, side).astype(np.uint16), (side, side)).copy()


@pytest.mark.parametrize("kind", ["png16", "dicom"])
def test_deep_films_decode_within_the_memory_budget(tmp_path: Path, kind: str) -> None:
    """Decoding a film at the pixel limit allocates at most 8 bytes per pixel of the limit (the
    README's budget), here with the limit scaled down to 1 megapixel. tracemalloc sees numpy's
    and pydicom's memory; Pillow's own decoded 16-bit image (2 bytes a pixel) is outside it, so
    a PNG may allocate 6 bytes a pixel here. Scaling in float64 over the whole film took 32."""
    import tracemalloc

    side = 1000
    values = gradient16(side)
    if kind == "png16":
        path, budget = tmp_path / "grad16.png", 8 - 2
        Image.fromarray(values).save(path)
    else:
        path, budget = tmp_path / "grad.dcm", 8
        write_dicom(path, values // 16, RescaleSlope=2, RescaleIntercept=-100)
    expected = scale_to_uint8(values if kind == "png16" else (values // 16) * 2.0 - 100)
    tracemalloc.start()
    try:
        pixels = read_grayscale(path, max_pixels=side * side)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(pixels, expected)
    assert peak <= budget * side * side, f"{peak / side**2:.1f} bytes per pixel"


def test_scaling_matches_whole_array_arithmetic_and_keeps_its_input() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1000, (300, 700))  # several blocks of rows
    values[5, 5] = np.nan
    before = values.copy()
    scaled = scale_to_uint8(values)
    low, high = np.nanmin(values), np.nanmax(values)
    finite = np.isfinite(values)
    whole = np.clip(np.rint((values[finite] - low) * (255.0 / (high - low))), 0, 255)
    assert np.array_equal(scaled[finite], whole.astype(np.uint8))
    assert np.array_equal(values, before, equal_nan=True)
    assert not scale_to_uint8(np.full((3, 4), 7.0)).any()


def multi_frame_dicom(path: Path, frames: int, side: int, **extra: object) -> np.ndarray:
    """A ``frames``-frame DICOM of ``side`` x ``side`` films, each a different gradient; returns
    the stack."""
    stack = np.stack([gradient16(side) // (16 * (i + 1)) for i in range(frames)])
    write_dicom(path, stack.reshape(frames * side, side), Rows=side, NumberOfFrames=frames, **extra)
    return stack


def test_multi_frame_dicom_counts_every_frame_and_gives_the_first(tmp_path: Path) -> None:
    path = tmp_path / "frames.dcm"
    stack = multi_frame_dicom(path, 4, 16)
    with pytest.raises(ImageReadError) as info:
        read_grayscale(path, max_pixels=4 * 16 * 16 - 1)  # each frame alone is under the limit
    assert info.value.kind == "too_large" and "4 frames of 16x16 pixels" in str(info.value)
    assert np.array_equal(read_grayscale(path, max_pixels=4 * 16 * 16), scale_to_uint8(stack[0]))


def test_deflated_dicom_that_inflates_past_the_limit_is_refused(tmp_path: Path) -> None:
    """A deflated file whose pixel data is far larger than its header says (2 MB of zeros that
    deflate to 2 KB behind an 8x8 header): refused while inflating, before pydicom holds it."""
    path = write_dicom(
        tmp_path / "bomb.dcm", np.zeros((1024, 1024)), syntax=DeflatedExplicitVRLittleEndian
    )
    import pydicom

    dataset = pydicom.dcmread(path)
    dataset.Rows = dataset.Columns = 8
    dataset.save_as(path, enforce_file_format=True)
    assert path.stat().st_size < 10_000
    for source in (path, path.read_bytes()):
        with pytest.raises(ImageReadError) as info:
            decode_image(source, name="bomb.dcm", max_pixels=64)
        assert info.value.kind == "too_large" and "deflated" in str(info.value)
    values = gradient16(32) // 16  # 12 bits stored
    small = write_dicom(tmp_path / "ok.dcm", values, syntax=DeflatedExplicitVRLittleEndian)
    assert np.array_equal(read_grayscale(small, max_pixels=32 * 32), scale_to_uint8(values))


def test_dicom_with_window_width_zero_is_a_read_error(tmp_path: Path) -> None:
    """WindowWidth 0 (pydicom refuses it when applying the window): one error naming the file."""
    path = write_dicom(tmp_path / "w0.dcm", gradient16(16) // 16, WindowCenter=1024, WindowWidth=0)
    for source in (path, path.read_bytes()):
        with pytest.raises(ImageReadError) as info:
            decode_image(source, name="w0.dcm")
        message = str(info.value)
        assert info.value.kind == "corrupt" and message.startswith("w0.dcm: corrupt: ")
        assert "window" in message.lower() and "\n" not in message
