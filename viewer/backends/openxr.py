"""OpenXR backend (pyopenxr): any OpenXR runtime — SteamVR on Windows and Linux, Monado, ...

Per frame: ``xrWaitFrame`` paces, ``xrBeginFrame``, ``xrLocateViews`` at the predicted display time
gives each view's pose and asymmetric field of view, both eyes are drawn by the shared renderer into
one sRGB swapchain per view, and ``xrEndFrame`` submits a projection layer with the very poses the
images were drawn with. Controllers come through the action system with suggested bindings for the
HTC Vive controller and the Khronos simple controller: the aim pose is the panel laser, the trigger
(select) chooses, a haptic pulse acknowledges. OpenXR has no compositor fade: the renderer's fade is
all there is. Head poses for the sampler come from ``xrLocateSpace`` at the runtime time of the
sample (``XR_KHR_convert_timespec_time`` on Linux, ``XR_KHR_win32_convert_performance_counter_time``
on Windows). Where the system supports ``XR_EXT_eye_gaze_interaction``, :class:`EyeGaze` is the session's
eye tracker; elsewhere (Monado's simulated headset) :meth:`OpenXRBackend.why_no_gaze` says so and the
session records head poses only.

The experimenter's console and its mirror work as in every headset backend (:mod:`viewer.backends.headset`):
the left eye goes to the mirror before its swapchain image is released to the runtime, and
:meth:`OpenXRBackend.dropped_frames` counts the display periods the runtime skipped.

A runtime that goes away (``LOSS_PENDING``, ``EXITING``, ``STOPPING``, the service killed, an
``XR_ERROR_*_LOST``) is reported by :meth:`OpenXRBackend.poll_input` as a quit event carrying one
line: the session stops as interrupted and can be resumed. ``pyopenxr`` is imported only when the
backend is probed or opened.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from study.errors import BackendUnavailable
from viewer.backends.base import Frame, FrameInput, HeadSample, InputEvent
from viewer.backends.headset import HeadsetBackend, PressEdge, captured_stderr, laser_ray
from viewer.camera import tangents_from_fov
from viewer.gaze import GazeReading, GazeSampler, GazeShowing, GazeSource
from viewer.renderer import EyeView

#: 8-bit sRGB colour formats, preferred in this order (SteamVR on Linux offers only these for OpenGL).
GL_SRGB8_ALPHA8, GL_SRGB8 = 0x8C43, 0x8C41
SRGB_FORMATS = (GL_SRGB8_ALPHA8, GL_SRGB8)
#: Interaction profiles with suggested bindings: (profile, select input, aim pose, haptic output) per hand.
BINDINGS = {
    "/interaction_profiles/htc/vive_controller": ("input/trigger/click", "input/aim/pose", "output/haptic"),
    "/interaction_profiles/khr/simple_controller": ("input/select/click", "input/aim/pose", "output/haptic"),
}
HANDS = ("right", "left")
#: XR_EXT_eye_gaze_interaction's profile and the one gaze pose it has (the combined "cyclops" gaze).
EYE_GAZE_PROFILE = "/interaction_profiles/ext/eye_gaze_interaction"
EYE_GAZE_POSE = "/user/eyes_ext/input/gaze_ext/pose"
#: The gaze pose is located at twice the tracker's rate and kept once per tracker sample time, so no
#: tracker sample falls between two locates.
GAZE_OVERSAMPLING = 2
#: Seconds open() waits for the runtime to make the session READY.
READY_TIMEOUT_S = 10.0
#: The haptic tick on a choice.
HAPTIC_S, HAPTIC_AMPLITUDE = 0.02, 0.5
EYE_GAZE = "XR_EXT_eye_gaze_interaction"
OPENGL = "XR_KHR_opengl_enable"
TIMESPEC = "XR_KHR_convert_timespec_time"
WIN32_TIME = "XR_KHR_win32_convert_performance_counter_time"


def result_name(error: Exception) -> str:
    """``XR_ERROR_...`` of a pyopenxr exception, else its class name."""
    result = getattr(error, "get_result_enum", lambda: None)()
    return f"XR_{result.name}" if result is not None else type(error).__name__


def _no_runtime_reason() -> str:
    """Why the loader found no runtime: the XR_RUNTIME_JSON variable, or the active-runtime file."""
    manifest = os.environ.get("XR_RUNTIME_JSON")
    if manifest:
        if not Path(manifest).is_file():
            return f"XR_RUNTIME_JSON={manifest} does not exist; point it at the runtime's manifest (openxr_monado.json, steamxr_linux64.json)"
        return f"the runtime named by XR_RUNTIME_JSON={manifest} could not be loaded"
    if sys.platform.startswith("win"):
        return "no active OpenXR runtime is set; in SteamVR: Settings > OpenXR > Set SteamVR as OpenXR runtime"
    return ("XR_RUNTIME_JSON is unset and no active runtime is configured (openxr/1/active_runtime.json); "
            "in SteamVR: Settings > OpenXR > Set SteamVR as OpenXR runtime, or set XR_RUNTIME_JSON")


def _failure_reason(error: Exception, loader_log: str) -> str:
    """One line for a failed xrCreateInstance / xrGetSystem, with what the user can do about it."""
    import xr

    name = result_name(error)
    if isinstance(error, xr.RuntimeUnavailableError):
        return f"no OpenXR runtime ({name}): {_no_runtime_reason()}"
    if isinstance(error, xr.FormFactorUnavailableError):
        return f"no headset ({name}): connect and power the headset, then check the runtime's status window"
    if isinstance(error, xr.ExtensionNotPresentError):
        return f"the OpenXR runtime lacks {OPENGL} ({name}); use a runtime with OpenGL support (SteamVR, Monado)"
    if isinstance(error, (xr.RuntimeFailureError, xr.InstanceLostError, xr.InitializationFailedError)):
        return f"the OpenXR runtime failed to start ({name}); is its service running (SteamVR, monado-service)?"
    detail = loader_log.strip().splitlines()[-1] if loader_log.strip() else str(error)
    return f"OpenXR failed with {name}: {detail}"


@dataclasses.dataclass(frozen=True)
class _GazeAt:
    """The gaze pose as located for one due time: its sample's own runtime time, direction, validity."""

    runtime_time_ns: int
    direction: np.ndarray | None
    valid: bool


