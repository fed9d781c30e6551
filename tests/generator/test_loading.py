"""Model loading: fp16 everywhere it is asked for, the fast tokenizer, single-file checkpoints, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import generator.loading
from generator.loading import describe_checkpoint, load_base_components, load_controlnet, read_state_dict
from generator.mask_guided_pipeline import load_mask_guided_pipeline
from generator.panorama_pipeline import load_panorama_pipeline
from generator.tile_refine import load_tile_refiner
from generator.tiny import tiny_controlnet, tiny_mask_guided_pipeline
from panostudy.cli import app
from study.errors import PanostudyError
from tests.generator.checkpoint_files import config_folder, controlnet_to_original, sd_checkpoint, write_checkpoint
from tests.generator.panorama_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

PROMPT = "a red car on an asphalt road under a blue sky"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny model as a diffusers folder, a configs-only folder, full single files and ControlNet files."""
    from diffusers import ControlNetModel

    root = tmp_path_factory.mktemp("checkpoints")
    pipe = tiny_mask_guided_pipeline(seed=0)
    pipe.save_pretrained(root / "tiny-sd")
    parts = {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder}
    controlnet = tiny_controlnet(0, conditioning_channels=4)
    controlnet.save_pretrained(root / "tiny-controlnet")
    # A ControlNet with the standard four-level conditioning embedding, as every released ControlNet has.
    torch.manual_seed(5)
    standard = ControlNetModel.from_unet(pipe.unet, conditioning_channels=3)
    return {
        "pipe": pipe,
        "folder": root / "tiny-sd",
        "configs": config_folder(pipe, root / "tiny-configs"),
        "safetensors": write_checkpoint(sd_checkpoint(parts), root / "tiny.safetensors"),
        "ckpt": write_checkpoint(sd_checkpoint(parts), root / "tiny.ckpt"),
        "controlnet": controlnet,
        "controlnet_folder": root / "tiny-controlnet",
        "controlnet_file": write_checkpoint(controlnet.state_dict(), root / "controlnet.safetensors"),
        "standard": standard,
        "standard_file": write_checkpoint(controlnet_to_original(standard), root / "control_tile.pth"),
    }


def _same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key].to(a[key].dtype)) for key in a)


def _modules(pipeline) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in pipeline.components.items() if isinstance(module, torch.nn.Module)}


# --- fp16 --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "load",
    [
        pytest.param(lambda f: load_mask_guided_pipeline("tiny", fp16=True), id="stage1-tiny"),
        pytest.param(lambda f: load_mask_guided_pipeline(str(f["folder"]), fp16=True), id="stage1-folder"),
        pytest.param(
            lambda f: load_mask_guided_pipeline(str(f["safetensors"]), fp16=True, config=str(f["configs"])),
            id="stage1-single-file",
        ),
        pytest.param(
            lambda f: load_panorama_pipeline(str(f["folder"]), str(f["controlnet_folder"]), fp16=True), id="stage2-folders"
        ),
        pytest.param(
            lambda f: load_panorama_pipeline(
                str(f["ckpt"]), str(f["controlnet_file"]), fp16=True, config=str(f["configs"])
            ),
            id="stage2-single-files",
        ),
        pytest.param(lambda f: load_tile_refiner("tiny", "tiny", fp16=True), id="refiner-tiny"),
    ],
)
def test_fp16_means_every_module_is_fp16(files, monkeypatch, load):
    # Loading needs no GPU; the CUDA check is for running, so it is lifted for this test only.
    monkeypatch.setattr(generator.loading, "check_device", lambda *args: None)
    pipeline = load(files)
    dtypes = {name: {p.dtype for p in module.parameters()} for name, module in _modules(pipeline).items()}
    assert {"unet", "vae", "text_encoder"} <= dtypes.keys()
    assert all(found == {torch.float16} for found in dtypes.values()), dtypes


def test_the_tokenizer_is_the_fast_one_with_offsets(files):
    for components in (load_base_components(str(files["folder"])), files["pipe"].components):
        tokenizer = components["tokenizer"]
        assert tokenizer.is_fast
        assert tokenizer(PROMPT, return_offsets_mapping=True)["offset_mapping"][1] == (0, 1)


