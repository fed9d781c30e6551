"""Scene sets on the tiny model: manifest, GPano, resumability, sharding, CLI, out-of-memory message."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from generator.batch import GeneratorMemoryError, generate_sets
from generator.manifest import merge_manifests, read_manifest_lines
from generator.panorama_pipeline import PanoramaSettings
from generator.xmp import read_gpano
from panostudy.cli import app
from study.errors import PanostudyError
from tests.generator.panorama_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)
from tests.generator.test_upscale import _weights

ROOT = Path(__file__).resolve().parents[2]
#: CLI options of a fast tiny set: 1 panorama per scene, 128×64 completion, ×2 SR to 256×128.
TINY_SET = [
    "--per-scene", "1", "--model", "tiny", "--panorama-size", "128x64", "--size", "256x128", "--steps", "2",
    "--stage1-size", "64", "--stage1-steps", "2", "--sr-tile", "32",
]  # fmt: skip


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two of the shipped scene specs (their mask paths ``../masks/...`` resolve through a link)."""
    root = tmp_path_factory.mktemp("data")
    (root / "masks").symlink_to(ROOT / "data" / "masks")
    (root / "scenes").mkdir()
    for name in ("street", "vehicle"):
        (root / "scenes" / f"{name}.toml").write_text((ROOT / "data" / "scenes" / f"{name}.toml").read_text())
    return root / "scenes"


@pytest.fixture(scope="module")
def sr_weights(tmp_path_factory):
    return _weights(tmp_path_factory.mktemp("sr") / "RealESRGAN_x2plus.pth", 2)


def _one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, scenes, sr_weights):
    """The tiny set made without --model (the default is the tiny model, as in generate image and panorama)."""
    out = tmp_path_factory.mktemp("set1")
    without_model = [option for option in TINY_SET if option not in ("--model", "tiny")]
    result = CliRunner().invoke(
        app, ["generate", "sets", "--scenes", str(scenes), "--out", str(out), "--sr-weights", str(sr_weights), *without_model]
    )
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def one_process_set(one_process_run):
    return one_process_run[0]


def test_sets_without_model_use_the_tiny_model_and_say_so_first(one_process_run):
    from panostudy.cli._generate_stage2 import PLACEHOLDER_NOTE

    out, output = one_process_run
    assert _one_line(output).startswith(_one_line(PLACEHOLDER_NOTE))  # the note, before any bar
    assert {entry["stage1"]["model"]["id"] for entry in read_manifest_lines(out / "manifest.jsonl")} == {"tiny"}
    assert "rank 0/1" not in output and "made 2, skipped 0 already finished" in output


def _images(out: Path) -> dict[str, np.ndarray]:
    return {entry["id"]: np.asarray(Image.open(out / entry["path"])) for entry in read_manifest_lines(out / "manifest.jsonl")}


def test_a_set_has_one_2_to_1_gpano_panorama_per_scene_and_a_full_manifest(one_process_set):
    entries = read_manifest_lines(one_process_set / "manifest.jsonl")
    assert [entry["scene"] for entry in entries] == ["street", "vehicle"]
    assert [entry["index"] for entry in entries] == [0, 1]
    for entry in entries:
        path = one_process_set / entry["path"]
        with Image.open(path) as image:
            assert image.size == (256, 128)
        assert read_gpano(path)["ProjectionType"] == "equirectangular"
        assert (one_process_set / entry["front_path"]).is_file()
        assert len(entry["masks"]["sha256"]) == 64 and entry["masks"]["labels"]
        assert entry["seeds"]["stage1"] == entry["seeds"]["stage2"]
        assert set(entry["stage1"]["mask_alignment"]) == set(entry["masks"]["labels"])
        assert entry["stage2"]["settings"]["circular_blending"] is True
        assert entry["stage2"]["preset"] == "panostudy" and entry["stage2"]["settings"]["scheduler"] == "ddim"
        assert [step["step"] for step in entry["super_resolution"]["chain"]] == ["super_resolution"]
        assert entry["stage1"]["guide_tokens"] == "phrase" and entry["masks"]["fit"] == "crop"
        assert set(entry["stage1"]["mask_area"]) == set(entry["masks"]["labels"]) and entry["preview"] is False
        assert entry["stage2"]["conditioning_channels"] == 4
        assert entry["super_resolution"]["scale"] == 2
        assert len(next(iter(entry["super_resolution"]["weights"]["files"].values()))) == 64
        assert {"discontinuity", "wrap_l1_ratio", "pole_top", "pole_bottom"} <= set(entry["seams"])
        assert {"stage1", "stage2_completion", "stage2_decode", "super_resolution"} <= set(entry["timings"])


