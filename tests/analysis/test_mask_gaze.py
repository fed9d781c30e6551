"""Gaze on the masked objects: masks projected with the generator's projection, dwell against chance."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.fixations import detect_fixations
from analysis.mask_gaze import DWELL_COLUMNS, mask_dwell, project_masks, solid_angle_share, stimulus_masks, trial_dwell
from generator.manifest import file_sha256
from generator.projection import front_face_canvas
from study.errors import AnalysisError
from study.scanpath import TargetRegion, ViewingModel, trial_gaze
from study.sphere import pixel_centres

ROOT = Path(__file__).resolve().parents[2]
MASK = "data/masks/cityscapes/vehicle_a_gtFine_labelIds.png"


def entry(**masks) -> dict:
    """A manifest line as 'panostudy generate sets' writes it, for the shipped vehicle_a layout."""
    info = {"format": "cityscapes", "path": MASK, "image": None, "legend": None,
            "sha256": file_sha256(ROOT / MASK), "labels": ["car", "road", "building", "sky"], **masks}
    return {"id": "vehicle-0", "layout": "vehicle_a", "masks": info, "stage1": {"height": 512, "width": 512}}


def test_a_mask_of_the_whole_stage1_image_covers_the_front_faces_solid_angle():
    full = project_masks({"all": np.ones((512, 512), dtype=bool)}, 512, 1024)["all"]
    # a cube face is a sixth of the sphere; what remains is py360convert's equirect grid (linspace over
    # [−π, π], up to half a pixel off the image's pixel centres), which shrinks the footprint by ≤ 0.2 %
    assert solid_angle_share(full) == pytest.approx(1 / 6, rel=2e-3)
    finer = project_masks({"all": np.ones((512, 512), dtype=bool)}, 1024, 2048)["all"]
    assert abs(solid_angle_share(finer) - 1 / 6) <= abs(solid_angle_share(full) - 1 / 6)
    # it is the generator's own footprint: every pixel the generator knows from the stage-1 image is on it,
    # and it extends at most one pixel beyond
    known = front_face_canvas(np.full((512, 512, 3), 255, dtype=np.uint8), 512, 1024).known
    assert not (known & ~full).any()
    grown = known | np.roll(known, 1, 0) | np.roll(known, -1, 0) | np.roll(known, 1, 1) | np.roll(known, -1, 1)
    assert not (full & ~grown).any()


def test_masks_keep_their_place_and_orientation_on_the_front_face():
    quadrant = np.zeros((512, 512), dtype=bool)
    quadrant[:256, :256] = True  # the top-left quarter of the stage-1 image
    square = np.zeros((512, 512), dtype=bool)
    square[96:160, 352:416] = True  # face coordinates x ∈ [0.375, 0.625], y ∈ [0.375, 0.625] (up)
    regions = project_masks({"quadrant": quadrant, "square": square}, 512, 1024)
    longitude, latitude = pixel_centres(512, 1024)
    rows, cols = np.nonzero(regions["quadrant"])
    assert (longitude[cols] < 0).all() and (latitude[rows] > 0).all()  # up and to the left
    assert solid_angle_share(regions["quadrant"]) == pytest.approx(1 / 24, rel=5e-3)
    rows, cols = np.nonzero(regions["square"])
    # the square's centre (0.5, 0.5) on the face is the direction (0.5, 0.5, 1): yaw 26.57°, pitch 24.09°
    assert np.median(longitude[cols]) == pytest.approx(math.degrees(math.atan(0.5)), abs=0.5)
    assert np.median(latitude[rows]) == pytest.approx(math.degrees(math.atan(0.5 / math.hypot(1, 0.5))), abs=0.5)
    # a wide stage-1 image is centre-cropped as the generator crops it: its side bands fall outside the face
    wide = np.zeros((512, 768), dtype=bool)
    wide[:, :128] = True
    assert not project_masks({"band": wide}, 256, 512)["band"].any()


def test_stimulus_masks_come_from_the_manifest_entry_and_must_be_the_same_files(tmp_path):
    masks = stimulus_masks(entry(), base_dir=ROOT)
    assert masks.labels == ["car", "road", "building", "sky"] and masks.shape == (512, 512)
    small = stimulus_masks({**entry(), "stage1": {"height": 256, "width": 256}}, base_dir=ROOT)
    assert small.shape == (256, 256)
    with pytest.raises(AnalysisError, match="has changed since the stimulus was generated"):
        stimulus_masks(entry(sha256="0" * 64), base_dir=ROOT)
    with pytest.raises(AnalysisError, match="does not exist; give the folder the set was generated from"):
        stimulus_masks(entry(), base_dir=tmp_path, where="street_0.png")
    with pytest.raises(AnalysisError, match="names no masks"):
        stimulus_masks({"id": "x"})


def gaze_frame(participant: str, trial: int, stimulus: str, t, yaw, pitch, valid=None) -> pd.DataFrame:
    return pd.DataFrame({"participant": participant, "session": 1, "trial_index": trial, "stimulus": stimulus,
                         "scene": "vehicle", "t": t, "yaw_deg": yaw, "pitch_deg": pitch,
                         "valid": np.ones(len(t), dtype=bool) if valid is None else valid})


def test_trial_dwell_by_hand():
    region = np.zeros((180, 360), dtype=bool)
    region[80:100, 170:190] = True  # a 20° box around the centre
    t = np.arange(0.0, 2.0, 0.01)
    on = t < 0.5
    yaw = np.where(on, 0.0, 90.0)
    valid = np.ones(t.size, dtype=bool)
    valid[150:] = False  # the last 0.5 s are lost: the share is of the valid 1.5 s
    gaze = gaze_frame("P01", 0, "a.png", t, yaw, np.zeros_like(t), valid)
    fixations = pd.DataFrame({"participant": "P01", "session": 1, "trial_index": 0, "onset_s": [0.1, 0.6, 0.9],
                              "yaw_deg": [0.0, 90.0, 2.0], "pitch_deg": [0.0, 0.0, 1.0]})
    row = trial_dwell(gaze, fixations, {"a.png": {"box": region}}).iloc[0]
    assert row["dwell_share"] == pytest.approx(0.5 / 1.5)
    assert row["fixation_share"] == pytest.approx(2 / 3) and row["ttff_s"] == pytest.approx(0.1)
    assert row["chance_share"] == pytest.approx(solid_angle_share(region))
    missed = trial_dwell(gaze, fixations.assign(yaw_deg=90.0), {"a.png": {"box": region}}).iloc[0]
    assert missed["fixation_share"] == 0 and np.isnan(missed["ttff_s"])


def test_the_dwell_table_recovers_a_pull_towards_one_object():
    regions = {
        name: project_masks(stimulus_masks({**entry(), "stage1": {"height": 256, "width": 256}}, base_dir=ROOT), 256, 512)
        for name in ("a.png", "b.png")
    }
    frames = []
    for p in range(10):
        for trial, stimulus in enumerate(regions):
            car = TargetRegion.from_equirect("car", regions[stimulus]["car"])
            recording = trial_gaze(7, f"P{p:02d}", trial, 12.0, targets=[car], viewing=ViewingModel(target_pull=0.3))
            frames.append(gaze_frame(f"P{p:02d}", trial, stimulus, recording.t, recording.yaw_deg,
                                     recording.pitch_deg, recording.valid))
    gaze = pd.concat(frames, ignore_index=True)
    table = mask_dwell(gaze, detect_fixations(gaze), regions)
    assert list(table.columns) == list(DWELL_COLUMNS)
    assert table["level"].value_counts().to_dict() == {"stimulus": 8, "scene": 4}
    scene = table[table["level"] == "scene"].set_index("object")
    assert (scene["stimulus"] == "all").all() and (scene["n_participants"] == 10).all()
    car = scene.loc["car"]
    assert car["dwell_ci_low"] > 5 * car["chance_share"] and car["fixation_ci_low"] > 5 * car["chance_share"]
    others = scene.drop(index="car")
    assert (car["dwell_share"] > others["dwell_share"]).all() and (car["ttff_s"] < others["ttff_s"]).all()
    assert car["fixated_trials"] == 1.0
    assert car["chance_share"] == pytest.approx(solid_angle_share(regions["a.png"]["car"]))
    ordered = table[table["level"] == "stimulus"]
    assert (ordered["dwell_ci_low"] <= ordered["dwell_share"]).all() and (ordered["dwell_share"] <= ordered["dwell_ci_high"]).all()
    with pytest.raises(AnalysisError, match="no gaze sample belongs to a stimulus with object masks"):
        mask_dwell(gaze, detect_fixations(gaze), {"other.png": regions["a.png"]})
