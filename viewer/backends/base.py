"""The small interface every viewer backend implements, and the registry that picks one by name.

A backend owns a GL context, the eye framebuffers and the input devices; it draws a :class:`Frame`
with the shared :class:`viewer.renderer.Renderer`. Each backend is one module that imports its
third-party library (moderngl, glfw, openvr, pyopenxr) inside its methods, so importing :mod:`viewer`
never needs a display, SteamVR or an OpenXR runtime.

Four small seams serve the session around the frames:

* **Poses on time.** :meth:`Backend.head_at` gives the head at a given ``time.monotonic_ns()`` value; the
  session's pose sampler calls it from its own thread at exactly the protocol's rate, whatever the frame
  rate. A headset asks its runtime for the pose at that time; the desktop answers from the history of its
  view state.
* **The experimenter's console.** A backend that can, hands the console a mirror of one eye by calling
  :meth:`Backend.capture_mirror` from :meth:`Backend.draw` with that eye's framebuffer once the image is
  complete (before a buffer swap); the runner attaches :attr:`Backend.mirror` only while the console asks
  for it, so it costs nothing otherwise. :meth:`Backend.dropped_frames` is the compositor's running count
  the console shows.
* **Eye gaze.** :meth:`Backend.gaze_source` is the backend's eye tracker, if it has one (``viewer.gaze``); the
  session records while a stimulus or a validation target is shown, and says :meth:`Backend.why_no_gaze`
  when there is none.
* **A runtime that goes away** (headset lost, runtime exiting) is reported by :meth:`Backend.poll_input`
  as ``InputEvent("quit", key="<one-line reason>")``: the run stops at once as interrupted (resumable).
  Escape (``InputEvent("key", "escape")``) asks the participant's window for confirmation first.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from study.errors import BackendUnavailable
from viewer.renderer import PanelQuad, Renderer

#: Backend name → "module:Class", imported only when chosen.
BACKENDS: dict[str, str] = {
    "headless": "viewer.backends.headless:HeadlessBackend",
    "desktop": "viewer.backends.desktop:DesktopBackend",
    "openvr": "viewer.backends.openvr:OpenVRBackend",
    "openxr": "viewer.backends.openxr:OpenXRBackend",
}


@dataclass(frozen=True)
class Capabilities:
    """What a backend offers."""

    stereo: bool                # draws two eyes
    head_tracking: bool         # the head orientation comes from a tracker, not from the mouse or a script
    pointer: bool               # a pointer ray (controller laser or mouse) can aim at the panel
    returns_pixels: bool        # draw() returns the eye images as arrays
    paced: bool                 # draw() waits for the display (vsync / compositor), so no sleep is needed


@dataclass(frozen=True)
class Ray:
    """A pointer ray in world coordinates."""

    origin: np.ndarray
    direction: np.ndarray


@dataclass(frozen=True)
class InputEvent:
    """One input: a key ("0".."9", "left", "right", "pageup", "pagedown", "enter", "escape"), a pointer
    click, or quit (the runtime went away; ``key`` holds the one-line reason)."""

    kind: Literal["key", "click", "quit"]
    key: str | None = None
    ray: Ray | None = None


@dataclass(frozen=True)
class FrameInput:
    """What :meth:`Backend.poll_input` returns: the head orientation (world-from-head), the pointer ray
    if there is one, the events since the last poll, and the head position (metres, in the tracking
    space the pointer uses) where a tracker reports one."""

    head: np.ndarray
    pointer: Ray | None = None
    events: tuple[InputEvent, ...] = ()
    head_position: np.ndarray | None = None


@dataclass(frozen=True)
class HeadSample:
    """The head at one moment, as :meth:`Backend.head_at` reports it."""

    head: np.ndarray                      # 3x3 world-from-head rotation
    position: np.ndarray | None = None    # metres, tracking space, where a tracker reports one
    fov_deg: tuple[float, float] | None = None   # (horizontal, vertical) FOV of the view shown where the app sets it (desktop); None for a headset
    runtime_time_ns: int | None = None    # the runtime's own time stamp of the pose (XrTime), None without a runtime


class MirrorSink(Protocol):
    """Where :meth:`Backend.capture_mirror` sends a framebuffer (``viewer.console_link.Mirror``)."""

    def capture(self, framebuffer) -> None:
        """Copies a downscaled image of ``framebuffer`` for the console when one is due (a few per second)."""


@dataclass(frozen=True)
class Frame:
    """What to draw: a stimulus texture (None for grey), the fade towards grey, the panel, for backends
    without a tracker the head orientation to draw from, and a validation target on the grey (its unit
    direction in the world frame)."""

    stimulus: object | None = None
    fade: float = 0.0
    panel: PanelQuad | None = None
    head: np.ndarray | None = None
    target: np.ndarray | None = None


class Backend(ABC):
    """A place to show frames: open, draw, poll input, fade, close."""

    name: str = ""
    capabilities: Capabilities
    renderer: Renderer
    #: Set by the session runner while the experimenter's console shows the mirror; see capture_mirror.
    mirror: MirrorSink | None = None

    @classmethod
    @abstractmethod
    def why_not(cls) -> str | None:
        """None if the backend can run here, else a one-line reason the user can act on."""

    @abstractmethod
    def open(self) -> None:
        """Creates the context, eye buffers and :attr:`renderer`; :class:`BackendUnavailable` on failure."""

    @abstractmethod
    def draw(self, frame: Frame) -> list[np.ndarray] | None:
        """Draws and presents one frame; eye images ``(H, W, 3) uint8`` if :attr:`capabilities` says so."""

    @abstractmethod
    def poll_input(self) -> FrameInput:
        """The head orientation, pointer and input events since the last call."""

    def fade_to_grey(self, seconds: float, grey: bool) -> None:
        """Asks the display itself to fade to (``grey``) or back from neutral grey over ``seconds``.

        The renderer fades inside the eye buffers in every backend; a compositor may add its own fade.
        """

    def tick(self) -> None:
        """A short haptic pulse confirming a selection, where there is a controller to pulse."""

    def timing_stats(self) -> dict[str, float]:
        """Display-side frame statistics since the last call (dropped frames, ...); empty by default."""
        return {}

    def head_at(self, monotonic_ns: int) -> HeadSample | None:
        """The head at ``time.monotonic_ns()`` value ``monotonic_ns``.

        Must be safe to call from the pose-sampling thread while the render thread draws. None: the
        backend has no tracker, and the runner uses its own view state (a scripted head). A backend with
        a tracker (``capabilities.head_tracking``) returns None when the tracker has no valid pose for that
        time; the sample is then missing, and counts against the trial's achieved pose rate.
        """
        return None

    def reset_view(self, yaw_deg: float, pitch_deg: float = 0.0, *, fov_deg: float | None = None,
                   locked: bool = False) -> None:
        """Points a view the application controls (the desktop's) at ``yaw_deg``/``pitch_deg`` with
        horizontal field of view ``fov_deg`` (None keeps it), and locks it against dragging and zooming
        while ``locked`` (rating panels). A headset's view follows the head: it ignores this."""

    def capture_mirror(self, framebuffer) -> None:
        """Hands the console's mirror the eye image in ``framebuffer``: call it from :meth:`draw` for the
        left eye once its image is complete, before a buffer swap. A no-op unless the console asks."""
        if self.mirror is not None:
            self.mirror.capture(framebuffer)

    def dropped_frames(self) -> int | None:
        """Frames the display dropped since :meth:`open` (a headset compositor's count); None where nothing
        counts them."""
        return None

    def describe(self) -> dict[str, object]:
        """What the session should record about this backend once open (runtime, extensions, ...)."""
        return {}

    def gaze_source(self):
        """The eye tracker once open (a ``viewer.gaze.GazeSource``), or None; then :meth:`why_no_gaze` says why."""
        return None

    def why_no_gaze(self) -> str:
        """Why :meth:`gaze_source` is None, in a few words for the data and the experimenter's console."""
        return f"the {self.name} backend has no eye tracker"

    @abstractmethod
    def close(self) -> None:
        """Releases everything :meth:`open` created; safe to call twice."""

    def __enter__(self) -> Backend:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``.

    Raises
    ------
    BackendUnavailable
        If ``name`` is not registered.
    """
    if name not in BACKENDS:
        raise BackendUnavailable(name, f"unknown backend; choose one of {', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
