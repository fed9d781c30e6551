"""OpenVR backend: a SteamVR scene application for the HTC VIVE Pro Eye (any SteamVR headset works).

Per frame: ``waitGetPoses`` (blocks until SteamVR's "running start"), draw both eyes at the recommended
render-target size with the eye frusta from ``getProjectionRaw`` and the eye-to-head transforms, submit
both GL_RGBA8 textures with ``ColorSpace_Gamma`` (the shader already wrote sRGB codes). Controllers come
through SteamVR Input with the manifest in ``viewer/openvr_actions/``: the trigger selects what the
controller's laser points at on the panel, with a haptic tick. Between stimuli the compositor fades to
the same neutral grey the renderer fades to.

``openvr`` is imported only in :meth:`OpenVRBackend.open`; everything geometric lives in
:mod:`viewer.camera` and is tested without SteamVR; what it shares with the OpenXR backend (GL window,
eye drawing, laser, mirror) lives in :mod:`viewer.backends.headset`.
"""

from __future__ import annotations

import ctypes
import time
from importlib import resources

import numpy as np

from study.errors import BackendUnavailable
from viewer.backends.base import Frame, FrameInput, HeadSample, InputEvent
from viewer.backends.headset import HeadsetBackend, PressEdge, captured_stderr, laser_ray
from viewer.camera import eye_pose, pose_matrix, tangents_from_projection_raw
from viewer.renderer import GREY_SRGB, EyeView, finish

ACTION_SET = "/actions/panostudy"


def _probe(openvr) -> tuple[bool, bool]:
    """``(runtime installed, HMD present)``; what libopenvr writes to stderr meanwhile ("Unable to read VR Path
    Registry from …") is dropped, so that a missing SteamVR ends in our one line only."""
    with captured_stderr():
        return bool(openvr.isRuntimeInstalled()), bool(openvr.isHmdPresent())


def _init_error_reason(exc: Exception, openvr) -> str:
    """One line naming the OpenVR init error and its likely cause."""
    hints = []
    installed, present = _probe(openvr)
    if not installed:
        hints.append("SteamVR is not installed (install it from Steam and run it once)")
    if not present:
        hints.append("no HMD detected (connect and power the headset, or enable SteamVR's null driver)")
    cause = "; ".join(hints) or "start SteamVR and check the headset status"
    return f"openvr.init failed with {type(exc).__name__}: {cause}; use --backend desktop without a headset"


