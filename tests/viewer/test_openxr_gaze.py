"""The OpenXR eye-gaze source on a stand-in runtime that supports XR_EXT_eye_gaze_interaction.

Monado's simulated headset has no eyes (``make test-xr`` checks that path against the real runtime); here the
supported path's own code runs against a fake of the few OpenXR calls it makes, with pyopenxr's real structures:
the binding it suggests, ``isActive`` as validity, the gaze located from the sampler thread and kept once per
tracker sample at the time ``XrEyeGazeSampleTimeEXT`` gives.
"""

from __future__ import annotations

import ctypes
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

xr = pytest.importorskip("xr", reason="pyopenxr is not installed (pip install 'panostudy[xr]')")

from viewer.backends.openxr import EYE_GAZE_POSE, EYE_GAZE_PROFILE, GAZE_OVERSAMPLING, EyeGaze  # noqa: E402
from viewer.gaze import GazeShowing, gaze_records  # noqa: E402

#: The runtime's clock runs this far ahead of the monotonic clock; its tracker samples every 1/120 s from PHASE.
EPOCH_NS, PERIOD_NS, PHASE_NS = 5_000_000_000, 8_333_333, 1_234_567


def looking_at(yaw_deg: float, pitch_deg: float) -> Rotation:
    """The pose orientation whose -z axis points at (yaw, pitch) in the viewer's world frame."""
    return Rotation.from_euler("YX", [-yaw_deg, pitch_deg], degrees=True)


class FakeRuntime:
    """The calls EyeGaze makes, answered like a runtime with an eye tracker: the eye sweeps right at 10°/s."""

    def __init__(self):
        self.active = True
        self.fail = False
        self.suggested: list = []
        self.action_info: dict = {}
        self.located: list[int] = []

    def sample_time(self, runtime_ns: int) -> int:
        """The tracker's latest sample at or before ``runtime_ns``."""
        return (runtime_ns - PHASE_NS) // PERIOD_NS * PERIOD_NS + PHASE_NS

    @staticmethod
    def yaw_at(sample_ns: int) -> float:
        return 10.0 * (sample_ns - EPOCH_NS) / 1e9

    def locate(self, space, base_space, runtime_ns, location_ref) -> int:
        if self.fail:
            return xr.Result.ERROR_SESSION_LOST.value
        self.located.append(runtime_ns)
        location = location_ref._obj
        stamp = ctypes.cast(location.next, ctypes.POINTER(xr.EyeGazeSampleTimeEXT)).contents
        sample = self.sample_time(runtime_ns)
        x, y, z, w = looking_at(self.yaw_at(sample), 5.0).as_quat()
        location.pose.orientation = xr.Quaternionf(x, y, z, w)
        location.location_flags = xr.SPACE_LOCATION_ORIENTATION_VALID_BIT | xr.SPACE_LOCATION_ORIENTATION_TRACKED_BIT
        stamp.time = sample
        return xr.Result.SUCCESS.value

    def namespace(self) -> SimpleNamespace:
        """pyopenxr as EyeGaze sees it: real structures, enums and result checks; these calls faked."""
        runtime = self
        names = {name: getattr(xr, name) for name in dir(xr) if not name.startswith("_")}
        return SimpleNamespace(**{
            **names,
            "string_to_path": lambda instance, text: text,
            "ActionCreateInfo": lambda **info: info,
            "create_action": lambda action_set, info: runtime.action_info.update(info) or "gaze-action",
            "ActionSuggestedBinding": lambda action, binding: (action, binding),
            "InteractionProfileSuggestedBinding": lambda interaction_profile, suggested_bindings: (
                interaction_profile, suggested_bindings),
            "suggest_interaction_profile_bindings": lambda instance, suggested: runtime.suggested.append(suggested),
            "ActionSpaceCreateInfo": lambda **info: info,
            "create_action_space": lambda session, info: "gaze-space",
            "ActionStateGetInfo": lambda **info: info,
            "get_action_state_pose": lambda session, info: xr.ActionStatePose(is_active=runtime.active),
            "raw_functions": SimpleNamespace(xrLocateSpace=runtime.locate),
        })


@pytest.fixture
def eye_gaze():
    runtime = FakeRuntime()
    lost = []
    source = EyeGaze(runtime.namespace(), runtime_time=lambda ns: ns + EPOCH_NS, lock=threading.Lock(),
                     lost=lambda error, call: lost.append((type(error).__name__, call)))
    source.suggest("instance", "action-set")
    source.attach("session", "world-space")
    return runtime, source, lost


def test_the_gaze_pose_is_bound_for_the_eye_gaze_profile(eye_gaze):
    runtime, source, _ = eye_gaze
    assert runtime.suggested == [(EYE_GAZE_PROFILE, [("gaze-action", EYE_GAZE_POSE)])]
    assert runtime.action_info["action_type"] == xr.ActionType.POSE_INPUT and source.space == "gaze-space"
    source.sync(EPOCH_NS + 10**9)
    assert source.active and source.at_display.valid
    assert source.at_display.runtime_time_ns == runtime.sample_time(EPOCH_NS + 10**9)


def test_each_tracker_sample_is_kept_once_at_its_own_time_with_its_direction(eye_gaze):
    runtime, source, lost = eye_gaze
    source.sync(EPOCH_NS)
    onset = time.monotonic_ns()
    source.start(onset, GazeShowing("P01", 0.5))
    time.sleep(0.55)
    readings = source.stop(onset + 500_000_000)
    # located from the sampler thread at twice the tracker's rate, kept once per tracker sample
    assert len(runtime.located) >= 0.9 * 0.5 * GAZE_OVERSAMPLING * 120
    stamps = np.array([r.runtime_time_ns for r in readings])
    assert len(set(stamps)) == len(stamps) and np.all(np.diff(stamps) == PERIOD_NS)
    assert 58 <= len(readings) <= 61 and all(r.valid for r in readings) and not lost
    onset_runtime = onset + EPOCH_NS
    for reading in readings:
        assert reading.t == pytest.approx((reading.runtime_time_ns - onset_runtime) / 1e9) and 0 <= reading.t < 0.5
    # the pose's -z axis is the gaze; in the stimulus frame (no turn) it is the eye's yaw at its sample time
    records = gaze_records(readings, np.eye(3))
    yaw = np.array([r.yaw_deg for r in records])
    expected = (np.array([FakeRuntime.yaw_at(s) for s in stamps]) + 180.0) % 360.0 - 180.0
    np.testing.assert_allclose(yaw, expected, atol=1e-6)
    assert all(r.pitch_deg == pytest.approx(5.0) for r in records)


def test_without_the_eyes_samples_are_invalid_at_the_trackers_rate_and_a_lost_runtime_is_reported(eye_gaze):
    runtime, source, lost = eye_gaze
    runtime.active = False   # isActive false: the runtime has no eyes to track right now
    source.sync(EPOCH_NS)
    onset = time.monotonic_ns()
    source.start(onset, GazeShowing("P01", 0.5))
    time.sleep(0.55)
    readings = source.stop(onset + 500_000_000)
    assert readings and not any(r.valid or r.direction is not None for r in readings)
    assert 50 <= len(readings) <= 62   # one per tracker period, not one per locate
    runtime.fail = True
    assert source.locate(time.monotonic_ns()) is None
    assert lost == [("SessionLostError", "xrLocateSpace (eye gaze)")]
