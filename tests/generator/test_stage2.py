"""Stage-2 presets: Diffusion360's chain in its published order and settings, preset choice, prompt emphasis,
the --diffusion360 folder from the command line, progress estimates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from generator.panorama_pipeline import PanoramaSettings, load_panorama_pipeline
from generator.prompt_weights import parse_weights, weighted_embeddings
from generator.stage2 import (
    DIFFUSION360_NEGATIVE,
    DIFFUSION360_SUFFIX,
    PRESETS,
    Refine,
    Stage2Models,
    Upscale,
    check_chain,
    choose_preset,
    customise,
    run_stage2,
)
from generator.tiny import tiny_controlnet, tiny_mask_guided_pipeline, tiny_rrdb_state_dict
from panostudy.cli import app
from study.errors import PanostudyError
from tests.generator.panorama_fixtures import one_torch_thread, smooth_image  # noqa: F401 (autouse fixture)


def test_the_diffusion360_preset_has_the_published_settings():
    preset = PRESETS["diffusion360"]
    completion = preset.completion
    assert (completion.width, completion.height, completion.steps, completion.guidance_scale) == (1024, 512, 20, 7.0)
    assert completion.scheduler == "euler-ancestral" and completion.init_from_control and not completion.keep_known
    assert completion.prompt_prefix == "<360panorama>, "
    assert completion.prompt_suffix == DIFFUSION360_SUFFIX == (
        ", photorealistic, trend on artstation, ((best quality)), ((ultra high res))"
    )
    assert completion.negative_prompt == DIFFUSION360_NEGATIVE and completion.weighted_prompt
    first, upscale, last = preset.chain
    assert isinstance(first, Refine) and isinstance(upscale, Upscale) and isinstance(last, Refine)
    for step, guidance in ((first, 15.0), (last, 17.0)):
        s = step.settings
        assert (s.strength, s.steps, s.scheduler, s.guidance_scale, s.tile_size, s.tile_overlap) == (
            0.8, 7, "unipc", guidance, 768, 384)
    assert (first.scale, upscale.scale, last.scale, last.optional) == (3.0, 6.0, 6.0, True)
    assert preset.final() == (6144, 3072)


class _Recorder:
    """Stand-ins for the completion, the refiner and Real-ESRGAN that record what they are asked to do."""

    def __init__(self):
        self.calls = []
        self.scale = 2
        self.model = torch.nn.Identity()

    def size_multiple(self):
        return 8

    def __call__(self, image, prompt=None, settings=None, seed=0, progress=None):  # completion and refiner
        from generator.panorama_pipeline import PanoramaResult
        from generator.projection import front_face_canvas
        from generator.tile_refine import RefinementResult

        if isinstance(settings, PanoramaSettings):
            self.calls.append(("completion", prompt, settings.width))
            canvas = front_face_canvas(image, settings.height, settings.width)
            return PanoramaResult(image=smooth_image(settings.height, settings.width), canvas=canvas)
        self.calls.append(("refine", image.shape[1], settings.guidance_scale, settings.tile_size, prompt))
        return RefinementResult(image=image)


def test_run_stage2_follows_the_diffusion360_order_and_sizes(monkeypatch):
    import generator.upscale

    recorder = _Recorder()

    def fake_sr(image, model, tile, overlap, progress=None):
        recorder.calls.append(("esrgan", image.shape[1]))
        return np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)

    monkeypatch.setattr(generator.upscale, "super_resolve", fake_sr)
    preset = customise(PRESETS["diffusion360"], width=128, height=64)
    models = Stage2Models(completion=recorder, sr_model=recorder, refiner=recorder)
    result = run_stage2(smooth_image(), "an office", preset, models)
    assert recorder.calls == [
        ("completion", "an office", 128),
        ("refine", 384, 15.0, 96, "an office" + DIFFUSION360_SUFFIX),  # 3x, tiles 768 px scaled to 96
        ("esrgan", 384),  # then Real-ESRGAN x2 ...
        ("refine", 768, 17.0, 96, "an office" + DIFFUSION360_SUFFIX),  # ... and the optional pass at 6x
    ]
    assert result.image.shape == (384, 768, 3)
    assert [step["step"] for step in result.record["chain"]] == ["tile_refine", "super_resolution", "tile_refine"]
    assert result.record["prompt"] == "<360panorama>, an office" + DIFFUSION360_SUFFIX

    recorder.calls.clear()
    run_stage2(smooth_image(), "an office", preset, models, final_pass=False, size=(512, 256))
    assert [call[0] for call in recorder.calls] == ["completion", "refine", "esrgan"]
    recorder.calls.clear()
    assert run_stage2(smooth_image(), "an office", preset, models, sr=False).image.shape == (64, 128, 3)
    assert [call[0] for call in recorder.calls] == ["completion"]


def test_the_default_preset_follows_the_models_and_the_chain_needs_its_models():
    assert choose_preset("auto", diffusion360_folder=True, conditioning_channels=3, tiny=False).name == "diffusion360"
    assert choose_preset("auto", diffusion360_folder=False, conditioning_channels=4, tiny=False).name == "diffusion360"
    assert choose_preset("auto", diffusion360_folder=False, conditioning_channels=4, tiny=True).name == "panostudy"
    assert choose_preset("auto", diffusion360_folder=False, conditioning_channels=3, tiny=False).name == "panostudy"
    with pytest.raises(PanostudyError, match="--preset sdxl: use one of auto, diffusion360, panostudy"):
        choose_preset("sdxl", diffusion360_folder=False, conditioning_channels=4, tiny=True)
    with pytest.raises(PanostudyError, match="needs --sr-base and --sr-control .* and --sr-weights"):
        check_chain(PRESETS["diffusion360"], sr=True, has_sr_weights=False, has_refiner=False)
    check_chain(PRESETS["diffusion360"], sr=False, has_sr_weights=False, has_refiner=False)
    check_chain(PRESETS["panostudy"], sr=True, has_sr_weights=False, has_refiner=False)


def test_completion_uses_the_preset_scheduler_and_starts_from_the_control_image():
    from diffusers import EulerAncestralDiscreteScheduler

    pipe = load_panorama_pipeline("tiny", None)
    tiny = dict(height=64, width=128, steps=3, guidance_scale=2.0)
    euler = PanoramaSettings(**tiny, scheduler="euler-ancestral", keep_known=False)
    from_noise = pipe(smooth_image(), "a room", euler, seed=1).image
    assert type(pipe.scheduler) is EulerAncestralDiscreteScheduler
    from_control = pipe(smooth_image(), "a room", PanoramaSettings(**tiny, scheduler="euler-ancestral",
                                                                  keep_known=False, init_from_control=True), seed=1).image
    assert np.abs(from_control.astype(int) - from_noise).mean() > 1  # the start image enters the result
    again = pipe(smooth_image(), "a room", PanoramaSettings(**tiny, scheduler="euler-ancestral", keep_known=False,
                                                           init_from_control=True), seed=1).image  # fmt: skip
    assert (again == from_control).all()


def test_emphasis_parsing_and_embeddings():
    assert parse_weights("a ((red)) car, [blurry], (sky:1.5)") == [
        ("a ", 1.0), ("red", 1.21), (" car, ", 1.0), ("blurry", round(1 / 1.1, 6)), (", ", 1.0), ("sky", 1.5)]
    pipe = load_panorama_pipeline("tiny", None)
    with torch.no_grad():
        plain = pipe.encode_prompt("a red car", "blurry", guided=True)
        unweighted = weighted_embeddings(pipe.tokenizer, pipe.text_encoder, ["blurry", "a red car"])
        emphasised = weighted_embeddings(pipe.tokenizer, pipe.text_encoder, ["a ((red)) car"])
    torch.testing.assert_close(unweighted, plain)  # no brackets: exactly the plain encoding
    red = 2  # start token, "a", "red"
    ratio = emphasised[0, red] / plain[1, red]
    torch.testing.assert_close(ratio, torch.full_like(ratio, 1.21))  # the emphasised token only, x1.1 per pair
    torch.testing.assert_close(emphasised[0, 1], plain[1, 1])


@pytest.fixture(scope="module")
def diffusion360_folder(tmp_path_factory):
    """A folder laid out like Diffusion360's download, holding tiny random-weight models."""
    root = tmp_path_factory.mktemp("sd-t2i-360panoimage")
    tiny_mask_guided_pipeline(0).save_pretrained(root / "sr-base")
    tiny_controlnet(0, 4).save_pretrained(root / "sd-i2p")
    tiny_controlnet(1, 3).save_pretrained(root / "sr-control")
    torch.save(tiny_rrdb_state_dict(scale=2), root / "RealESRGAN_x2plus.pth")
    return root