class EyeGaze(GazeSource):
    """``XR_EXT_eye_gaze_interaction``: the gaze pose of ``/user/eyes_ext/input/gaze_ext/pose``.

    Made by the backend only where the system's ``supportsEyeGazeInteraction`` is true (the spec requires a
    runtime to accept the binding even without an eye tracker). :meth:`suggest` adds the pose action and its
    binding before the action set is attached, :meth:`attach` makes its action space; :meth:`sync` runs on the
    render thread after ``xrSyncActions`` (``isActive`` of the pose, and the gaze at the frame's display
    time); :meth:`locate` runs on the :class:`~viewer.gaze.GazeSampler` thread, at
    :data:`GAZE_OVERSAMPLING` × the tracker's rate, and reads each sample's own time from
    ``XrEyeGazeSampleTimeEXT``. A recording keeps each tracker sample once, at its own time.

    Parameters
    ----------
    xr : module
        pyopenxr (a test passes a stand-in).
    runtime_time : callable
        ``runtime_time(monotonic_ns) -> XrTime`` (the backend's clock conversion).
    lock : threading.Lock
        Held around every locate (the backend's lock: closing waits for it).
    lost : callable
        ``lost(error, call)``: the runtime went away during ``call``.
    """

    name = "openxr"

    def __init__(self, xr, *, runtime_time, lock, lost):
        self._xr = xr
        self._runtime_time = runtime_time
        self._lock = lock
        self._lost = lost
        self.action = None
        self.space = None
        self.world_space = None
        self.active = False
        self.at_display: _GazeAt | None = None
        self._sampler: GazeSampler | None = None
        self._onset_runtime_ns = 0
        self._duration_s = 0.0

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "extension": EYE_GAZE, "binding": f"{EYE_GAZE_PROFILE} {EYE_GAZE_POSE}",
                "located_hz": GAZE_OVERSAMPLING * self.rate_hz}

    def suggest(self, instance, action_set) -> None:
        """Creates the gaze pose action in ``action_set`` and suggests its binding (before the set is attached)."""
        xr = self._xr
        self.action = xr.create_action(action_set, xr.ActionCreateInfo(
            action_name="gaze", action_type=xr.ActionType.POSE_INPUT, localized_action_name="gaze"))
        xr.suggest_interaction_profile_bindings(instance, xr.InteractionProfileSuggestedBinding(
            interaction_profile=xr.string_to_path(instance, EYE_GAZE_PROFILE),
            suggested_bindings=[xr.ActionSuggestedBinding(self.action, xr.string_to_path(instance, EYE_GAZE_POSE))]))

    def attach(self, session, world_space):
        """Makes the gaze pose's action space once the action set is attached; returns it (the backend destroys it)."""
        xr = self._xr
        self.session, self.world_space = session, world_space
        self.space = xr.create_action_space(session, xr.ActionSpaceCreateInfo(action=self.action))
        return self.space

    def sync(self, display_time_ns: int) -> None:
        """After ``xrSyncActions``: whether the runtime has the eyes, and the gaze at the frame's display time."""
        xr = self._xr
        state = xr.get_action_state_pose(self.session, xr.ActionStateGetInfo(action=self.action))
        self.active = bool(state.is_active)
        self.at_display = self._locate_runtime(display_time_ns)

    def _locate_runtime(self, runtime_ns: int) -> _GazeAt:
        xr = self._xr
        sample_time = xr.EyeGazeSampleTimeEXT()
        location = xr.SpaceLocation(next=ctypes.cast(ctypes.pointer(sample_time), ctypes.c_void_p))
        result = xr.check_result(xr.Result(xr.raw_functions.xrLocateSpace(
            self.space, self.world_space, runtime_ns, ctypes.byref(location))))
        if result.is_exception():
            raise result
        flags = int(location.location_flags)
        valid = self.active and bool(flags & xr.SPACE_LOCATION_ORIENTATION_VALID_BIT) and bool(
            flags & xr.SPACE_LOCATION_ORIENTATION_TRACKED_BIT)
        # the pose looks down its own -z axis, like every OpenXR pose
        direction = _rotation(location.pose.orientation)[:, 2] * -1.0 if valid else None
        stamp = int(sample_time.time) if valid and sample_time.time else runtime_ns
        return _GazeAt(stamp, direction, valid)

    def locate(self, monotonic_ns: int) -> _GazeAt | None:
        """The gaze for the sampler's due time (its sample's own time may be earlier); None once the runtime is gone."""
        xr = self._xr
        with self._lock:
            if self.space is None:
                return None
            try:
                return self._locate_runtime(self._runtime_time(monotonic_ns))
            except xr.XrException as error:
                self._lost(error, "xrLocateSpace (eye gaze)")
                return None

    def start(self, onset_ns: int, showing: GazeShowing) -> None:
        self._onset_runtime_ns = self._runtime_time(onset_ns)
        self._duration_s = showing.duration_s
        self._sampler = GazeSampler(GAZE_OVERSAMPLING * self.rate_hz, self.locate)
        self._sampler.start(onset_ns, showing.duration_s)

    def stop(self, at_ns: int) -> list[GazeReading]:
        if self._sampler is None:
            return []
        located, self._sampler = self._sampler.stop(at_ns), None
        end_s = min((self._runtime_time(at_ns) - self._onset_runtime_ns) / 1e9, self._duration_s)
        readings, seen, last_t = [], set(), -1.0
        for at in located:
            t = (at.runtime_time_ns - self._onset_runtime_ns) / 1e9
            # the tracker's last sample before the onset is not of this showing; a sample located twice counts once
            if t < 0 or t >= end_s or at.runtime_time_ns in seen:
                continue
            # a lost eye has no sample time: one invalid reading per tracker period, so data loss is not doubled
            if not at.valid and t - last_t < 0.75 / self.rate_hz:
                continue
            seen.add(at.runtime_time_ns)
            last_t = t
            readings.append(GazeReading(t, at.direction, at.valid, at.runtime_time_ns))
        return sorted(readings, key=lambda reading: reading.t)


