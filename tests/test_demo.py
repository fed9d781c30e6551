"""The product's main job end to end: a reduced `panostudy demo` (4 participants, 1 panorama per scene)."""

import hashlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from panostudy.demo import DemoSettings, check_settings, participant_codes
from study.errors import PanostudyError

SCENES = ["vehicle", "street", "indoor", "mountainous"]
SCALES = ["ACR", "VAR", "SSDS", "PCR"]


def _demo(out, *extra):
    return subprocess.run(
        [sys.executable, "-m", "panostudy", "demo", "--out", str(out), "--participants", "4", "--per-scene", "1", *extra],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900,
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    done = _demo(out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_reduced_demo_gives_table1_with_finite_means_and_cis(demo_run):
    out, done = demo_run
    table = pd.read_csv(out / "report" / "table1.csv")
    assert sorted(table["scene"].unique()) == sorted(SCENES)
    assert sorted(table["scale"].unique()) == sorted(SCALES)
    assert len(table) == 16
    assert (table["n"] == 4).all()
    for column in ("mos", "ci_low", "ci_high"):
        assert np.isfinite(table[column]).all(), column
    assert ((table["ci_low"] <= table["mos"]) & (table["mos"] <= table["ci_high"])).all()
    assert table["mos"].between(1, 5).all()
    assert "PLACEHOLDERS" in done.stderr
    assert (out / "report" / "report.html").stat().st_size > 10_000


def test_reduced_demo_recorded_every_participant_answer_and_pose(demo_run):
    from study.export import load_answers, load_poses, load_ssq

    out, _ = demo_run
    answers = load_answers(out / "study.sqlite")
    test = answers[~answers["training"]]
    assert sorted(test["participant"].unique()) == list(participant_codes(4))
    # each participant rates each of the 4 panoramas on all 9 items (ACR 1, VAR 3, SSDS 3, PCR 2), once
    assert len(test) == 4 * 4 * 9
    assert not test.duplicated(["participant", "stimulus", "scale", "item"]).any()
    assert answers["training"].any()
    ssq = load_ssq(out / "study.sqlite")
    assert len(ssq) == 4 * 2 * 16
    poses = load_poses(out / "study.sqlite")
    assert set(poses["participant"]) == set(participant_codes(4)) and len(poses) > 0


def test_rerun_into_the_same_folder_refuses_and_keeps_the_study(demo_run):
    out, _ = demo_run
    before = hashlib.sha256((out / "study.sqlite").read_bytes()).hexdigest()
    again = _demo(out)
    assert again.returncode == 2
    assert "earlier demo" in again.stderr and "--out" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert hashlib.sha256((out / "study.sqlite").read_bytes()).hexdigest() == before


@pytest.mark.parametrize(
    ("settings", "option"),
    [({"participants": 1}, "--participants"), ({"per_scene": 0}, "--per-scene")],
)
def test_bad_demo_settings_name_the_option(tmp_path, settings, option):
    with pytest.raises(PanostudyError, match=option):
        check_settings(DemoSettings(out=tmp_path / "x", **settings))


def test_participant_codes_are_pseudonymous_and_sortable():
    assert participant_codes(3) == ("P01", "P02", "P03")
    assert participant_codes(120)[0] == "P001"


def test_a_real_model_without_stage_2_models_is_refused_before_any_output(tmp_path):
    out = tmp_path / "real"
    done = _demo(out, "--model", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: --model stable-diffusion-v1-5/stable-diffusion-v1-5: stage 2 needs")
    assert len(done.stderr.splitlines()) == 1 and "--diffusion360 DIR" in done.stderr and "--controlnet" in done.stderr
    assert not out.exists()


def test_the_demo_passes_stage_2_models_to_generate_sets_under_its_option_names(tmp_path):
    from panostudy.demo import generate_command

    settings = DemoSettings(out=tmp_path, model="sd15", controlnet="inpaint-cn", panorama_model="sd15-inpainting",
                            diffusion360="weights/d360")  # fmt: skip
    check_settings(settings)
    command = generate_command(settings)
    pairs = dict(zip(command[3:], command[4:]))
    assert command[1:5] == ["-m", "panostudy", "generate", "sets"]
    for option, value in {"--model": "sd15", "--controlnet": "inpaint-cn", "--panorama-model": "sd15-inpainting",
                          "--diffusion360": "weights/d360"}.items():  # fmt: skip
        assert pairs[option] == value
    check_settings(DemoSettings(out=tmp_path, model="sd15", diffusion360="weights/d360"))


def test_a_failing_generator_leaves_its_own_line_as_the_only_one(tmp_path):
    done = _demo(tmp_path / "broken", "--model", str(tmp_path / "no-such-model"), "--controlnet", str(tmp_path / "no-cn"))
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "no-such-model" in done.stderr and done.stderr.startswith("error: ")
