"""ControlNet-tile refinement on the tiny random-weight model: size, identity at strength 0, tile blending, seam, CLI."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from generator.batch import generate_sets
from generator.manifest import read_manifest_lines
from generator.panorama_pipeline import PanoramaSettings
from generator.seams import discontinuity_score
from generator.tile_refine import TileRefineSettings, load_tile_refiner, tile_weights, tile_windows
from panostudy.cli import app
from study.errors import PanostudyError, StimulusError
from tests.generator.panorama_fixtures import one_torch_thread, smooth_image  # noqa: F401 (autouse fixture)
from tests.generator.test_batch import ROOT
from tests.generator.test_seams import periodic_panorama

#: 2 of 10 steps, conditional branch only, on 32-pixel tiles (16 latent cells) overlapping by 8 pixels.
TILED = dict(strength=0.2, steps=10, guidance_scale=1.0, tile_size=32, tile_overlap=8)


@pytest.fixture(scope="module")
def refiner():
    return load_tile_refiner("tiny", "tiny")


class ScalingDenoiser(torch.nn.Module):
    """A stand-in UNet whose noise prediction is a per-cell function of the latent (no spatial context).

    Its predictions on a tile equal its predictions on the whole latent cropped to the tile, so tiled and untiled
    refinement may differ only through the blending weights.
    """

    def __init__(self, unet):
        super().__init__()
        self.config = unet.config
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    @property
    def dtype(self):
        return self.anchor.dtype

    @property
    def device(self):
        return self.anchor.device

    def forward(self, sample, timestep, encoder_hidden_states=None, down_block_additional_residuals=None,
                mid_block_additional_residual=None, return_dict=False):
        return (torch.tanh(sample) * 0.5,)


def test_output_keeps_the_input_size_and_is_reproducible(refiner):
    image = periodic_panorama(64, 128)
    first = refiner(image, "a street", TileRefineSettings(**{**TILED, "guidance_scale": 7.5}), seed=3)
    again = refiner(image, "a street", TileRefineSettings(**{**TILED, "guidance_scale": 7.5}), seed=3)
    assert first.image.shape == (64, 128, 3) and first.image.dtype == np.uint8
    assert (first.image == again.image).all()
    assert np.abs(first.image.astype(int) - image).mean() > 1  # it did change the image (random weights)
    assert set(first.timings) == {"encode", "denoise", "decode"}


def test_strength_zero_is_the_identity(refiner):
    image = smooth_image(64, 128)
    out = refiner(image, "a street", TileRefineSettings(strength=0.0), seed=0).image  # default tiles: 768 px
    assert (out == image).all() and out is not image
    # Strength below one step's worth runs no step either.
    assert (refiner(image, "a street", TileRefineSettings(strength=0.05, steps=10), seed=0).image == image).all()


@pytest.mark.parametrize("shape, tile, overlap", [((32, 64), 16, 4), ((32, 64), 32, 8), ((16, 32), None, 2), ((24, 48), 10, 3)])
def test_tile_weights_sum_to_one_and_tiles_overlap_across_the_seam(shape, tile, overlap):
    height, width = shape
    windows = tile_windows(height, width, tile, overlap)
    total = torch.zeros(height, width)
    for window, weight in zip(windows, tile_weights(windows, height, width, overlap)):
        assert (weight > 0).all()
        total[window.top : window.top + window.height].index_add_(1, window.columns(width), weight[0, 0])
    torch.testing.assert_close(total, torch.ones(height, width))
    # Some tile covers the seam (the last and first columns) with at least `overlap` columns on either side.
    seam_tiles = [w for w in windows if (w.left + w.width > width + overlap - 1) and w.left <= width - overlap]
    assert seam_tiles


def test_tiled_equals_untiled_for_a_per_cell_denoiser():
    pipe = load_tile_refiner("tiny", "tiny")
    pipe.unet = ScalingDenoiser(pipe.unet)
    image = periodic_panorama(64, 128)
    tiled = pipe(image, "a street", TileRefineSettings(**TILED), seed=1).image.astype(int)
    whole = pipe(image, "a street", TileRefineSettings(**{**TILED, "tile_size": None}), seed=1).image.astype(int)
    assert np.abs(tiled - image).mean() > 1  # the stand-in changes the image, so the comparison means something
    assert np.abs(tiled - whole).max() <= 1  # stated tolerance: one grey level (float rounding)


def test_refinement_keeps_the_seam(refiner):
    image = periodic_panorama(64, 128)
    refined = refiner(image, "a street", TileRefineSettings(**TILED), seed=0).image
    interior = [discontinuity_score(np.roll(refined, k, axis=1)) for k in range(8, 128, 8)]
    # Stated margin: not worse than the input or than the refined image's own interior column boundaries, + 0.05.
    assert discontinuity_score(refined) <= max(discontinuity_score(image), np.median(interior)) + 0.05


@pytest.mark.parametrize(
    "settings, size, match",
    [
        (TileRefineSettings(strength=1.5), (64, 128), "--refine-strength"),
        (TileRefineSettings(tile_size=30), (64, 128), "tile_size"),
        (TileRefineSettings(tile_size=32, tile_overlap=32), (64, 128), "tile_overlap"),
        (TileRefineSettings(), (64, 100), "2:1"),
    ],
)
def test_bad_settings_are_refused_before_any_work(refiner, settings, size, match):
    with pytest.raises(PanostudyError, match=match):
        refiner(np.zeros((*size, 3), np.uint8), "a street", settings)


def test_bad_inputs_and_models_are_refused(refiner):
    with pytest.raises(StimulusError, match="uint8"):
        refiner(np.zeros((64, 128), np.uint8), "a street")
    with pytest.raises(PanostudyError, match="--sr-control"):
        load_tile_refiner("tiny", "/some/controlnet")


@pytest.mark.parametrize("command", [["panorama", "in.png", "--out", "out.png"], ["sets", "--per-scene", "1", "--out", "o"]])
@pytest.mark.parametrize("given", [["--sr-base", "tiny"], ["--sr-control", "tiny"]])
def test_cli_needs_both_or_neither(tmp_path, command, given):
    result = CliRunner().invoke(app, ["generate", *command, *given])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--sr-base and --sr-control" in lines[0]


def test_scene_set_records_the_refinement(tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    (tmp_path / "masks").symlink_to(ROOT / "data" / "masks")
    (scenes / "street.toml").write_text((ROOT / "data" / "scenes" / "street.toml").read_text())
    settings = PanoramaSettings(height=64, width=128, steps=2)
    result = generate_sets(
        scenes, 1, "tiny", tmp_path / "out", rank=0, world_size=1, settings=settings, size=(128, 64),
        stage1_size=64, stage1_steps=2, sr_base="tiny", sr_control="tiny", refine_strength=0.2,
    )  # fmt: skip
    (entry,) = read_manifest_lines(result.manifest)
    refinement = entry["super_resolution"]["refinement"]
    assert refinement["base"]["id"] == "tiny" and refinement["controlnet"]["id"] == "tiny"
    assert refinement["settings"]["strength"] == 0.2
    assert {"tile_refine_encode", "tile_refine_denoise", "tile_refine_decode"} <= set(entry["timings"])