def test_generate_panorama_with_the_diffusion360_folder_runs_its_chain(tmp_path, diffusion360_folder):
    source = tmp_path / "front.png"
    Image.fromarray(smooth_image(48, 48)).save(source)
    out = tmp_path / "pano.png"
    result = CliRunner().invoke(
        app, ["generate", "panorama", str(source), "--out", str(out), "--diffusion360", str(diffusion360_folder),
              "--panorama-size", "64x32", "--steps", "3", "--no-final-pass", "--prompt", "an office"],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    assert "preset diffusion360" in result.output and "lower is better" in result.output
    sidecar = json.loads(out.with_suffix(".json").read_text())
    stage2 = sidecar["stage2"]
    assert stage2["preset"] == "diffusion360" and stage2["settings"]["scheduler"] == "euler-ancestral"
    assert stage2["settings"]["steps"] == 3 and stage2["settings"]["init_from_control"] is True
    assert stage2["prompt"] == "<360panorama>, an office" + DIFFUSION360_SUFFIX
    assert [(step["step"], step["size"]) for step in stage2["chain"]] == [
        ("tile_refine", [192, 96]), ("super_resolution", [384, 192])]
    assert stage2["chain"][0]["settings"]["scheduler"] == "unipc" and stage2["chain"][1]["scale"] == 2
    assert sidecar["models"]["controlnet"]["id"].endswith("sd-i2p")
    assert Image.open(out).size == (384, 192)


def test_a_diffusion360_folder_without_its_files_is_refused_before_writing(tmp_path):
    folder = tmp_path / "incomplete"
    (folder / "sd-i2p").mkdir(parents=True)
    source = tmp_path / "front.png"
    Image.fromarray(smooth_image(16, 16)).save(source)
    result = CliRunner().invoke(
        app, ["generate", "panorama", str(source), "--out", str(tmp_path / "p.png"), "--diffusion360", str(folder)]
    )
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "lacks sr-base" in result.output and "RealESRGAN_x2plus.pth" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["front.png", "incomplete"]


def test_the_estimate_leaves_out_the_first_steps_warm_up():
    from panostudy.cli._progress import estimate_remaining

    # start at 100 s; step 1 ends at 156 s (warm-up), then 1 s a step
    assert estimate_remaining([100.0], 20) is None
    assert estimate_remaining([100.0, 156.0], 20) is None  # the first step alone says nothing
    assert estimate_remaining([100.0, 156.0, 157.0], 20) == 18.0
    assert estimate_remaining([100.0, 156.0, 157.0, 159.0], 20) == 17 * 1.5  # follows the steps as they come
    assert estimate_remaining([100.0, 156.0, 157.0], 2) == 0.0


def test_a_long_run_gets_one_estimate_from_its_steps_after_the_first(monkeypatch, capsys):
    import panostudy.cli._progress as progress_module

    now = [100.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    with progress_module.GenerationProgress("cpu", hint="--preview is quicker.") as progress:
        for done, at in enumerate([100.0, 156.0, 186.0, 216.0]):
            now[0] = at
            progress("stage 1 street", done, 50)
        progress("stage 1 street", 0, 50)  # the next panorama's stage 1: no second estimate
        for done, at in enumerate([300.0, 301.0, 302.0], start=1):
            now[0] = at
            progress("stage 1 street", done, 50)
    assert progress.estimates == {"stage 1 street": 86.0 + 48 * 30.0}
    err = capsys.readouterr().err.replace("\n", " ")
    assert "30 s a step after the first (which took 56 s with the warm-up); about 24 min more on cpu." in err
    assert "--preview is quicker." in err and err.count("a step after the first") == 1


def test_a_short_run_gets_no_estimate_line_even_after_a_slow_first_step(monkeypatch, capsys):
    import panostudy.cli._progress as progress_module

    now = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    with progress_module.GenerationProgress("cpu") as progress:
        for done, at in enumerate([0.0, 56.0, 57.0, 58.0]):  # generate image: 56 s warm-up, then 1 s a step
            now[0] = at
            progress("stage 1", done, 20)
    assert progress.estimates["stage 1"] == 57.0 + 18.0
    assert "a step after the first" not in capsys.readouterr().err