"""Super-resolution with a tiny random RRDBNet loaded through spandrel: tiling, wrap padding, exact sizes."""

import numpy as np
import pytest
import torch

from generator.seams import discontinuity_score, wrap_l1_ratio
from generator.tiny import tiny_rrdb_state_dict
from generator.upscale import load_sr_model, parse_size, resize_equirect, super_resolve, upscale_panorama
from study.errors import PanostudyError, StimulusError
from tests.generator.panorama_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)
from tests.generator.test_seams import periodic_panorama


def _weights(path, scale):
    state = tiny_rrdb_state_dict(scale=scale)
    # A random last layer mostly outputs negatives (clamped to black); shift and widen it so the output varies.
    keys = list(state)
    state[keys[-1]] = state[keys[-1]] + 0.5
    state[keys[-2]] = state[keys[-2]] * 8
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def x4(tmp_path_factory):
    return load_sr_model(_weights(tmp_path_factory.mktemp("sr") / "RealESRGAN_x4plus.pth", 4))


@pytest.fixture(scope="module")
def x2(tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("sr") / "RealESRGAN_x2plus.safetensors"
    save_file(torch.load(_weights(path.with_suffix(".pth"), 2)), path)
    return load_sr_model(path)


def test_spandrel_detects_scale_from_pth_and_safetensors(x4, x2):
    assert x4.scale == 4 and x2.scale == 2
    image = periodic_panorama(16, 32)
    assert super_resolve(image, x4, tile=None).shape == (64, 128, 3)
    assert super_resolve(image, x2, tile=None).shape == (32, 64, 3)


def test_tiled_equals_untiled_within_rounding(x4):
    image = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    whole = super_resolve(image, x4, tile=None, overlap=12).astype(int)
    tiled = super_resolve(image, x4, tile=12, overlap=12).astype(int)
    assert whole.std() > 5  # the output is not flat, so the comparison means something
    assert np.abs(whole - tiled).max() <= 1


def test_super_resolution_commutes_with_rotating_the_panorama(x2):
    """Wrap padding: the seam is computed from the same neighbours as any other column."""
    image = np.random.default_rng(1).integers(0, 256, (24, 48, 3), dtype=np.uint8)
    upscaled = super_resolve(image, x2, tile=16, overlap=8).astype(int)
    rotated = super_resolve(np.roll(image, 13, axis=1), x2, tile=16, overlap=8).astype(int)
    assert np.abs(np.roll(upscaled, 26, axis=1) - rotated).max() <= 1


def test_super_resolution_keeps_the_seam(x4):
    image = periodic_panorama(32, 64)
    upscaled = super_resolve(image, x4, tile=16, overlap=8)
    interior = [discontinuity_score(np.roll(upscaled, k, axis=1)) for k in range(16, 256, 16)]
    # Not worse than before, and no worse than the interior column boundaries of the upscaled image.
    assert discontinuity_score(upscaled) <= max(discontinuity_score(image), np.median(interior)) + 0.05


def test_wrap_aware_resize_keeps_the_seam_where_a_plain_resize_breaks_it():
    from PIL import Image

    image = periodic_panorama(32, 64)
    resized = resize_equirect(image, 256, 128)
    plain = np.asarray(Image.fromarray(image).resize((256, 128), Image.Resampling.BICUBIC))
    assert resized.shape == (128, 256, 3)
    assert discontinuity_score(resized) <= discontinuity_score(image) + 0.05
    assert wrap_l1_ratio(resized) < wrap_l1_ratio(plain)
    # Away from the seam it is an ordinary bicubic resize.
    assert np.abs(resized[:, 64:192].astype(int) - plain[:, 64:192]).mean() < 2.0


@pytest.mark.parametrize("size", [(256, 128), (100, 50), (64, 32)])
def test_upscale_panorama_hits_the_exact_2_to_1_size(x2, size):
    out = upscale_panorama(periodic_panorama(24, 48), x2, size=size, tile=16, overlap=8)
    assert out.shape == (size[1], size[0], 3)


def test_sizes_and_files_are_checked():
    assert parse_size("4096x2048") == (4096, 2048) and parse_size("8192x4096") == (8192, 4096)
    for bad in ("4096x4096", "16384x8192", "big"):
        with pytest.raises(PanostudyError, match="--size"):
            parse_size(bad)
    with pytest.raises(StimulusError, match="2:1"):
        upscale_panorama(np.zeros((10, 30, 3), np.uint8), None, size=(64, 32))
    with pytest.raises(PanostudyError, match="no such file"):
        load_sr_model("/nonexistent/RealESRGAN_x4plus.pth")


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    junk = tmp_path / "weights.pth"
    torch.save({"not": torch.zeros(2)}, junk)
    with pytest.raises(PanostudyError, match="spandrel cannot load"):
        load_sr_model(junk)