# --- single files ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["safetensors", "ckpt"])
def test_a_single_file_gives_back_the_exact_weights_and_images(files, kind):
    parts = load_base_components(str(files[kind]), config=str(files["configs"]))
    for name in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(files["pipe"], name), parts[name]), name
    assert parts["tokenizer"].is_fast

    loaded = load_mask_guided_pipeline(str(files[kind]), config=str(files["configs"]))
    loaded.set_progress_bar_config(disable=True)
    files["pipe"].set_progress_bar_config(disable=True)
    masks = {"car": np.zeros((64, 64), bool)}
    masks["car"][32:, 8:40] = True
    arguments = dict(prompt=PROMPT, objects={"car": "a red car"}, masks=masks, num_inference_steps=2, output_type="np")
    reference = files["pipe"](**arguments, generator=torch.Generator().manual_seed(1))
    again = loaded(**arguments, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(again.images, reference.images, atol=1e-6)


def test_controlnet_files_in_both_layouts_load_exactly(files):
    unet_config = files["pipe"].unet.config
    diffusers_layout = load_controlnet(str(files["controlnet_file"]), dtype=torch.float32, unet_config=unet_config)
    assert _same_weights(files["controlnet"], diffusers_layout)
    assert diffusers_layout.config.conditioning_channels == 4
    original_layout = load_controlnet(str(files["standard_file"]), dtype=torch.float32, unet_config=unet_config)
    assert _same_weights(files["standard"], original_layout)
    assert tuple(original_layout.config.conditioning_embedding_out_channels) == (16, 32, 96, 256)
    assert describe_checkpoint(read_state_dict(files["standard_file"], "--sr-control")).conditioning_channels == 3


def test_detection_names_the_architecture_and_asks_for_configs_it_cannot_find(files, tmp_path):
    info = describe_checkpoint(read_state_dict(files["safetensors"], "--model"))
    assert (info.kind, info.text_width, info.in_channels) == ("sd", 32, 4)
    # A real SD 1.x file is detected as such; its configs must then be on disk (nothing is downloaded).
    sd15_like = generator.loading.CheckpointInfo("sd", text_width=768, in_channels=4, model_channels=320)
    assert sd15_like.architecture() == "sd15"
    with pytest.raises(PanostudyError, match=r"is an SD 1.x checkpoint; its configs come from 'stable-diffusion-v1-5/"
                                             r"stable-diffusion-v1-5' is not a local folder and not in the local"):
        generator.loading.resolve_config_source(None, sd15_like, files["safetensors"], "--model")


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_files_that_are_no_checkpoint_or_do_not_match_are_refused_in_one_line(files, tmp_path):
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    lora = write_checkpoint({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 4)}, tmp_path / "style.safetensors")
    configs = str(files["configs"])
    cases = [
        (lambda: load_base_components(str(garbage), config=configs), "model.safetensors: not a checkpoint"),
        (lambda: load_base_components(str(text), config=configs), "notes.ckpt: not a checkpoint"),
        (lambda: load_base_components(str(lora), config=configs), "is a LoRA"),
        (lambda: load_base_components(str(tmp_path / "missing.safetensors")), "no such file"),
        (lambda: load_base_components(str(files["controlnet_file"]), config=configs), "is a ControlNet"),
        (lambda: load_controlnet(str(files["safetensors"]), dtype=torch.float32, unet_config=files["pipe"].unet.config),
         "is a full Stable Diffusion checkpoint, not a ControlNet"),
        (lambda: load_base_components(str(files["folder"]), config=configs), "only a single-file --model needs"),
    ]  # fmt: skip
    for load, message in cases:
        with pytest.raises(PanostudyError, match=message) as caught:
            load()
        _one_line(caught)


def test_a_config_or_base_of_another_architecture_is_a_mismatch(files, tmp_path):
    import json
    import shutil

    other = tmp_path / "wide-configs"
    shutil.copytree(files["configs"], other)
    unet_config = json.loads((other / "unet" / "config.json").read_text())
    (other / "unet" / "config.json").write_text(json.dumps({**unet_config, "cross_attention_dim": 768}))
    with pytest.raises(PanostudyError, match="does not match the configs of .*text width 32.* 768") as caught:
        load_base_components(str(files["safetensors"]), config=str(other))
    assert "--model-config" in _one_line(caught)
    wide_base = {**files["pipe"].unet.config, "cross_attention_dim": 1024}
    with pytest.raises(PanostudyError, match="trained for a base with text width 32") as caught:
        load_controlnet(str(files["controlnet_file"]), dtype=torch.float32, unet_config=wide_base, option="--sr-control")
    assert _one_line(caught).startswith("--sr-control")


def test_generate_image_runs_from_a_single_file(files, tmp_path):
    out = tmp_path / "from-file.png"
    result = CliRunner().invoke(
        app, ["generate", "image", "--scene", "data/scenes/vehicle.toml", "--model", str(files["safetensors"]),
              "--model-config", str(files["configs"]), "--steps", "2", "--size", "64", "--out", str(out)],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.with_suffix(".json").is_file()


def test_generate_image_refuses_a_bad_file_before_writing(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 64)
    result = CliRunner().invoke(
        app, ["generate", "image", "--scene", "data/scenes/vehicle.toml", "--model", str(bad), "--out", str(tmp_path / "x.png")]
    )
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "broken.safetensors: not a checkpoint" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.safetensors"]
