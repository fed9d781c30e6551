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


#: The object each scene's simulated eye is drawn to (the scene spec's first mask label: its subject).
SUBJECTS = {"vehicle": "car", "street": "person", "indoor": "sofa", "mountainous": "mountain"}


def test_reduced_demo_records_gaze_and_the_mask_dwell_table_recovers_the_pull_to_each_subject(demo_run):
    from study.export import load_gaze, load_validation

    out, _ = demo_run
    gaze = load_gaze(out / "study.sqlite")
    assert set(gaze["participant"]) == set(participant_codes(4)) and gaze["valid"].mean() > 0.9
    validation = load_validation(out / "study.sqlite")
    overall = validation[validation["level"] == "overall"]
    # one attempt each; the simulated trackers are off by 0.2-1.0 degrees, within the protocol's 1.5
    assert sorted(overall["participant"]) == list(participant_codes(4)) and (overall["attempt"] == 1).all()
    assert overall["accuracy_deg"].between(0.1, 1.2).all() and not overall["recalibrate"].any()
    dwell = pd.read_csv(out / "report" / "mask_dwell.csv")
    scenes = dwell[dwell["level"] == "scene"]
    assert sorted(scenes["scene"].unique()) == sorted(SCENES)
    for scene, rows in scenes.groupby("scene"):
        top = rows.loc[rows["dwell_share"].idxmax()]
        assert top["object"] == SUBJECTS[scene], rows
        # far above chance (the object's solid-angle share), and above every other object of the scene
        assert top["dwell_ci_low"] > 5 * top["chance_share"]
        assert (rows.loc[rows["object"] != top["object"], "dwell_share"] < top["dwell_ci_low"]).all()
    page = (out / "report" / "report.html").read_text(encoding="utf-8")
    assert "Gaze on the masked objects" in page and "Eye-tracker validation" in page
