"""The mask-guided pipeline on the offline tiny model: equations, attention maps, guidance, safety, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generator.attention import AttentionStore, cross_attention_resolutions, storing_cross_attention
from generator.mask_guided_pipeline import (
    background_loss,
    foreground_loss,
    gaussian_smooth,
    guidance_step_sizes,
    mask_alignment,
    mask_constraint_loss,
    masks_at_resolution,
    object_attention_maps,
    phrase_token_indices,
)
from study.errors import SceneSpecError

PROMPT = "a red car driving on an asphalt road between tall buildings under a blue sky"
OBJECTS = {"car": "a red car", "sky": "blue sky"}


def scene_masks(height: int, width: int) -> dict[str, np.ndarray]:
    car = np.zeros((height, width), bool)
    car[height // 2 :, width // 8 : 5 * width // 8] = True
    sky = np.zeros((height, width), bool)
    sky[: 3 * height // 8, :] = True
    return {"car": car, "sky": sky}


def run(pipe, *, seed=0, steps=4, height=64, width=64, **options):
    return pipe(
        PROMPT,
        OBJECTS,
        scene_masks(height, width),
        height=height,
        width=width,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **options,
    )


# --- Eq. 1-3 on synthetic maps -----------------------------------------------------------------------------------

A = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.3, 0.2], [0.0, 0.4, 0.6]])
M = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # 4 cells inside, 5 outside


def test_losses_equal_hand_computed_values():
    # P = 0.2: k_f = ceil(0.8) = 1 -> top1 inside 0.9; k_b = ceil(1.0) = 1 -> top1 outside 0.6
    assert foreground_loss(A, M, 0.2).item() == pytest.approx(1 - 0.9)
    assert background_loss(A, M, 0.2).item() == pytest.approx(0.6)
    # P = 0.5: k_f = 2 -> mean(0.9, 0.5) = 0.7; k_b = ceil(2.5) = 3 -> mean(0.6, 0.4, 0.2) = 0.4
    assert foreground_loss(A, M, 0.5).item() == pytest.approx(0.3)
    assert background_loss(A, M, 0.5).item() == pytest.approx(0.4)
    # Eq. 3 sums both terms over objects; the second object is the complement layout.
    second = 1.0 - M  # k_f = ceil(2.5) = 3 -> mean(0.6, 0.4, 0.2); k_b = ceil(2.0) = 2 -> mean(0.9, 0.5)
    total = mask_constraint_loss(torch.stack([A, A]), torch.stack([M, second]), 0.5)
    assert total.item() == pytest.approx((0.3 + 0.4) + ((1 - 0.4) + 0.7))


@pytest.mark.parametrize("where", ["one pixel", "whole map"])
def test_top_k_with_tiny_masks_is_never_nan(where):
    attention = torch.rand(16, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
    mask = torch.zeros(16, 16)
    if where == "one pixel":
        mask[3, 5] = 1
    else:
        mask[:] = 1  # the complement is empty
    loss = mask_constraint_loss(attention[None], mask[None], 0.2)
    (gradient,) = torch.autograd.grad(loss, attention)
    assert torch.isfinite(loss) and torch.isfinite(gradient).all()
    if where == "one pixel":
        assert foreground_loss(attention, mask).item() == pytest.approx(1 - attention[3, 5].item())
    else:
        assert background_loss(attention, mask).item() == 0.0


def test_object_maps_drop_the_start_token_and_sum_multi_token_phrases():
    rng = torch.Generator().manual_seed(2)
    mean_map = torch.rand(4, 6, 77, generator=rng) * 0.02
    mean_map[..., 0] = 0.9  # the start token takes most of the mass; it must not enter the softmax
    maps = object_attention_maps(mean_map, num_prompt_tokens=5, token_groups=[[1], [2, 3], [1, 2, 3, 4, 5]],
                                 smoothing_sigma=0)
    expected = torch.softmax(100 * mean_map[..., 1:6], dim=-1)
    torch.testing.assert_close(maps[0], expected[..., 0])
    torch.testing.assert_close(maps[1], expected[..., 1] + expected[..., 2])
    torch.testing.assert_close(maps[2], torch.ones(4, 6))  # all prompt tokens together: all the mass


def test_gaussian_smoothing_keeps_mass_of_a_constant_and_spreads_a_peak():
    constant = torch.full((1, 5, 5), 0.3)
    torch.testing.assert_close(gaussian_smooth(constant), constant)
    peak = torch.zeros(1, 5, 5)
    peak[0, 2, 2] = 1.0
    smoothed = gaussian_smooth(peak)[0]
    assert smoothed[2, 2] == pytest.approx(0.787**2, abs=2e-3)
    assert smoothed[2, 1] == smoothed[1, 2] == smoothed[3, 2] > 0.05


def test_masks_at_resolution_keeps_tiny_objects_and_alignment_is_a_share():
    masks = np.zeros((2, 64, 64), bool)
    masks[0, :32] = True
    masks[1, 10, 10] = True  # one pixel: below half a cell everywhere
    low = masks_at_resolution(masks, (16, 16))
    assert low[0].sum() == 128 and low[0][:8].all()
    assert low[1].sum() == 1 and low[1][2, 2] == 1
    attention = torch.zeros(2, 16, 16)
    attention[:, :4] = 1.0  # all mass in the top quarter
    torch.testing.assert_close(mask_alignment(attention, low), torch.tensor([1.0, 1 / 64]))


def test_step_sizes_follow_boxdiff():
    sizes = guidance_step_sizes(50)
    assert sizes[0] == pytest.approx(20.0) and sizes[-1] == pytest.approx(20 * np.sqrt(0.5))
    assert np.all(np.diff(sizes) < 0)


def test_phrase_tokens_cover_the_phrase(get_dummy_components):
    tokenizer = get_dummy_components(0)["tokenizer"]
    ids = tokenizer(PROMPT).input_ids
    car = phrase_token_indices(tokenizer, PROMPT, "a red car")
    assert tokenizer.decode([ids[i] for i in car]) == "a red car"
    asphalt = phrase_token_indices(tokenizer, PROMPT, "asphalt road")
    assert tokenizer.decode([ids[i] for i in asphalt]).replace(" ", "") == "asphaltroad"
    assert len(asphalt) > 2  # spans several tokens in the tiny vocabulary
    with pytest.raises(SceneSpecError, match="past the 75-token limit"):
        phrase_token_indices(tokenizer, "zz " * 80 + "a red car", "a red car")


# --- attention maps from the UNet --------------------------------------------------------------------------------


def test_cross_attention_resolutions_of_sd15_and_of_the_tiny_unet(tiny_pipe):
    sd15 = {
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
    }
    assert cross_attention_resolutions(sd15, 64, 64) == [(64, 64), (32, 32), (16, 16), (8, 8)]
    assert (16, 32) in cross_attention_resolutions(sd15, 64, 128)
    assert cross_attention_resolutions(tiny_pipe.unet.config, 32, 64) == [(16, 32)]
    assert tiny_pipe.default_attention_resolution(64, 64) == (16, 16)  # image/32 = 2x2 does not exist


@pytest.mark.parametrize(("height", "width", "resolution"), [(64, 64, (16, 16)), (64, 128, (16, 32))])
def test_attention_map_shapes_square_and_two_to_one(tiny_pipe, height, width, resolution):
    store = AttentionStore(resolution)
    latents = torch.randn(1, 4, height // 2, width // 2, generator=torch.Generator().manual_seed(0))
    embeds = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    with storing_cross_attention(tiny_pipe.unet, store):
        store.active = True
        tiny_pipe.unet(latents, 10, encoder_hidden_states=embeds)
    assert store.num_layers == 6  # down_blocks.1 (2), mid_block (1), up_blocks.0 (3)
    mean_map = store.mean_map()
    assert mean_map.shape == (1, *resolution, 77)
    torch.testing.assert_close(mean_map.sum(-1), torch.ones(1, *resolution))  # probabilities over tokens

    out = run(tiny_pipe, steps=2, height=height, width=width)
    assert out.images.shape == (1, height, width, 3)
    assert out.attention_resolution == resolution
    assert {label: m.shape for label, m in out.attention_maps.items()} == {"car": resolution, "sky": resolution}


def test_store_records_only_while_active(tiny_pipe):
    store = AttentionStore((16, 16))
    with storing_cross_attention(tiny_pipe.unet, store):
        tiny_pipe.unet(torch.zeros(1, 4, 32, 32), 10, encoder_hidden_states=torch.zeros(1, 77, 32))
    assert store.num_layers == 0
    with pytest.raises(RuntimeError, match="no cross-attention layer ran at 16x16"):
        store.mean_map()


# --- the pipeline ------------------------------------------------------------------------------------------------


def test_guidance_lowers_the_loss_and_raises_alignment(tiny_pipe):
    # The random tiny UNet attends almost uniformly (object maps vary by ~0.02 over the image), so its
    # gradients are about a thousand times weaker than a trained SD's; the test uses step size 1e4 instead of 20
    # so that the effect is well above float noise. Same seed, same guided steps; step size 0 only measures.
    guided = run(tiny_pipe, steps=6, guided_steps=3, step_size=1e4)
    unguided = run(tiny_pipe, steps=6, guided_steps=3, step_size=0.0)
    assert len(guided.loss_history) == len(unguided.loss_history) == 3
    assert guided.loss_history[0] == pytest.approx(unguided.loss_history[0])  # same start
    assert guided.end_of_guidance_loss < unguided.end_of_guidance_loss - 1e-3
    for label in OBJECTS:
        assert guided.mask_alignment[label] > unguided.mask_alignment[label] + 1e-3
    assert not np.array_equal(guided.images, unguided.images)


def test_two_runs_with_one_seed_are_identical_and_seeds_differ(tiny_pipe):
    first = run(tiny_pipe, seed=3, steps=3, step_size=1e3)
    second = run(tiny_pipe, seed=3, steps=3, step_size=1e3)
    other = run(tiny_pipe, seed=4, steps=3, step_size=1e3)
    np.testing.assert_array_equal(first.images, second.images)
    assert first.loss_history == second.loss_history
    assert first.mask_alignment == second.mask_alignment
    assert not np.array_equal(first.images, other.images)


def test_processors_and_weights_are_restored_after_an_exception_in_the_loop(tiny_pipe):
    before = dict(tiny_pipe.unet.attn_processors)
    steps_seen = []

    def explode(pipe, step, timestep, tensors):
        steps_seen.append(step)
        raise KeyboardInterrupt("stopped by the user")

    with pytest.raises(KeyboardInterrupt):
        run(tiny_pipe, steps=4, callback_on_step_end=explode)
    assert steps_seen == [0]
    after = tiny_pipe.unet.attn_processors
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] for name in before)
    assert all(p.requires_grad for p in tiny_pipe.unet.parameters())


def test_callback_sees_every_step(tiny_pipe):
    seen = []

    def record(pipe, step, timestep, tensors):
        seen.append((step, tuple(tensors["latents"].shape)))
        return {}

    run(tiny_pipe, steps=3, callback_on_step_end=record)
    assert seen == [(0, (1, 4, 32, 32)), (1, (1, 4, 32, 32)), (2, (1, 4, 32, 32))]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"objects": {"car": "a green car"}}, "phrase \"a green car\" is not in the prompt"),
        ({"objects": {"bus": "a red car"}}, "object 'bus' has no mask"),
        ({"masks": {"car": np.ones((32, 32), bool)}}, r"mask 'car' is \(32, 32\) but the image is \(64, 64\)"),
        ({"masks": {"car": np.zeros((64, 64), bool)}}, "mask 'car' is empty"),
        ({"top_k_fraction": 0.0}, r"`top_k_fraction` \(P\) must be in \(0, 1\]"),
        ({"guided_steps": 9}, "`guided_steps` must be in 0..num_inference_steps=4"),
        ({"attention_resolution": (8, 8)}, r"`attention_resolution` \(8, 8\) has no cross-attention layer"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tiny_pipe, options, message):
    arguments = {"objects": {"car": "a red car"}, "masks": scene_masks(64, 64)} | options
    with pytest.raises(SceneSpecError, match=message):
        tiny_pipe(PROMPT, arguments["objects"], arguments["masks"], num_inference_steps=4,
                  **{k: v for k, v in options.items() if k not in ("objects", "masks")})


# --- the command -------------------------------------------------------------------------------------------------


def test_generate_image_command_writes_png_and_sidecar(tmp_path, tiny_pipe):
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from panostudy.cli import app

    out = tmp_path / "shots" / "vehicle.png"
    result = CliRunner().invoke(
        app, ["generate", "image", "--scene", "data/scenes/vehicle.toml", "--layout", "vehicle_b", "--steps", "2",
              "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    from panostudy.cli._generate_stage2 import PLACEHOLDER_NOTE

    assert " ".join(result.output.split()).startswith(" ".join(PLACEHOLDER_NOTE.split()))
    assert Image.open(out).size == (64, 64)
    metadata = json.loads(out.with_suffix(".json").read_text())
    assert metadata["placeholder_not_meaningful"] is True
    assert (metadata["layout"], metadata["seed"], metadata["steps"], metadata["guided_steps"]) == ("vehicle_b", 12, 2, 1)
    assert set(metadata["mask_alignment"]) == {"car", "road", "building", "sky"}
    assert all(0 < share < 1 for share in metadata["mask_alignment"].values())
    assert metadata["masks"]["format"] == "cityscapes"


def test_generate_image_preview_and_compare_unguided(tmp_path):
    import json

    from typer.testing import CliRunner

    from panostudy.cli import app

    out = tmp_path / "preview.png"
    result = CliRunner().invoke(
        app, ["generate", "image", "--scene", "data/scenes/vehicle.toml", "--preview", "--compare-unguided",
              "--out", str(out)],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    assert "unguided, same seed" in result.output and "mask's share of the image" in result.output
    metadata = json.loads(out.with_suffix(".json").read_text())
    assert metadata["preview"] is True and metadata["steps"] == 4
    assert set(metadata["unguided_mask_alignment"]) == set(metadata["mask_alignment"])
    assert all(0 < area < 1 for area in metadata["mask_area"].values())


def test_head_noun_guidance_takes_the_last_word_only(get_dummy_components):
    tokenizer = get_dummy_components(0)["tokenizer"]
    ids = tokenizer(PROMPT).input_ids
    head = phrase_token_indices(tokenizer, PROMPT, "a red car", "head")
    assert tokenizer.decode([ids[i] for i in head]) == "car"
    assert set(head) < set(phrase_token_indices(tokenizer, PROMPT, "a red car"))
    road = phrase_token_indices(tokenizer, PROMPT, "asphalt road", "head")
    assert tokenizer.decode([ids[i] for i in road]).replace(" ", "") == "road"


def test_generate_image_command_refuses_bad_input_before_writing(tmp_path):
    from typer.testing import CliRunner

    from panostudy.cli import app

    runner = CliRunner()
    bad_out = runner.invoke(app, ["generate", "image", "--scene", "data/scenes/vehicle.toml", "--out", str(tmp_path / "x.jpg")])
    assert bad_out.exit_code == 2 and "--out" in bad_out.output and "write a .png file" in bad_out.output
    bad_layout = runner.invoke(
        app, ["generate", "image", "--scene", "data/scenes/vehicle.toml", "--layout", "nope", "--out", str(tmp_path / "x.png")]
    )
    assert bad_layout.exit_code == 2 and "no layout 'nope'; this spec has: vehicle_a" in bad_layout.output
    assert list(tmp_path.iterdir()) == []


def test_tiny_components_are_seeded_and_leave_the_global_rng_alone(get_dummy_components):
    state = torch.random.get_rng_state()
    first, again, other = get_dummy_components(5), get_dummy_components(5), get_dummy_components(6)
    assert torch.equal(torch.random.get_rng_state(), state)
    for name in ("unet", "vae", "text_encoder"):
        weights = [p for p in first[name].state_dict().values()]
        assert all(torch.equal(a, b) for a, b in zip(weights, again[name].state_dict().values()))
    assert not torch.equal(first["unet"].conv_in.weight, other["unet"].conv_in.weight)
    assert len(first["tokenizer"]) <= first["text_encoder"].config.vocab_size


def test_a_saved_pipeline_loads_back_from_a_local_folder(tmp_path, tiny_pipe):
    from generator.mask_guided_pipeline import MaskGuidedStableDiffusionPipeline, load_mask_guided_pipeline

    tiny_pipe.save_pretrained(tmp_path / "tiny-sd")
    loaded = load_mask_guided_pipeline(str(tmp_path / "tiny-sd"))
    assert type(loaded) is MaskGuidedStableDiffusionPipeline
    loaded.set_progress_bar_config(disable=True)
    original = run(tiny_pipe, seed=7, steps=2, step_size=1e3)
    reloaded = run(loaded, seed=7, steps=2, step_size=1e3)
    np.testing.assert_allclose(reloaded.images, original.images, atol=1e-6)
    assert reloaded.mask_alignment == pytest.approx(original.mask_alignment)


def test_only_a_unet_that_should_have_image_32_maps_is_warned_of_the_fallback(get_dummy_components, caplog):
    """The tiny model never has image/32 maps (the demo showed its warning to every user); another UNet is warned."""
    import logging

    from generator import mask_guided_pipeline as module
    from generator.tiny import tiny_mask_guided_pipeline

    module._warn_coarse_attention.cache_clear()
    with caplog.at_level(logging.WARNING, logger=module.__name__):
        assert tiny_mask_guided_pipeline(0).default_attention_resolution(64, 64) == (16, 16)
    assert caplog.records == []
    other = module.MaskGuidedStableDiffusionPipeline(**get_dummy_components(0), requires_safety_checker=False)
    with caplog.at_level(logging.WARNING, logger=module.__name__):
        assert other.default_attention_resolution(64, 64) == (16, 16)
    assert "no cross-attention at 2x2 (image/32)" in caplog.text
    module._warn_coarse_attention.cache_clear()
