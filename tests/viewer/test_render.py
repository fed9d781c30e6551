"""The equirect renderer against py360convert.e2p, across the seam, and its colour encoding."""

import numpy as np
import py360convert
import pytest
from PIL import Image

from _panoramas import smooth_panorama

from viewer.backends.base import Frame
from viewer.camera import view_rotation
from viewer.renderer import GREY_SRGB


@pytest.fixture(scope="module")
def e2p_view(headless):
    return headless(200, 150, fov_deg=(70, 55))


@pytest.mark.parametrize(
    "yaw, pitch, roll",
    [(0, 0, 0), (30, 10, 0), (180, 0, 0), (-170, 20, 0), (90, 80, 0), (-60, -75, 0), (120, -5, 25)],
    ids=["front", "right-up", "seam", "across-seam", "near-north-pole", "near-south-pole", "rolled"],
)
def test_view_matches_e2p(e2p_view, panorama_file, yaw, pitch, roll):
    path, pixels = panorama_file
    backend = e2p_view
    texture = backend.renderer.stimuli.get(str(path), block=True)
    ours = backend.draw(Frame(stimulus=texture, head=view_rotation(yaw, pitch, roll)))[0].astype(np.float64)
    reference = py360convert.e2p(pixels, (70, 55), yaw, pitch, (150, 200), in_rot_deg=roll).astype(np.float64)
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).mean() <= 2.0


@pytest.mark.parametrize("offset_px", [0, 1], ids=["between-quads", "inside-a-quad"])
def test_no_seam_at_180_degrees_with_mipmaps(headless, tmp_path_factory, offset_px):
    # A 2048-wide panorama seen at 64 px over 90°: about 5 texels per pixel, so mip levels 2–3 are used.
    # GPUs take derivatives per 2 × 2 pixel quad; with offset 1 the meridian falls inside a quad, where
    # a naive texture() call picks the coarsest mip and draws a line (checked: steps of ~116 there).
    path = tmp_path_factory.getbasetemp() / "big.png"
    if not path.exists():
        Image.fromarray(np.asarray(Image.fromarray(smooth_panorama(512)).resize((2048, 1024), Image.Resampling.BICUBIC))).save(path)
    backend = headless(64, 64, fov_deg=90)
    texture = backend.renderer.stimuli.get(str(path), block=True)
    yaw = 180.0 - offset_px * 90.0 / 64
    view = backend.draw(Frame(stimulus=texture, head=view_rotation(yaw, 0)))[0].astype(np.float64)
    # the ±180° meridian runs between columns 31 + offset and 32 + offset
    steps = np.abs(np.diff(view, axis=1)).max(axis=(0, 2))
    seam = 31 + offset_px
    elsewhere = np.delete(steps, [seam - 1, seam, seam + 1])
    assert steps[seam - 1 : seam + 2].max() <= elsewhere.max() + 2.0
    # the pixels beside the meridian show the same content as in a view that does not cross it
    pixels = np.asarray(Image.open(path))
    reference = py360convert.e2p(pixels, 90, yaw, 0, (64, 64)).astype(np.float64)
    assert np.abs(view - reference)[:, seam - 2 : seam + 4].mean() <= 3.0


def test_grey_ramp_round_trips_8_bit_srgb(headless, tmp_path):
    # 256 bands of constant grey, 8 texels wide each; where the bilinear footprint stays inside one
    # band, an sRGB-correct pipeline (decode, filter in linear light, encode) returns the code unchanged.
    width, height = 2048, 1024
    codes = np.arange(width) // 8
    pixels = np.repeat(np.repeat(codes.astype(np.uint8)[None, :, None], height, 0), 3, 2)
    path = tmp_path / "ramp.png"
    Image.fromarray(pixels).save(path)
    size = 512
    backend = headless(size, 8, fov_deg=(90, 90 * 8 / size))
    texture = backend.renderer.stimuli.get(str(path), block=True)
    seen = set()
    for yaw in (-135, -45, 45, 135):
        row = backend.draw(Frame(stimulus=texture, head=view_rotation(yaw, 0)))[0][4].astype(int)
        x = (np.arange(size) + 0.5) / size * 2 - 1           # pixel centres in NDC
        lon = yaw + np.degrees(np.arctan(x * backend.tangents.right))
        texel = (lon / 360 + 0.5) * width - 0.5               # texel coordinate sampled
        inside = (texel % 8 >= 1.0) & (texel % 8 <= 6.0)       # both bilinear neighbours in one band
        expected = np.floor(texel[inside] + 0.5).astype(int) // 8
        np.testing.assert_array_equal(row[inside, 0], expected)
        assert (row[inside, 0] == row[inside, 1]).all() and (row[inside, 1] == row[inside, 2]).all()
        seen.update(expected.tolist())
    assert len(seen) == 256


def test_fade_mixes_towards_neutral_grey_in_linear_light(headless, tmp_path):
    white = np.full((64, 128, 3), 255, np.uint8)
    path = tmp_path / "white.png"
    Image.fromarray(white).save(path)
    backend = headless(16, 16, fov_deg=60)
    texture = backend.renderer.stimuli.get(str(path), block=True)
    full = backend.draw(Frame(stimulus=texture, fade=1.0))[0]
    none = backend.draw(Frame(stimulus=texture, fade=0.0))[0]
    half = backend.draw(Frame(stimulus=texture, fade=0.5))[0]
    assert (full == GREY_SRGB).all() and (none == 255).all()
    # halfway in linear light between 1.0 and grey 128 (0.2158) is 0.6079, i.e. sRGB 204, not (255+128)/2
    assert np.abs(half.astype(int) - 204).max() <= 1


def test_panel_quad_is_drawn_in_front_of_the_viewer(headless):
    from study.engine import Step
    from study.protocol import DEFAULT_PROTOCOL, load_protocol
    from viewer.panel import Panel, content_for_step

    backend = headless(96, 96, fov_deg=90)
    step = Step("instructions", "instructions", text="Look around.")
    panel = Panel(content_for_step(step, load_protocol(DEFAULT_PROTOCOL)), shown_at_s=0.0, yaw_deg=0.0)
    ahead = backend.draw(Frame(stimulus=None, fade=1.0, panel=panel.quad(0.0), head=view_rotation(0, 0)))[0]
    behind = backend.draw(Frame(stimulus=None, fade=1.0, panel=panel.quad(0.0), head=view_rotation(180, 0)))[0]
    assert (behind == GREY_SRGB).all()
    # the panel's dark background covers the centre of the view; its corners (beyond 1.2 m x 0.7 m at 1.5 m) do not
    assert (ahead[48, 48] < 60).all()
    assert (ahead[2, 2] == GREY_SRGB).all()
