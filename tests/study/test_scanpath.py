"""The synthetic eye tracker and the sphere helpers it stands on: geometry, determinism, what the tracker adds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from study.errors import ProtocolError
from study.scanpath import (
    TargetRegion,
    TrackerModel,
    ViewingModel,
    eye_path,
    saccade_duration_s,
    scripted_scanpath,
    trial_gaze,
    validation_gaze,
)
from study.sphere import (
    angular_distance_deg,
    head_rotation,
    pixel_centres,
    pixel_of,
    pixel_solid_angles,
    tangent_offset,
    unit_vectors,
    yaw_pitch,
)
from study.validation_targets import check_targets, grid_targets
from viewer.camera import view_rotation

QUIET = TrackerModel(noise_deg=0.0, blinks_per_s=0.0, loss_probability=0.0, jitter_s=0.0)


def test_unit_vectors_follow_the_viewer_convention_and_invert():
    # yaw 0 is straight ahead (+z), positive yaw right (+x), positive pitch up (+y)
    np.testing.assert_allclose(unit_vectors(0, 0), [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(unit_vectors(90, 0), [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(unit_vectors(0, 90), [0, 1, 0], atol=1e-12)
    yaw, pitch = np.meshgrid(np.linspace(-179, 179, 13), np.linspace(-89, 89, 7))
    back = yaw_pitch(unit_vectors(yaw, pitch))
    np.testing.assert_allclose(back[0], yaw, atol=1e-9)
    np.testing.assert_allclose(back[1], pitch, atol=1e-9)


def test_angular_distance_is_exact_for_small_and_large_angles():
    a = unit_vectors(10.0, 20.0)
    for angle in (1e-6, 0.01, 1.0, 90.0, 179.0):
        b = tangent_offset(a, angle, 0.0)
        assert float(angular_distance_deg(a, b)) == pytest.approx(angle, rel=1e-6)


@pytest.mark.parametrize("pitch", [0.0, 45.0, 80.0, -89.0])
def test_tangent_offset_moves_exactly_the_angle_asked_for(pitch):
    start = unit_vectors(30.0, pitch)
    moved = tangent_offset(start, 0.6, 0.8)
    assert float(angular_distance_deg(start, moved)) == pytest.approx(1.0, abs=1e-9)
    # "right" raises yaw and "up" raises pitch
    yaw_r, _ = yaw_pitch(tangent_offset(start, 1.0, 0.0))
    _, pitch_u = yaw_pitch(tangent_offset(start, 0.0, 1.0))
    assert yaw_r > 30.0 and pitch_u > pitch


def test_pixel_solid_angles_sum_to_the_sphere_and_grow_towards_the_equator():
    rows = pixel_solid_angles(128, 256)
    assert 256 * rows.sum() == pytest.approx(4 * math.pi, rel=1e-12)
    assert rows[0] < rows[32] < rows[63] and rows[63] == pytest.approx(rows[64])
    longitude, latitude = pixel_centres(128, 256)
    row, col = pixel_of(longitude[[0, 100, 255]], latitude[[0, 64, 127]], 128, 256)
    assert row.tolist() == [0, 64, 127] and col.tolist() == [0, 100, 255]
    # yaw wraps: +180 is the first column, like -180
    assert pixel_of(180.0, 0.0, 128, 256)[1] == 0


@pytest.mark.parametrize("yaw, pitch, roll", [(0, 0, 0), (30, 10, 0), (-120, -40, 15), (170, 60, -30)])
def test_head_rotation_is_the_viewers_rotation_in_the_z_forward_frame(yaw, pitch, roll):
    flip = np.diag([1.0, 1.0, -1.0])
    np.testing.assert_allclose(head_rotation(yaw, pitch, roll), flip @ view_rotation(yaw, pitch, roll) @ flip, atol=1e-12)
    forward = head_rotation(yaw, pitch, roll) @ np.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(forward, unit_vectors(yaw, pitch), atol=1e-12)


def test_eye_path_rests_at_each_fixation_and_moves_by_the_main_sequence():
    script = [(0.0, 0.0, 0.3), (10.0, 0.0, 0.2), (10.0, 10.0, 0.25)]
    t = np.arange(0.0, 1.0, 1e-3)
    vectors, fixations = eye_path(script, t)
    assert [(f.yaw_deg, f.pitch_deg) for f in fixations] == [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0)]
    saccade = float(saccade_duration_s(10.0))
    assert saccade == pytest.approx(0.043)
    assert fixations[1].onset_s == pytest.approx(0.3 + saccade, abs=1e-3)
    assert fixations[1].duration_s == pytest.approx(0.2, abs=1.5e-3)  # one 1 ms sample either way
    # the path between two fixations stays on their great circle (pitch 0 for the first saccade)
    moving = (t > 0.3) & (t < 0.3 + saccade)
    _, pitch = yaw_pitch(vectors[moving])
    np.testing.assert_allclose(pitch, 0.0, atol=1e-9)
    speed = np.degrees(np.linalg.norm(np.diff(vectors[moving], axis=0), axis=1)) / 1e-3
    assert speed.max() == pytest.approx(1.875 * 10.0 / saccade, rel=0.02)  # minimum-jerk peak: 1.875 A / D


def test_the_same_seed_gives_the_same_recording_and_another_seed_another():
    first = trial_gaze(3, "P07", 2, 4.0)
    again = trial_gaze(3, "P07", 2, 4.0)
    other = trial_gaze(3, "P07", 3, 4.0)
    np.testing.assert_array_equal(first.t, again.t)
    np.testing.assert_array_equal(first.yaw_deg, again.yaw_deg)
    assert first.fixations == again.fixations
    assert not np.array_equal(first.true_yaw_deg[:100], other.true_yaw_deg[:100])


def test_the_tracker_samples_at_its_rate_with_runtime_like_times():
    recording = trial_gaze(1, "P01", 0, 10.0)
    dt = np.diff(recording.t)
    assert (dt > 0).all() and recording.t[0] >= 0 and recording.t[-1] < 10.0
    assert np.median(dt) == pytest.approx(1 / 120, rel=1e-3)
    assert 0 < dt.std() < 1e-3  # jittered, not on an exact grid
    assert recording.t.size == pytest.approx(1200, abs=2)


def test_bias_is_exact_noise_has_its_spread_and_losses_are_flagged():
    rng = np.random.default_rng(4)
    script = [(20.0, 30.0, 3.0)]
    biased = scripted_scanpath(script, rng, tracker=TrackerModel(noise_deg=0.0, bias_deg=(0.6, 0.8), blinks_per_s=0,
                                                                  loss_probability=0))
    error = angular_distance_deg(unit_vectors(biased.yaw_deg, biased.pitch_deg), unit_vectors(20.0, 30.0))
    np.testing.assert_allclose(error, 1.0, atol=1e-9)
    noisy = scripted_scanpath(script, rng, tracker=TrackerModel(noise_deg=0.2, blinks_per_s=0, loss_probability=0))
    error = angular_distance_deg(unit_vectors(noisy.yaw_deg, noisy.pitch_deg), unit_vectors(20.0, 30.0))
    # 2-D Gaussian noise of 0.2° per axis: RMS error 0.2·√2
    assert np.sqrt(np.mean(error**2)) == pytest.approx(0.2 * math.sqrt(2), rel=0.08)
    lossy = scripted_scanpath([(0.0, 0.0, 60.0)], rng, tracker=TrackerModel(blinks_per_s=0.5, loss_probability=0.01))
    lost = 1.0 - lossy.valid.mean()
    # 0.5 blinks/s of 80–250 ms ≈ 8 %, plus 1 % isolated losses
    assert 0.04 < lost < 0.16
    assert np.isnan(lossy.yaw_deg[~lossy.valid]).all() and np.isfinite(lossy.yaw_deg[lossy.valid]).all()
    assert np.isfinite(lossy.true_yaw_deg).all()


def test_head_poses_follow_the_gaze_so_it_stays_in_the_viewport():
    recording = trial_gaze(2, "P03", 1, 20.0)
    poses = np.array(recording.head_poses(30.0, 20.0))
    assert poses.shape == (600, 4)
    np.testing.assert_allclose(np.diff(poses[:, 0]), 1 / 30)
    eye = unit_vectors(np.interp(poses[:, 0], recording.t, recording.true_yaw_deg),
                       np.interp(poses[:, 0], recording.t, recording.true_pitch_deg))
    eccentricity = angular_distance_deg(eye, unit_vectors(poses[:, 1], poses[:, 2]))
    # yaw interpolation across ±180° can misplace a sample or two; the rest keeps within a 100° viewport
    assert np.quantile(eccentricity, 0.99) < 45.0
    assert np.median(eccentricity) < 10.0


def test_target_regions_draw_uniformly_on_the_sphere_inside_the_mask():
    height, width = 64, 128
    mask = np.zeros((height, width), dtype=bool)
    mask[:8, :] = True  # a polar cap above latitude 67.5°
    region = TargetRegion.from_equirect("cap", mask)
    rng = np.random.default_rng(0)
    draws = np.array([region.draw(rng) for _ in range(4000)])
    assert (draws[:, 1] > 67.5).all()
    # uniform on the sphere: P(lat > 78.75°) = (1 − sin 78.75°) / (1 − sin 67.5°) ≈ 0.25, not the 0.5 of rows
    share = (draws[:, 1] > 78.75).mean()
    assert share == pytest.approx((1 - math.sin(math.radians(78.75))) / (1 - math.sin(math.radians(67.5))), abs=0.03)
    with pytest.raises(ValueError, match="non-empty"):
        TargetRegion.from_equirect("none", np.zeros((4, 8)))


def test_target_pull_sends_fixations_to_the_regions():
    mask = np.zeros((90, 180), dtype=bool)
    mask[40:50, 100:110] = True  # about 10° × 10° right of centre
    region = TargetRegion.from_equirect("box", mask)
    inside = []
    for pull in (0.0, 0.5):
        hits = total = 0
        for trial in range(6):
            recording = trial_gaze(5, "P01", trial, 20.0, targets=[region], viewing=ViewingModel(target_pull=pull))
            rows, cols = pixel_of([f.yaw_deg for f in recording.fixations], [f.pitch_deg for f in recording.fixations], 90, 180)
            hits += int(mask[rows, cols].sum())
            total += len(recording.fixations)
        inside.append(hits / total)
    assert inside[0] < 0.05 and inside[1] > 0.4


def test_validation_gaze_looks_at_every_target_in_turn():
    targets = grid_targets()
    assert len(targets) == 9 and targets[0] == (0.0, 0.0) and set(targets) == {
        (y, p) for y in (-15.0, 0.0, 15.0) for p in (-15.0, 0.0, 15.0)}
    recording = validation_gaze(targets, np.random.default_rng(1), tracker=QUIET)
    assert sorted(set(recording.target.tolist())) == list(range(9))
    samples = recording.samples
    for index, (yaw, pitch) in enumerate(targets):
        late = (recording.target == index) & (samples.t >= 0.5)
        error = angular_distance_deg(unit_vectors(samples.yaw_deg[late], samples.pitch_deg[late]), unit_vectors(yaw, pitch))
        assert error.max() < 1e-6
    with pytest.raises(ProtocolError, match=r"validation targets\[1\] = \[120, 0\]: yaw 120° is outside ±90°"):
        validation_gaze([(0, 0), (120, 0)], np.random.default_rng(1))


@pytest.mark.parametrize(
    "targets, message",
    [
        ([], "non-empty list"),
        ([(0, 0), (10,)], r"\[1\] = \(10,\): expected a pair"),
        ([(0, "up")], "expected a pair"),
        ([(0, 95)], "pitch 95° is outside ±90°"),
        ([(-91, 0)], "yaw -91° is outside ±90°"),
        ([(0, float("nan"))], "expected a pair"),
    ],
)
def test_target_lists_are_checked_with_one_line_errors(targets, message):
    with pytest.raises(ProtocolError, match=message) as caught:
        check_targets(targets, "protocol.toml: validation.targets")
    assert "\n" not in str(caught.value) and str(caught.value).startswith("protocol.toml: validation.targets")
    assert check_targets([(90, -90), (0, 15)]) == ((90.0, -90.0), (0.0, 15.0))