class _CurrentGLFW:
    """What pyopenxr's graphics bindings ask of a context: make it current."""

    def __init__(self, window):
        self.window = window

    def make_current(self) -> None:
        import glfw

        glfw.make_context_current(self.window)


class OpenXRBackend(HeadsetBackend):
    """Both eyes of a headset through OpenXR.

    Parameters
    ----------
    downscale : bool
        See :class:`viewer.renderer.Renderer`.
    render_scale : float
        Eye image size relative to the runtime's recommended size (1 in studies; tiny in benchmarks).
    read_pixels : bool
        :meth:`draw` returns every view's image as read back from its swapchain image (tests).
    """

    name = "openxr"

    def __init__(self, *, downscale: bool = False, render_scale: float = 1.0, read_pixels: bool = False):
        super().__init__(downscale=downscale)
        if not render_scale > 0:
            raise ValueError(f"render_scale={render_scale!r}: must be > 0")
        self.render_scale = render_scale
        self.read_pixels = read_pixels
        if read_pixels:
            self.capabilities = dataclasses.replace(self.capabilities, returns_pixels=True)
        self.instance = self.session = None
        self._xr = None
        self._lock = threading.Lock()
        self._lost: str | None = None
        self._running = False
        self._state = None
        self._frame_state = None
        self._frame_open = False
        self._views = ()
        self._swapchains: list = []
        self._spaces: list = []
        self._action_set = None
        self._info: dict[str, object] = {}
        self._head = np.eye(3)
        self._head_position = np.zeros(3)
        self._presses = PressEdge()
        self._pointer_hand = "right"
        self._stats = dict.fromkeys(("runtime_frames", "runtime_missed", "runtime_not_rendered"), 0)
        self._missed_since_open = 0
        self._last_display_ns: int | None = None
        self._eye_gaze: EyeGaze | None = None
        #: The views of the last drawn frame: world-from-eye rotation, position (m) and the XrFovf angles.
        self.last_views: list[tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]] = []

    # -- probing -------------------------------------------------------------------------------------------

    @classmethod
    def why_not(cls) -> str | None:
        try:
            import xr
        except ImportError as exc:
            return f"pyopenxr is not installed ({exc}); pip install 'panostudy[xr]'"
        instance = None
        try:
            with captured_stderr() as log:
                try:
                    offered = cls._offered_extensions(xr)
                    if OPENGL not in offered:
                        return f"the OpenXR runtime does not offer {OPENGL}; use a runtime with OpenGL support (SteamVR, Monado)"
                    instance = xr.create_instance(xr.InstanceCreateInfo(enabled_extension_names=[OPENGL]))
                    xr.get_system(instance, xr.SystemGetInfo(form_factor=xr.FormFactor.HEAD_MOUNTED_DISPLAY))
                finally:
                    if instance is not None:
                        with contextlib.suppress(xr.XrException):
                            xr.destroy_instance(instance)
        except xr.XrException as error:
            return _failure_reason(error, log[0] if log else "")
        return None

    @staticmethod
    def _offered_extensions(xr) -> list[str]:
        names = [e.extension_name for e in xr.enumerate_instance_extension_properties()]
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    # -- opening -------------------------------------------------------------------------------------------

    def open(self) -> None:
        try:
            import xr
        except ImportError as exc:
            raise BackendUnavailable(self.name, f"pyopenxr is not installed ({exc}); pip install 'panostudy[xr]'") from None
        self._xr = xr
        try:
            with captured_stderr() as log:
                try:
                    self._open_instance()
                except xr.XrException as error:
                    log_error = error
                else:
                    log_error = None
            if log_error is not None:
                raise BackendUnavailable(self.name, _failure_reason(log_error, log[0])) from None
            self._open_gl_session()
            self._open_swapchains()
            self._open_actions()
            self._wait_until_running()
        except BaseException as error:
            self.close()
            if isinstance(error, xr.XrException):
                raise BackendUnavailable(self.name, f"OpenXR failed while opening with {result_name(error)}: {error}") from None
            raise

    def _open_instance(self) -> None:
        xr = self._xr
        offered = self._offered_extensions(xr)
        if OPENGL not in offered:
            raise BackendUnavailable(self.name, f"the OpenXR runtime does not offer {OPENGL}; use a runtime with OpenGL support")
        clock = WIN32_TIME if sys.platform.startswith("win") else TIMESPEC
        wanted = [OPENGL, clock, EYE_GAZE]
        enabled = [name for name in wanted if name in offered]
        self.instance = xr.create_instance(xr.InstanceCreateInfo(
            application_info=xr.ApplicationInfo(application_name="panostudy", engine_name="panostudy",
                                                api_version=xr.Version(1, 0, 0)),
            enabled_extension_names=enabled,
        ))
        self._clock = clock if clock in enabled else None
        self.system = xr.get_system(self.instance, xr.SystemGetInfo(form_factor=xr.FormFactor.HEAD_MOUNTED_DISPLAY))
        properties = xr.SystemProperties()
        gaze = xr.SystemEyeGazeInteractionPropertiesEXT()
        if EYE_GAZE in enabled:
            properties.next = ctypes.cast(ctypes.pointer(gaze), ctypes.c_void_p)
        # pyopenxr's get_system_properties cannot chain the eye-gaze structure
        result = xr.check_result(xr.Result(xr.raw_functions.xrGetSystemProperties(self.instance, self.system, ctypes.byref(properties))))
        if result.is_exception():
            raise result
        runtime = xr.get_instance_properties(self.instance)
        self._info = {
            "runtime": _text(runtime.runtime_name),
            "runtime_version": str(xr.Version(runtime.runtime_version)),
            "system": _text(properties.system_name),
            "extensions_offered": {name: name in offered for name in wanted},
            "extensions_enabled": enabled,
            "eye_gaze_supported": bool(gaze.supports_eye_gaze_interaction) if EYE_GAZE in enabled else False,
        }

    def _open_gl_session(self) -> None:
        xr = self._xr
        # the spec requires this query before xrCreateSession
        requirements = xr.get_opengl_graphics_requirements_khr(self.instance, self.system)
        minimum = xr.Version(requirements.min_api_version_supported)
        version = max((4, 1), (minimum.major, minimum.minor))
        self._open_gl("panostudy (OpenXR)", version)
        from xr.utils.gl import GLXGraphicsBinding, WGLGraphicsBinding

        context = _CurrentGLFW(self._window)
        binding = WGLGraphicsBinding(context) if sys.platform.startswith("win") else GLXGraphicsBinding(context)
        self._binding = binding   # the session keeps a pointer into it
        self.session = xr.create_session(self.instance, xr.SessionCreateInfo(system_id=self.system, next=binding.pointer))
        kinds = list(xr.enumerate_reference_spaces(self.session))
        world_kind = xr.ReferenceSpaceType.STAGE if xr.ReferenceSpaceType.STAGE in kinds else xr.ReferenceSpaceType.LOCAL
        self.world_space = self._reference_space(world_kind)
        self.local_space = self._reference_space(xr.ReferenceSpaceType.LOCAL)
        self.view_space = self._reference_space(xr.ReferenceSpaceType.VIEW)
        self._info["reference_space"] = world_kind.name

    def _reference_space(self, kind):
        xr = self._xr
        space = xr.create_reference_space(self.session, xr.ReferenceSpaceCreateInfo(reference_space_type=kind))
        self._spaces.append(space)
        return space

    def _open_swapchains(self) -> None:
        xr = self._xr
        formats = list(xr.enumerate_swapchain_formats(self.session))
        chosen = next((f for f in SRGB_FORMATS if f in formats), None)
        if chosen is None:
            offered = ", ".join(hex(f) for f in formats)
            raise BackendUnavailable(self.name, f"the runtime offers no 8-bit sRGB swapchain format (offered: {offered})")
        configs = xr.enumerate_view_configuration_views(self.instance, self.system, xr.ViewConfigurationType.PRIMARY_STEREO)
        sizes = []
        for config in configs:
            width = int(min(config.max_image_rect_width, max(1, round(config.recommended_image_rect_width * self.render_scale))))
            height = int(min(config.max_image_rect_height, max(1, round(config.recommended_image_rect_height * self.render_scale))))
            handle = xr.create_swapchain(self.session, xr.SwapchainCreateInfo(
                usage_flags=xr.SwapchainUsageFlags.COLOR_ATTACHMENT_BIT | xr.SwapchainUsageFlags.SAMPLED_BIT,
                format=chosen, sample_count=1, width=width, height=height, face_count=1, array_size=1, mip_count=1,
            ))
            images = xr.enumerate_swapchain_images(handle, xr.SwapchainImageOpenGLKHR)
            fbos = []
            for image in images:
                texture = self.ctx.external_texture(image.image, (width, height), 4, 0, "f1")
                fbos.append(self.ctx.framebuffer(color_attachments=[texture]))
            self._swapchains.append((handle, (width, height), fbos))
            sizes.append([width, height])
        self._info.update(swapchain_format=hex(chosen), view_sizes=sizes)

    def _open_actions(self) -> None:
        xr = self._xr
        path = lambda text: xr.string_to_path(self.instance, text)   # noqa: E731
        self._hand_paths = {hand: path(f"/user/hand/{hand}") for hand in HANDS}
        subactions = list(self._hand_paths.values())
        self._action_set = xr.create_action_set(self.instance, xr.ActionSetCreateInfo(
            action_set_name="panostudy", localized_action_set_name="panostudy", priority=0))

        def action(name: str, kind) -> object:
            return xr.create_action(self._action_set, xr.ActionCreateInfo(
                action_name=name, action_type=kind, subaction_paths=subactions, localized_action_name=name))

        self._select = action("select", xr.ActionType.BOOLEAN_INPUT)
        self._aim = action("aim", xr.ActionType.POSE_INPUT)
        self._haptic = action("haptic", xr.ActionType.VIBRATION_OUTPUT)
        accepted = []
        for profile, (select, aim, haptic) in BINDINGS.items():
            suggested = [
                xr.ActionSuggestedBinding(act, path(f"/user/hand/{hand}/{where}"))
                for hand in HANDS
                for act, where in ((self._select, select), (self._aim, aim), (self._haptic, haptic))
            ]
            xr.suggest_interaction_profile_bindings(self.instance, xr.InteractionProfileSuggestedBinding(
                interaction_profile=path(profile), suggested_bindings=suggested))
            accepted.append(profile)
        if self._info.get("eye_gaze_supported"):
            self._eye_gaze = EyeGaze(xr, runtime_time=self.runtime_time, lock=self._lock, lost=self._lost_by)
            self._eye_gaze.suggest(self.instance, self._action_set)
            accepted.append(EYE_GAZE_PROFILE)
        xr.attach_session_action_sets(self.session, xr.SessionActionSetsAttachInfo(action_sets=[self._action_set]))
        if self._eye_gaze is not None:
            self._spaces.append(self._eye_gaze.attach(self.session, self.world_space))
        self._aim_spaces = {}
        for hand, hand_path in self._hand_paths.items():
            space = xr.create_action_space(self.session, xr.ActionSpaceCreateInfo(action=self._aim, subaction_path=hand_path))
            self._spaces.append(space)
            self._aim_spaces[hand] = space
        self._info.update(bindings_accepted=accepted, action_set_attached=True)

    def _wait_until_running(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._running:
            self._poll_events()
            if self._lost is not None:
                raise BackendUnavailable(self.name, self._lost)
            if time.monotonic() > deadline:
                state = self._state.name if self._state is not None else "none"
                raise BackendUnavailable(
                    self.name, f"the OpenXR runtime did not make the session ready within {READY_TIMEOUT_S:g} s (state {state}); check the headset"
                )
            time.sleep(0.01)

    # -- events and frames ---------------------------------------------------------------------------------

    def _poll_events(self) -> None:
        """Handles the runtime's events; the session state machine lives here."""
        xr = self._xr
        while True:
            try:
                event = xr.poll_event(self.instance)
            except xr.EventUnavailable:
                return
            kind = xr.StructureType(event.type)
            if kind == xr.StructureType.EVENT_DATA_INSTANCE_LOSS_PENDING:
                self._lose("the OpenXR runtime is shutting down (instance loss pending)")
            elif kind == xr.StructureType.EVENT_DATA_SESSION_STATE_CHANGED:
                changed = ctypes.cast(ctypes.byref(event), ctypes.POINTER(xr.EventDataSessionStateChanged)).contents
                self._state = state = xr.SessionState(changed.state)
                if state == xr.SessionState.READY:
                    xr.begin_session(self.session, xr.SessionBeginInfo(xr.ViewConfigurationType.PRIMARY_STEREO))
                    self._running = True
                elif state == xr.SessionState.STOPPING:
                    self._running = False
                    xr.end_session(self.session)
                    self._lose("the OpenXR runtime stopped the session (state STOPPING)")
                elif state == xr.SessionState.LOSS_PENDING:
                    self._lose("the OpenXR runtime is losing the session (state LOSS_PENDING)")
                elif state == xr.SessionState.EXITING:
                    self._lose("the OpenXR runtime ended the session (state EXITING)")

    def _lose(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason

    def _lost_by(self, error: Exception, call: str) -> None:
        self._lose(f"the OpenXR runtime went away ({result_name(error)} in {call})")

    def poll_input(self) -> FrameInput:
        xr = self._xr
        events: list[InputEvent] = []
        pointer = None
        if self._lost is None:
            step = "xrPollEvent"
            try:
                self._poll_events()
                if self._running and self._lost is None:
                    step = "xrWaitFrame"
                    self._begin_frame()
                    time_ns = self._frame_state.predicted_display_time
                    step = "xrLocateViews"
                    self._locate(time_ns)
                    step = "xrSyncActions"
                    pointer = self._controllers(time_ns, events)
                elif self._lost is None:
                    time.sleep(0.01)   # no xrWaitFrame to pace a session that is not running
            except xr.XrException as error:
                self._lost_by(error, step)
        if self._lost is not None:
            events.append(InputEvent("quit", key=self._lost))
        return FrameInput(head=self._head, pointer=pointer, events=tuple(events), head_position=self._head_position)

    def _begin_frame(self) -> None:
        xr = self._xr
        state = xr.wait_frame(self.session)
        with contextlib.suppress(xr.FrameDiscarded):   # a success: the previous frame was never shown
            xr.begin_frame(self.session)
        self._frame_state, self._frame_open = state, True
        display, period = int(state.predicted_display_time), int(state.predicted_display_period)
        self._stats["runtime_frames"] += 1
        self._stats["runtime_not_rendered"] += not state.should_render
        if self._last_display_ns is not None and period > 0:
            missed = max(0, round((display - self._last_display_ns) / period) - 1)
            self._stats["runtime_missed"] += missed
            self._missed_since_open += missed
        self._last_display_ns = display

    def _locate(self, time_ns: int) -> None:
        xr = self._xr
        _, views = xr.locate_views(self.session, xr.ViewLocateInfo(
            view_configuration_type=xr.ViewConfigurationType.PRIMARY_STEREO, display_time=time_ns, space=self.world_space))
        self._views = tuple(views)
        head = xr.locate_space(self.view_space, self.world_space, time_ns)
        if head.location_flags & xr.SPACE_LOCATION_ORIENTATION_VALID_BIT:
            self._head = _rotation(head.pose.orientation)
        if head.location_flags & xr.SPACE_LOCATION_POSITION_VALID_BIT:
            self._head_position = _position(head.pose.position)

    def _controllers(self, time_ns: int, events: list[InputEvent]):
        xr = self._xr
        with contextlib.suppress(xr.SessionNotFocused):   # a success: inputs are inactive until focused
            xr.sync_actions(self.session, xr.ActionsSyncInfo(active_action_sets=[xr.ActiveActionSet(self._action_set, 0)]))
        rays = {}
        for hand in HANDS:
            where = xr.locate_space(self._aim_spaces[hand], self.world_space, time_ns)
            valid = xr.SPACE_LOCATION_ORIENTATION_VALID_BIT | xr.SPACE_LOCATION_POSITION_VALID_BIT
            if where.location_flags & valid == valid:
                rays[hand] = laser_ray(_rotation(where.pose.orientation), _position(where.pose.position))
            select = xr.get_action_state_boolean(self.session, xr.ActionStateGetInfo(self._select, self._hand_paths[hand]))
            click = self._presses.update(hand, bool(select.is_active and select.current_state), rays.get(hand))
            if click is not None:
                self._pointer_hand = hand
                events.append(click)
        if self._eye_gaze is not None:
            self._eye_gaze.sync(time_ns)
        return rays.get(self._pointer_hand) or next(iter(rays.values()), None)

    def draw(self, frame: Frame) -> list[np.ndarray] | None:
        if not self._frame_open:
            return None
        xr = self._xr
        self._frame_open = False
        images = []
        step = "xrAcquireSwapchainImage"
        try:
            layers = []
            if self._frame_state.should_render and len(self._views) == len(self._swapchains):
                projection_views = []
                self.last_views = []
                for index, (view, (handle, size, fbos)) in enumerate(zip(self._views, self._swapchains)):
                    step = "xrAcquireSwapchainImage"
                    image = xr.acquire_swapchain_image(handle, xr.SwapchainImageAcquireInfo())
                    xr.wait_swapchain_image(handle, xr.SwapchainImageWaitInfo(timeout=xr.INFINITE_DURATION))
                    fov = (view.fov.angle_left, view.fov.angle_right, view.fov.angle_up, view.fov.angle_down)
                    rotation, position = _rotation(view.pose.orientation), _position(view.pose.position)
                    self._draw_eye(index, fbos[image], EyeView(tangents_from_fov(*fov), rotation, position), frame)
                    if self.read_pixels:
                        pixels = np.frombuffer(fbos[image].read(components=3, alignment=1), np.uint8)
                        images.append(pixels.reshape(size[1], size[0], 3)[::-1])
                    step = "xrReleaseSwapchainImage"
                    xr.release_swapchain_image(handle, xr.SwapchainImageReleaseInfo())
                    self.last_views.append((rotation, position, fov))
                    sub_image = xr.SwapchainSubImage(swapchain=handle, image_rect=xr.Rect2Di(extent=xr.Extent2Di(*size)))
                    projection_views.append(xr.CompositionLayerProjectionView(pose=view.pose, fov=view.fov, sub_image=sub_image))
                self._layer = xr.CompositionLayerProjection(space=self.world_space, views=projection_views)
                layers.append(ctypes.byref(self._layer))
            step = "xrEndFrame"
            xr.end_frame(self.session, xr.FrameEndInfo(
                display_time=self._frame_state.predicted_display_time,
                environment_blend_mode=xr.EnvironmentBlendMode.OPAQUE, layers=layers))
        except xr.XrException as error:
            self._lost_by(error, step)
        self._clear_gl_errors()
        return images if self.read_pixels else None

    # -- the rest of the interface -------------------------------------------------------------------------

    def tick(self) -> None:
        xr = self._xr
        if self._lost is not None or self.session is None:
            return
        vibration = xr.HapticVibration(duration=int(HAPTIC_S * 1e9), frequency=xr.FREQUENCY_UNSPECIFIED,
                                       amplitude=HAPTIC_AMPLITUDE)
        try:
            xr.apply_haptic_feedback(self.session, xr.HapticActionInfo(self._haptic, self._hand_paths[self._pointer_hand]), vibration)
        except xr.XrException as error:
            self._lost_by(error, "xrApplyHapticFeedback")

    def timing_stats(self) -> dict[str, float]:
        stats, self._stats = self._stats, dict.fromkeys(self._stats, 0)
        return stats

    def dropped_frames(self) -> int | None:
        """Display periods the runtime's predicted display times skipped since :meth:`open`: frames missed."""
        return self._missed_since_open

    def describe(self) -> dict[str, object]:
        return dict(self._info)

    def gaze_source(self) -> EyeGaze | None:
        return self._eye_gaze

    def why_no_gaze(self) -> str:
        offered = self._info.get("extensions_offered", {}).get(EYE_GAZE)
        if not offered:
            return f"the OpenXR runtime does not offer {EYE_GAZE}"
        system = self._info.get("system", "the headset")
        return f"{system} reports no eye-gaze support (supportsEyeGazeInteraction is false)"

    def runtime_time(self, monotonic_ns: int) -> int | None:
        """The runtime's ``XrTime`` of a ``time.monotonic_ns()`` instant, or None without a clock extension."""
        xr = self._xr
        if self._clock == TIMESPEC:
            seconds, nanoseconds = divmod(monotonic_ns, 1_000_000_000)
            return int(xr.convert_timespec_time_to_time_khr(self.instance, xr.timespec(seconds, nanoseconds)).value)
        if self._clock == WIN32_TIME:
            counter = ctypes.c_int64()
            ctypes.windll.kernel32.QueryPerformanceCounter(ctypes.byref(counter))
            now = time.monotonic_ns()
            return int(xr.convert_win32_performance_counter_to_time_khr(self.instance, counter).value) + (monotonic_ns - now)
        return None

    def head_at(self, monotonic_ns: int) -> HeadSample | None:
        xr = self._xr
        with self._lock:
            if self.session is None or self._lost is not None:
                return None
            try:
                runtime_ns = self.runtime_time(monotonic_ns)
                if runtime_ns is None:
                    return None
                where = xr.locate_space(self.view_space, self.world_space, runtime_ns)
            except xr.XrException as error:
                self._lost_by(error, "xrLocateSpace")
                return None
        if not where.location_flags & xr.SPACE_LOCATION_ORIENTATION_VALID_BIT:
            return None
        position = _position(where.pose.position) if where.location_flags & xr.SPACE_LOCATION_POSITION_VALID_BIT else None
        return HeadSample(head=_rotation(where.pose.orientation), position=position, runtime_time_ns=runtime_ns)

    def close(self) -> None:
        xr = self._xr
        if xr is None:
            return
        with self._lock:
            if self.session is not None and self._running and self._lost is None:
                self._end_session()
            for swapchain in self._swapchains:
                for fbo in swapchain[2]:
                    fbo.release()
            # the runtime frees its GL swapchain textures in our context: destroy while it is current
            handles = [(xr.destroy_swapchain, s[0]) for s in self._swapchains] + [(xr.destroy_space, s) for s in self._spaces]
            handles += [(xr.destroy_action_set, self._action_set), (xr.destroy_session, self.session)]
            with captured_stderr():
                for destroy, handle in handles:
                    if handle is not None:
                        with contextlib.suppress(xr.XrException):
                            destroy(handle)
                self._close_gl()
                if self.instance is not None:
                    with contextlib.suppress(xr.XrException):
                        xr.destroy_instance(self.instance)
            self._swapchains, self._spaces = [], []
            if self._eye_gaze is not None:
                self._eye_gaze.space = None
            self._action_set = self.session = self.instance = None
            self._xr = None

    def _end_session(self) -> None:
        """Asks the runtime to stop the session and ends it once it says STOPPING (or gives up after 1 s)."""
        xr = self._xr
        try:
            xr.request_exit_session(self.session)
            deadline = time.monotonic() + 1.0
            while self._running and time.monotonic() < deadline:
                try:
                    self._poll_events()
                except xr.XrException:
                    return
                if self._running:
                    time.sleep(0.005)
        except xr.XrException:
            return


def _rotation(q) -> np.ndarray:
    return Rotation.from_quat((q.x, q.y, q.z, q.w)).as_matrix()


def _position(p) -> np.ndarray:
    return np.array((p.x, p.y, p.z), dtype=np.float64)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
