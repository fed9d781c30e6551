"""Stimulus checks, sRGB mip chains, and preparation that never blocks the render loop."""

import os

import numpy as np
import pytest
from PIL import Image

from study.errors import StimulusError
from viewer import textures
from viewer.textures import SpreadUpload, decode_stimulus, decode_with_mips, mip_chain


def _save(path, width, height, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_bad_stimuli_fail_at_load_with_a_clear_message(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    with pytest.raises(StimulusError, match=r"corrupt\.png: unreadable image .*re-export"):
        decode_stimulus(corrupt)
    with pytest.raises(StimulusError, match=r"square\.png: 64x64 is not 2:1 equirectangular"):
        decode_stimulus(_save(tmp_path / "square.png", 64, 64))
    with pytest.raises(StimulusError, match=r"missing\.png: stimulus file not found"):
        decode_stimulus(tmp_path / "missing.png")
    # the limit is min(8192, GL_MAX_TEXTURE_SIZE); a small one stands in for it here
    big = _save(tmp_path / "big.png", 256, 128)
    with pytest.raises(StimulusError, match=r"big\.png: 256x128 exceeds the 128x64 texture limit; .*--downscale"):
        decode_stimulus(big, max_width=128)
    assert decode_stimulus(big, max_width=128, downscale=True).shape == (64, 128, 3)
    assert decode_stimulus(big).shape == (128, 256, 3)


def test_renderer_refuses_images_above_8192_by_default(headless):
    backend = headless(8, 8)
    assert backend.renderer.max_texture_width == min(8192, backend.ctx.info["GL_MAX_TEXTURE_SIZE"])
    assert backend.renderer.stimuli.loader.max_width == backend.renderer.max_texture_width


def test_mip_chain_averages_in_linear_light():
    checker = np.zeros((4, 8, 3), np.uint8)
    checker[::2, ::2] = checker[1::2, 1::2] = 255
    levels = mip_chain(checker)
    assert [lv.shape[:2] for lv in levels] == [(4, 8), (2, 4), (1, 2), (1, 1)]
    # half black, half white is 0.5 in linear light: sRGB 188, not 128
    assert (levels[1] == 188).all() and (levels[-1] == 188).all()
    # a uniform image keeps its exact code on every level, for every code
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 2, 1).repeat(3, 2)
    np.testing.assert_array_equal(mip_chain(np.repeat(ramp, 2, 0))[1][:, 0, 0], np.arange(256))


def test_spread_upload_moves_every_level_in_bounded_steps(headless, tmp_path):
    backend = headless(8, 8)
    decoded = decode_with_mips(_save(tmp_path / "p.png", 256, 128))
    texture = textures.allocate_stimulus_texture(backend.ctx, decoded.size)
    upload = SpreadUpload(backend.ctx, texture, decoded, budget=16 * 1024)
    steps = 1
    while not upload.step():
        steps += 1
    total = sum(lv.nbytes for lv in decoded.levels)
    assert steps >= total // (16 * 1024)
    for k, level in enumerate(decoded.levels):
        got = np.frombuffer(texture.read(level=k, alignment=1), np.uint8).reshape(level.shape)
        np.testing.assert_array_equal(got, level)
    texture.release()


def test_background_preload_does_not_block_the_render_loop(headless, tmp_path):
    # The stimulus is a named pipe: its decoder waits until the test writes the PNG into it, so the
    # render loop runs while a decode is certainly in progress.
    backend = headless(8, 8)
    stimuli = backend.renderer.stimuli
    source = _save(tmp_path / "source.png", 128, 64)
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    stimuli.want([str(pipe)])
    for _ in range(5):
        stimuli.update()          # returns although the decoder is stuck
        assert stimuli.get(str(pipe)) is None
    with open(pipe, "wb") as writer:
        writer.write(source.read_bytes())
    stimuli.loader.wait(str(pipe))
    for _ in range(10):
        stimuli.update()
        if stimuli.get(str(pipe)) is not None:
            break
    texture = stimuli.get(str(pipe))
    assert texture is not None
    np.testing.assert_array_equal(
        np.frombuffer(texture.read(alignment=1), np.uint8).reshape(64, 128, 3), np.asarray(Image.open(source))
    )


def test_a_bad_stimulus_surfaces_from_the_background_thread(headless, tmp_path):
    stimuli = headless(8, 8).renderer.stimuli
    path = str(_save(tmp_path / "square.png", 32, 32))
    stimuli.want([path])
    with pytest.raises(StimulusError, match="not 2:1"):
        stimuli.get(path, block=True)