class OpenVRBackend(HeadsetBackend):
    """Both eyes of a SteamVR headset.

    Parameters
    ----------
    downscale : bool
        See :class:`viewer.renderer.Renderer`.
    """

    name = "openvr"

    def __init__(self, *, downscale: bool = False):
        super().__init__(downscale=downscale)
        self.vr = None
        self._openvr = None
        self._presses = PressEdge()

    @classmethod
    def why_not(cls) -> str | None:
        try:
            import openvr
        except ImportError as exc:
            return f"pyopenvr is not installed ({exc}); pip install 'panostudy[vr]'"
        installed, present = _probe(openvr)
        if not installed:
            return "SteamVR is not installed (openvr.isRuntimeInstalled() is false); use --backend desktop"
        if not present:
            return "no HMD detected (openvr.isHmdPresent() is false); connect the headset or use --backend desktop"
        return None

    def open(self) -> None:
        try:
            import openvr
        except ImportError as exc:
            raise BackendUnavailable(self.name, f"pyopenvr is not installed ({exc}); pip install 'panostudy[vr]'") from None
        self._openvr = openvr
        try:
            with captured_stderr():  # libopenvr's own lines on a failed init; ours names the cause below
                self.vr = openvr.init(openvr.VRApplication_Scene)
        except openvr.error_code.InitError as exc:
            raise BackendUnavailable(self.name, _init_error_reason(exc, openvr)) from None
        try:
            self._open_gl()
            self._open_input()
        except BaseException:
            self.close()
            raise

    def _open_gl(self) -> None:
        openvr = self._openvr
        super()._open_gl("panostudy (SteamVR)", (4, 1))
        width, height = self.vr.getRecommendedRenderTargetSize()
        self.size = (width, height)
        self._eyes = (openvr.Eye_Left, openvr.Eye_Right)
        self._tangents = [tangents_from_projection_raw(*self.vr.getProjectionRaw(e)) for e in self._eyes]
        self._eye_to_head = [_m34(self.vr.getEyeToHeadTransform(e)) for e in self._eyes]
        self._color = [self.ctx.texture((width, height), 4) for _ in self._eyes]   # GL_RGBA8
        self._fbos = [self.ctx.framebuffer(color_attachments=[t]) for t in self._color]
        self._submit = []
        for texture in self._color:
            handle = openvr.Texture_t()
            handle.handle = texture.glo
            handle.eType = openvr.TextureType_OpenGL
            handle.eColorSpace = openvr.ColorSpace_Gamma
            self._submit.append(handle)
        self._poses = (openvr.TrackedDevicePose_t * openvr.k_unMaxTrackedDeviceCount)()
        # the sampling thread's own pose array (the HMD is device 0), so it never touches the render thread's
        self._sampled = (openvr.TrackedDevicePose_t * 1)()
        self.compositor = openvr.VRCompositor()
        self._stats_before = self._stats_at_open = self._cumulative_stats()
        self._head = np.eye(3)
        self._head_position = np.zeros(3)

    def _open_input(self) -> None:
        openvr = self._openvr
        manifest = resources.files("viewer") / "openvr_actions" / "actions.json"
        self.input = openvr.VRInput()
        self.input.setActionManifestPath(str(manifest))
        self._action_set = self.input.getActionSetHandle(ACTION_SET)
        self._select = self.input.getActionHandle(f"{ACTION_SET}/in/select")
        self._pointer = self.input.getActionHandle(f"{ACTION_SET}/in/pointer")
        self._haptic = self.input.getActionHandle(f"{ACTION_SET}/out/haptic")
        self._active_sets = (openvr.VRActiveActionSet_t * 1)()
        self._active_sets[0].ulActionSet = self._action_set

    # -- per frame ---------------------------------------------------------------------------------------

    def poll_input(self) -> FrameInput:
        openvr = self._openvr
        events = []
        event = openvr.VREvent_t()
        while self.vr.pollNextEvent(event):
            if event.eventType == openvr.VREvent_Quit:
                # granted at once: the session stops as interrupted and is resumed later
                self.vr.acknowledgeQuit_Exiting()
                events.append(InputEvent("quit", key="SteamVR is shutting down (VREvent_Quit)"))
            elif (event.eventType == openvr.VREvent_TrackedDeviceDeactivated
                  and event.trackedDeviceIndex == openvr.k_unTrackedDeviceIndex_Hmd):
                events.append(InputEvent("quit", key="the headset was disconnected (VREvent_TrackedDeviceDeactivated)"))
        self.compositor.waitGetPoses(self._poses, None)
        hmd = self._poses[openvr.k_unTrackedDeviceIndex_Hmd]
        if hmd.bPoseIsValid:
            self._head, self._head_position = pose_matrix(_m34(hmd.mDeviceToAbsoluteTracking))
        self.input.updateActionState(self._active_sets)
        pointer = None
        pose = self.input.getPoseActionDataForNextFrame(
            self._pointer, openvr.TrackingUniverseStanding, openvr.k_ulInvalidInputValueHandle
        )
        if pose.bActive and pose.pose.bPoseIsValid:
            pointer = laser_ray(*pose_matrix(_m34(pose.pose.mDeviceToAbsoluteTracking)))
        select = self.input.getDigitalActionData(self._select, openvr.k_ulInvalidInputValueHandle)
        click = self._presses.update("any", bool(select.bActive and select.bState), pointer)
        if click is not None:
            events.append(click)
        return FrameInput(head=self._head, pointer=pointer, events=tuple(events), head_position=self._head_position)

    def head_at(self, monotonic_ns: int) -> HeadSample | None:
        """The HMD pose SteamVR predicts for ``monotonic_ns`` (a moment just past or just ahead).

        ``GetDeviceToAbsoluteTrackingPose`` extrapolates the latest tracking by the seconds given; the
        pose-sampling thread asks at the due time, so the offset is a fraction of a millisecond. Its
        vtable call reads tracking state and is made from the sampling thread, while the render thread
        waits in ``WaitGetPoses``.
        """
        openvr = self._openvr
        seconds = (monotonic_ns - time.monotonic_ns()) / 1e9
        self.vr.getDeviceToAbsoluteTrackingPose(openvr.TrackingUniverseStanding, seconds, self._sampled)
        hmd = self._sampled[openvr.k_unTrackedDeviceIndex_Hmd]
        if not hmd.bPoseIsValid:
            return None
        rotation, position = pose_matrix(_m34(hmd.mDeviceToAbsoluteTracking))
        return HeadSample(rotation, position)

    def draw(self, frame: Frame) -> None:
        head34 = np.hstack([self._head, self._head_position[:, None]])
        for index, (fbo, tangents, eye_to_head) in enumerate(zip(self._fbos, self._tangents, self._eye_to_head)):
            rotation, position = eye_pose(head34, eye_to_head)
            self._draw_eye(index, fbo, EyeView(tangents, rotation, position), frame)
        for eye, handle in zip(self._eyes, self._submit):
            self.compositor.submit(eye, handle)
        # the submit docstring asks for a glFlush after both eyes; moderngl offers only glFinish, and the
        # compositor has just taken the textures, so waiting costs nothing that waitGetPoses would not
        finish(self.ctx)
        self._clear_gl_errors()
        return None

    def dropped_frames(self) -> int | None:
        return self._cumulative_stats().m_nNumDroppedFrames - self._stats_at_open.m_nNumDroppedFrames

    def fade_to_grey(self, seconds: float, grey: bool) -> None:
        level = GREY_SRGB / 255.0
        self.compositor.fadeToColor(seconds, level, level, level, 1.0 if grey else 0.0)

    def tick(self) -> None:
        self.input.triggerHapticVibrationAction(self._haptic, 0.0, 0.02, 150.0, 0.5, self._openvr.k_ulInvalidInputValueHandle)

    def _cumulative_stats(self):
        return self.compositor.getCumulativeStats(ctypes.sizeof(self._openvr.Compositor_CumulativeStats))

    def timing_stats(self) -> dict[str, float]:
        now = self._cumulative_stats()
        before, self._stats_before = self._stats_before, now
        return {
            "compositor_presents": now.m_nNumFramePresents - before.m_nNumFramePresents,
            "compositor_dropped": now.m_nNumDroppedFrames - before.m_nNumDroppedFrames,
            "compositor_reprojected": now.m_nNumReprojectedFrames - before.m_nNumReprojectedFrames,
        }

    def close(self) -> None:
        if self.vr is None:
            return
        self._close_gl()
        self._openvr.shutdown()
        self.vr = None


def _m34(matrix) -> np.ndarray:
    """An ``HmdMatrix34_t`` (or a (3, 4) array) as a (3, 4) float64 array."""
    if isinstance(matrix, np.ndarray):
        return matrix
    return np.array([[matrix.m[r][c] for c in range(4)] for r in range(3)], dtype=np.float64)
