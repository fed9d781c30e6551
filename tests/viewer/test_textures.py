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


@pytest.mark.parametrize("shape", [(1, 2, 3), (3, 6, 3), (131, 262, 3), (64, 1, 4)])
def test_mip_chain_matches_a_float_reference_across_band_edges(shape):
    # 131 rows cross two band edges of 64 and end odd; the float chain is the definition, the
    # 16-bit fixed-point one may differ by its rounding only
    image = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    c = image / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    levels = mip_chain(image)
    assert levels[0] is image
    for level in levels[1:]:
        h, w = linear.shape[:2]
        linear = linear[: max(1, h // 2 * 2)].reshape(max(1, h // 2), -1, w, shape[2]).mean(1)
        linear = linear[:, : max(1, w // 2 * 2)].reshape(linear.shape[0], max(1, w // 2), -1, shape[2]).mean(2)
        srgb = np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)
        assert level.shape == linear.shape
        assert np.abs(level.astype(int) - np.round(srgb * 255)).max() <= 1
    assert levels[-1].shape[:2] == (1, 1)


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


def test_a_bad_stimulus_surfaces_from_the_background_process(headless, tmp_path):
    stimuli = headless(8, 8).renderer.stimuli
    path = str(_save(tmp_path / "square.png", 32, 32))
    stimuli.want([path])
    with pytest.raises(StimulusError, match="not 2:1"):
        stimuli.get(path, block=True)


def _prepare(stimuli, path, updates=10):
    """Waits for the decode, then lets ``updates`` frames' worth of upload run; the texture or None."""
    stimuli.loader.wait(path)
    for _ in range(updates):
        stimuli.update()
    return stimuli.get(path)


def _pixels(texture):
    return np.frombuffer(texture.read(alignment=1), np.uint8).reshape(texture.height, texture.width, 3)


def test_texture_slots_are_reused_but_never_the_one_on_screen(headless, tmp_path):
    stimuli = headless(8, 8).renderer.stimuli
    a, b, c = (str(_save(tmp_path / f"{name}.png", 128, 64, seed)) for seed, name in enumerate("abc"))
    stimuli.reserve((128, 64))
    # nothing on screen yet: the reserved (empty) slots must take the first stimulus
    stimuli.want([a])
    first = _prepare(stimuli, a)
    assert first is not None
    stimuli.show(a)
    stimuli.want([a, b, c])
    assert _prepare(stimuli, b) is not None
    # both slots are taken: by the stimulus on screen and by a more urgent one
    assert _prepare(stimuli, c) is None
    np.testing.assert_array_equal(_pixels(first), np.asarray(Image.open(a)))
    stimuli.show(b)
    stimuli.want([b, c])
    assert _prepare(stimuli, c) is first
    np.testing.assert_array_equal(_pixels(first), np.asarray(Image.open(c)))
    np.testing.assert_array_equal(_pixels(stimuli.get(b)), np.asarray(Image.open(b)))


_KILLED_VIEWER = """
import sys, time
from viewer.textures import StimulusLoader
if __name__ == "__main__":
    loader = StimulusLoader()
    decoded = loader.wait(sys.argv[1])
    print(next(iter(loader._pool._processes)), decoded.shared.name, flush=True)
    time.sleep(600)
"""


def test_the_decoding_process_and_its_memory_go_when_the_viewer_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "viewer_process.py"
    script.write_text(_KILLED_VIEWER)
    viewer = subprocess.Popen([sys.executable, str(script), str(_save(tmp_path / "p.png", 64, 32))],
                              stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    decoder_pid, block = viewer.stdout.readline().split()
    assert os.path.exists(f"/dev/shm/{block}")
    viewer.send_signal(signal.SIGKILL)
    viewer.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (os.path.exists(f"/proc/{decoder_pid}") or os.path.exists(f"/dev/shm/{block}")):
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{decoder_pid}"), "the decoding process outlived the viewer"
    assert not os.path.exists(f"/dev/shm/{block}"), "the decoded image stayed in shared memory"


def test_the_loader_reuses_its_shared_memory_and_frees_it_on_close(tmp_path):
    loader = textures.StimulusLoader()
    a, b = (str(_save(tmp_path / f"{name}.png", 64, 32, seed)) for seed, name in enumerate("ab"))
    bigger = str(_save(tmp_path / "bigger.png", 128, 64, 2))
    square = str(_save(tmp_path / "square.png", 32, 32, 3))
    try:
        first = loader.wait(a).shared.name
        loader.forget(a)
        with pytest.raises(StimulusError, match="not 2:1"):
            loader.wait(square)               # a failed decode gives the block back ...
        decoded = loader.wait(b)              # ... and the next stimulus of the same size reuses it
        assert decoded.shared.name == first
        for got, expected in zip(decoded.levels, mip_chain(np.asarray(Image.open(b)))):
            np.testing.assert_array_equal(got, expected)
        loader.forget(b)
        assert loader.wait(bigger).shared.name != first
        assert not os.path.exists(f"/dev/shm/{first}")   # too small, so freed
        kept = loader.wait(bigger).shared.name
    finally:
        loader.close()
    assert not os.path.exists(f"/dev/shm/{kept}")


def _uniform(path, value, width=2048):
    Image.fromarray(np.full((width // 2, width, 3), value, np.uint8)).save(path)
    return str(path)


def test_a_blocking_load_never_takes_the_slot_of_an_upload_in_progress(headless, tmp_path):
    stimuli = headless(8, 8).renderer.stimuli
    x, p = _uniform(tmp_path / "x.png", 10), _uniform(tmp_path / "p.png", 200)
    stimuli.reserve((2048, 1024))               # 8 MB of mips: two upload steps
    stimuli.want([x])
    stimuli.loader.wait(x)
    stimuli.update()
    assert stimuli.uploading == x
    stimuli.want([p, x])                        # p is now the more urgent one, and is needed at once
    texture = stimuli.get(p, block=True)
    for _ in range(200):
        stimuli.update()
    assert np.unique(_pixels(texture)).tolist() == [200]
    assert np.unique(_pixels(stimuli.get(x))).tolist() == [10]


def test_a_bad_upcoming_stimulus_fails_only_when_it_is_due(headless, tmp_path):
    stimuli = headless(8, 8).renderer.stimuli
    shown, good = _uniform(tmp_path / "shown.png", 50), _uniform(tmp_path / "good.png", 90)
    bad = str(_save(tmp_path / "bad.png", 64, 64))
    stimuli.want([shown, bad, good])
    stimuli.loader.wait(good)                   # one decoding process, first in first out: all are done
    for _ in range(50):
        stimuli.update()                        # the frames of `shown` go on
    assert stimuli.get(shown) is not None
    assert stimuli.get(good) is not None        # the stimulus behind the bad one was not held up
    with pytest.raises(StimulusError, match=r"bad\.png: 64x64 is not 2:1"):
        stimuli.get(bad)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
def test_hurry_runs_the_decoder_at_normal_priority_until_the_stimulus_is_ready(tmp_path):
    loader = textures.StimulusLoader()
    source = _save(tmp_path / "source.png", 64, 32)
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)                              # the decode waits until the test writes the image
    try:
        loader.request(str(pipe))
        decoder = loader._worker_pid.result(timeout=120)
        assert os.sched_getscheduler(decoder) == os.SCHED_IDLE
        loader.hurry(str(pipe))
        assert os.sched_getscheduler(decoder) == os.SCHED_OTHER
        with open(pipe, "wb") as writer:
            writer.write(source.read_bytes())
        np.testing.assert_array_equal(loader.wait(str(pipe)).levels[0], np.asarray(Image.open(source)))
        assert os.sched_getscheduler(decoder) == os.SCHED_IDLE
    finally:
        loader.close()