def test_the_manifest_is_a_stimulus_list(one_process_set):
    from study.stimuli import read_manifest

    candidates = read_manifest(one_process_set / "manifest.jsonl")
    assert {c.scene for c in candidates} == {"street", "vehicle"}
    assert all(c.path.is_file() for c in candidates)


def test_a_rerun_skips_finished_items_and_redoes_a_missing_one(tmp_path, scenes, one_process_set, sr_weights):
    out = tmp_path / "set"
    kwargs = dict(
        size=(256, 128), sr_weights=sr_weights, stage1_size=64, stage1_steps=2, sr_tile=32, rank=0, world_size=1,
        settings=PanoramaSettings(height=64, width=128, steps=2),
    )
    first = generate_sets(scenes, 1, "tiny", out, **kwargs)
    assert len(first.written) == 2 and first.skipped == 0
    again = generate_sets(scenes, 1, "tiny", out, **kwargs)
    assert again.written == [] and again.skipped == 2
    (out / first.written[1]["path"]).unlink()
    repaired = generate_sets(scenes, 1, "tiny", out, **kwargs)
    assert [entry["id"] for entry in repaired.written] == [first.written[1]["id"]]
    assert len(read_manifest_lines(out / "manifest.jsonl")) == 2
    # Same seeds, same images as the CLI run with the same parameters.
    reference, rerun = _images(one_process_set), _images(out)
    assert reference.keys() == rerun.keys()
    assert all(np.abs(reference[k].astype(int) - rerun[k]).max() <= 2 for k in reference)


def test_explicit_ranks_make_the_same_set_as_one_process(tmp_path, scenes, one_process_set, sr_weights):
    out = tmp_path / "sharded"
    for rank in (0, 1):
        result = CliRunner().invoke(
            app, ["generate", "sets", "--scenes", str(scenes), "--out", str(out), "--sr-weights", str(sr_weights),
                  *TINY_SET, "--rank", str(rank), "--world-size", "2"],  # fmt: skip
        )
        assert result.exit_code == 0, result.output
    ranks = {rank: read_manifest_lines(out / f"manifest.rank{rank}.jsonl") for rank in (0, 1)}
    assert [e["index"] for e in ranks[0]] == [0] and [e["index"] for e in ranks[1]] == [1]
    merge_manifests(out)  # the last process merged already; merging again is harmless
    sharded = read_manifest_lines(out / "manifest.jsonl")
    single = read_manifest_lines(one_process_set / "manifest.jsonl")
    keys = ("id", "index", "path", "scene", "layout", "seeds", "prompt")
    assert [{k: e[k] for k in keys} for e in sharded] == [{k: e[k] for k in keys} for e in single]
    reference, shard_images = _images(one_process_set), _images(out)
    assert all(np.abs(reference[k].astype(int) - shard_images[k]).max() <= 2 for k in reference)


