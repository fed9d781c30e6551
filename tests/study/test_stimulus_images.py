"""Every image mode reaches the viewer as the 8-bit sRGB it should show, and sizes are refused from the header.

Pixel values are computed by hand from the documented rules of :func:`study.stimuli.srgb8`: 16-bit grey
scaled by 255/65535, alpha composited over the neutral grey 128, CMYK by Pillow's formula.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from study.errors import StimulusError
from study.stimuli import NEUTRAL_GREY_SRGB, Candidate, check_image, open_image, srgb8


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes | None = None) -> bytes:
    """A PNG written by hand, for what Pillow cannot write (16-bit RGB) or a header with no real pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    body = zlib.compress(rows) if rows is not None else zlib.compress(b"\0")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def shown(path: Path) -> np.ndarray:
    with open_image(path) as image:
        return srgb8(image)


def scaled16(v: int) -> int:
    return round(int(v) * 255 / 65535)


def test_16_bit_grey_is_scaled_not_clipped_to_white(tmp_path):
    values = np.array([[0, 25700, 40000, 65535]] * 2, np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"
        assert np.asarray(image.convert("RGB"))[0, 2, 0] == 255  # what Pillow alone would show
    pixels = shown(path)
    assert pixels.shape == (2, 4, 3) and pixels.dtype == np.uint8
    assert pixels[0, :, 0].tolist() == [0, 100, 156, 255] == [scaled16(v) for v in values[0]]
    assert (pixels == pixels[:, :, :1]).all()


def test_the_viewer_decodes_16_bit_grey_the_same_way(tmp_path):
    from viewer.textures import decode_stimulus

    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((32, 64), 40000, np.uint16)).save(path)
    assert (decode_stimulus(path) == 156).all()


def test_16_bit_rgb_comes_within_one_code_of_exact_scaling(tmp_path):
    # Pillow reduces 16-bit RGB to its high bytes when it reads the file; that is within 1 of exact scaling.
    row = struct.pack(">9H", 40000, 1000, 65535, 0, 32768, 12345, 65280, 257, 100)
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_bytes(3, 1, 16, 2, b"\0" + row))
    pixels = shown(path)
    exact = np.array([scaled16(v) for v in struct.unpack(">9H", row)]).reshape(1, 3, 3)
    assert np.abs(pixels.astype(int) - exact).max() <= 1
    assert pixels[0, 0].tolist()[0] == 156


def test_grey_bilevel_and_palette_keep_their_codes(tmp_path):
    Image.fromarray(np.array([[0, 77, 255]], np.uint8)).save(tmp_path / "l.png")
    assert shown(tmp_path / "l.png")[0].tolist() == [[0, 0, 0], [77, 77, 77], [255, 255, 255]]
    Image.fromarray(np.array([[False, True]])).save(tmp_path / "one.png")
    assert shown(tmp_path / "one.png")[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    palette = Image.new("P", (3, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * (256 * 3 - 9))
    palette.putdata([2, 0, 1])
    palette.save(tmp_path / "p.png")
    assert shown(tmp_path / "p.png")[0].tolist() == [[0, 255, 0], [10, 20, 30], [200, 100, 50]]


def test_alpha_is_composited_over_the_neutral_grey(tmp_path):
    assert NEUTRAL_GREY_SRGB == 128
    rgba = np.array([[[255, 0, 0, 128], [10, 20, 30, 255], [200, 200, 200, 0]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    # out = (c * a + 128 * (255 - a) + 127) // 255
    assert shown(tmp_path / "rgba.png")[0].tolist() == [[192, 64, 64], [10, 20, 30], [128, 128, 128]]
    Image.fromarray(np.array([[[200, 128], [200, 255]]], np.uint8), "LA").save(tmp_path / "la.png")
    assert shown(tmp_path / "la.png")[0].tolist() == [[164, 164, 164], [200, 200, 200]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([250, 0, 0, 0, 0, 250] + [0] * (256 * 3 - 6))
    palette.putdata([0, 1])
    palette.save(tmp_path / "ptrns.png", transparency=1)
    assert shown(tmp_path / "ptrns.png")[0].tolist() == [[250, 0, 0], [128, 128, 128]]


def test_cmyk_is_converted_to_rgb(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 128], [100, 50, 0, 60]]], np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "cmyk.tif")
    # R = round((255 - C) * (255 - K) / 255), and likewise G from M and B from Y
    expected = [[round((255 - v) * (255 - k) / 255) for v in (c, m, y)] for c, m, y, k in cmyk[0].tolist()]
    assert expected == [[255, 255, 255], [0, 255, 255], [127, 127, 127], [119, 157, 195]]
    assert shown(tmp_path / "cmyk.tif")[0].tolist() == expected


def test_modes_that_cannot_be_shown_are_refused_naming_the_file(tmp_path):
    Image.fromarray(np.full((32, 64), 0.5, np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(StimulusError, match=r"float.tif: image mode F cannot be shown as sRGB; re-export"):
        check_image(Candidate(tmp_path / "float.tif", "street", str(tmp_path / "float.tif")))
    Image.fromarray(np.full((32, 64), 70000, np.int32)).save(tmp_path / "int32.tif")
    with pytest.raises(StimulusError, match=r"int32.tif: 32-bit integer values 70000..70000 are not 16-bit grey"):
        shown(tmp_path / "int32.tif")


@pytest.mark.parametrize(
    ("size", "expected"),
    [((30000, 15000), r"30000x15000 is too large to decode \(at most 16384x8192\)"),
     ((16000, 8000), r"16000x8000 exceeds 8192x4096; downscale it or import with --downscale-into DIR")],
)
def test_sizes_are_refused_from_the_header_before_decoding(tmp_path, size, expected):
    # Header only: decoding would fail, so refusing proves nothing was decoded; Pillow's bomb check stays silent.
    path = tmp_path / "huge.png"
    path.write_bytes(png_bytes(*size, 8, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(StimulusError, match=expected):
            check_image(Candidate(path, "street", str(path)))
    from viewer.textures import decode_stimulus

    with pytest.raises(StimulusError, match=f"{size[0]}x{size[1]}"):
        decode_stimulus(path)


def test_a_truncated_image_is_refused_at_import(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(StimulusError, match="cut.png: unreadable image"):
        check_image(Candidate(path, "street", str(path)))