def test_preview_makes_small_quick_panoramas_without_super_resolution(tmp_path, scenes, sr_weights):
    out = tmp_path / "preview"
    result = CliRunner().invoke(
        app, ["generate", "sets", "--scenes", str(scenes), "--out", str(out), "--sr-weights", str(sr_weights),
              *TINY_SET[:-4], "--preview", "--guide-tokens", "head"],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    assert "mask alignment = mean share" in result.output and "lower is better" in result.output
    for entry in read_manifest_lines(out / "manifest.jsonl"):
        assert entry["preview"] is True and entry["super_resolution"]["chain"] == []
        assert entry["stage2"]["settings"]["steps"] == 2 and entry["stage1"]["guide_tokens"] == "head"
        with Image.open(out / entry["path"]) as image:
            assert image.size == (256, 128)  # no super-resolution in a preview: the completion resized to --size


def test_bad_arguments_fail_in_one_line_before_writing(tmp_path, scenes):
    runner = CliRunner()
    out = tmp_path / "never"
    result = runner.invoke(app, ["generate", "sets", "--scenes", str(tmp_path / "nope"), "--out", str(out), *TINY_SET])
    assert result.exit_code == 2 and "no such folder" in result.output
    result = runner.invoke(
        app, ["generate", "sets", "--scenes", str(scenes), "--out", str(out), *TINY_SET, "--rank", "2", "--world-size", "2"]
    )
    assert result.exit_code == 2 and "rank" in result.output
    result = runner.invoke(app, ["generate", "sets", "--scenes", str(scenes), "--out", str(out), *TINY_SET[:-2], "--size", "300x100"])
    assert result.exit_code == 2 and "--size" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["image", "--scene", "data/scenes/vehicle.toml", "--size", "100"], "--size 100: must be a multiple of 8"),
        (["panorama", "FRONT", "--panorama-size", "300x100"], "--panorama-size 300x100: must be 2:1"),
        (["panorama", "FRONT", "--panorama-size", "132x66"], "panorama size 132x66: must be 2:1 with the height"),
        (["sets", "--scenes", "SCENES", "--per-scene", "1", "--panorama-size", "132x66"], "panorama size 132x66"),
        (["sets", "--scenes", "SCENES", "--per-scene", "1", "--model", "stable-diffusion-v1-5/stable-diffusion-v1-5"],
         "--controlnet: --model 'stable-diffusion-v1-5/stable-diffusion-v1-5' needs a ControlNet"),
    ],
    ids=["image-size", "panorama-size-option", "panorama-size-model", "sets-size-model", "sets-controlnet"],
)
def test_bad_input_is_one_line_before_any_note_or_bar(tmp_path, scenes, command, expected):
    """No placeholder note, bar or blank line comes before the error: every option is checked first."""
    source = tmp_path / "front.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(source)
    out = tmp_path / ("out" if command[0] == "sets" else "out.png")
    command = [{"FRONT": str(source), "SCENES": str(scenes)}.get(part, part) for part in command]
    result = CliRunner().invoke(app, ["generate", *command, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert expected in _one_line(result.output)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["front.png"]


def test_out_of_memory_names_the_options_that_cut_memory(tmp_path, scenes, monkeypatch):
    import generator.batch

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(generator.batch, "_make_item", exhausted)
    with pytest.raises(GeneratorMemoryError, match="--fp16.*--cpu-offload.*--vae-tiling") as caught:
        generate_sets(scenes, 1, "tiny", tmp_path / "oom", rank=0, world_size=1, stage1_size=64)
    assert isinstance(caught.value, PanostudyError) and "street/" in str(caught.value)


def test_panorama_command_writes_a_gpano_png(tmp_path):
    source = tmp_path / "front.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(source)
    out = tmp_path / "pano.jpg"
    result = CliRunner().invoke(
        app, ["generate", "panorama", str(source), "--out", str(out), "--panorama-size", "128x64", "--size", "256x128",
              "--steps", "2"],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    from panostudy.cli._generate_stage2 import PLACEHOLDER_NOTE

    assert _one_line(result.output).startswith(_one_line(PLACEHOLDER_NOTE))  # the same note as generate image/sets
    assert read_gpano(out)["FullPanoWidthPixels"] == "256"
    assert "lower is better" in result.output and "final 256x128: Discontinuity Score" in result.output
    assert json.loads(json.dumps(read_gpano(out)))  # plain strings, serialisable
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["stage2"]["preset"] == "panostudy" and sidecar["stage2"]["settings"]["steps"] == 2
    assert sidecar["seams"]["discontinuity"] == pytest.approx(float(result.output.split("Discontinuity Score ")[1][:4]), abs=0.006)


def test_accelerate_process_group_shards_and_merges_once(tmp_path, scenes, one_process_set, sr_weights):
    """Under a launcher (torchrun, which ``accelerate launch --multi_gpu`` also uses), rank and world size come
    from accelerate's PartialState and the main process merges after a barrier."""
    out = tmp_path / "launched"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "panostudy", "generate", "sets", "--scenes", str(scenes), "--out", str(out),
               "--sr-weights", str(sr_weights), *TINY_SET]  # fmt: skip
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "rank 0/2" in finished.stdout and "rank 1/2" in finished.stdout
    assert [e["index"] for e in read_manifest_lines(out / "manifest.rank1.jsonl")] == [1]
    merged = read_manifest_lines(out / "manifest.jsonl")
    assert [e["id"] for e in merged] == [e["id"] for e in read_manifest_lines(one_process_set / "manifest.jsonl")]
    # Two separate processes (one torch thread each) reproduce the one-process images.
    reference, launched = _images(one_process_set), _images(out)
    assert all(np.abs(reference[k].astype(int) - launched[k]).max() <= 2 for k in reference)


def test_the_generators_output_folder_imports_through_its_manifest(tmp_path, one_process_set):
    """`study import-stimuli out/stimuli/` on a set: the panoramas of its manifest, not the stage-1 *_front.png."""
    db = tmp_path / "study.sqlite"
    runner = CliRunner()
    assert runner.invoke(app, ["study", "init", "--db", str(db), "--protocol", str(ROOT / "protocols" / "dong2025.toml")]).exit_code == 0
    assert list(one_process_set.rglob("*_front.png"))  # what the folder import failed on ("64x64 is not 2:1")
    result = runner.invoke(app, ["study", "import-stimuli", "--db", str(db), str(one_process_set)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("read the generator's manifest ")  # no empty line first
    assert "imported 2 stimuli (street: 1, vehicle: 1)" in _one_line(result.output)
    without_manifest = runner.invoke(app, ["study", "import-stimuli", "--db", str(db), str(one_process_set / "street"),
                                           "--scene", "street"])  # fmt: skip
    assert without_manifest.exit_code == 2 and without_manifest.output.startswith("error: ")  # no empty line first
    assert without_manifest.output.count("\n") == 1 and "_front.png: 64x64 is not 2:1" in without_manifest.output


def test_the_set_summary_cuts_no_name_at_80_columns(capsys):
    from types import SimpleNamespace

    from panostudy.cli._console import console
    from panostudy.cli._generate_stage2 import _print_set

    def entry(name):
        return {"id": name, "stage2": {"preset": "diffusion360"}, "stage1": {"mask_alignment": {"a": 0.5},
                "mask_area": {"a": 0.2}}, "seams": {"discontinuity": 0.4}, "seams_before_sr": {"discontinuity": 0.6}}  # fmt: skip

    names = ["mountainous/mountainous_a/s41", "vehicle/vehicle_a/s11"]
    width = console.width
    console.width = 80
    try:
        _print_set(SimpleNamespace(rank=0, world_size=1, written=[entry(n) for n in names], skipped=0, manifest="m"))
    finally:
        console.width = width
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()]
    assert "…" not in out and [row[:2] for row in rows if row[0] in names] == [[name, "diffusion360"] for name in names]
    assert out.startswith("made 2, skipped 0 already finished")  # no "rank 0/1" outside a sharded run
