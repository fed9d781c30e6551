"""The small interface every viewer backend implements, and the registry that picks one by name.

A backend owns a GL context, the eye framebuffers and the input devices; it draws a :class:`Frame`
with the shared :class:`viewer.renderer.Renderer`. Each backend is one module that imports its
third-party library (moderngl, glfw, openvr, pyopenxr) inside its methods, so importing :mod:`viewer`
never needs a display, SteamVR or an OpenXR runtime.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

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
    """One input: a key ("0".."9", "left", "right", "enter", "escape"), a pointer click, or quit."""

    kind: Literal["key", "click", "quit"]
    key: str | None = None
    ray: Ray | None = None


@dataclass(frozen=True)
class FrameInput:
    """What :meth:`Backend.poll_input` returns: the head orientation (world-from-head), the pointer ray
    if there is one, the events since the last poll, the head position (metres, in the tracking
    space the pointer uses) where a tracker reports one, and the tracker's own time stamp of that pose
    (an OpenXR ``XrTime``, nanoseconds) where the runtime has one."""

    head: np.ndarray
    pointer: Ray | None = None
    events: tuple[InputEvent, ...] = ()
    head_position: np.ndarray | None = None
    runtime_time_ns: int | None = None


@dataclass(frozen=True)
class HeadSample:
    """The head at one instant, as :meth:`Backend.head_at` reports it."""

    head: np.ndarray                      # 3x3 world-from-head rotation
    position: np.ndarray | None = None    # metres, tracking space
    fov_deg: tuple[float, float] | None = None   # None for a headset
    runtime_time_ns: int | None = None    # the runtime's own time stamp (XrTime)


@dataclass(frozen=True)
class Frame:
    """What to draw: a stimulus texture (None for grey), the fade towards grey, the panel, and for
    backends without a tracker, the head orientation to draw from."""

    stimulus: object | None = None
    fade: float = 0.0
    panel: PanelQuad | None = None
    head: np.ndarray | None = None


class Backend(ABC):
    """A place to show frames: open, draw, poll input, fade, close."""

    name: str = ""
    capabilities: Capabilities
    renderer: Renderer

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
        """The head at that ``time.monotonic_ns()`` instant, or None where the backend cannot tell.

        Callable from a pose-sampling thread while the render thread draws.
        """
        return None

    def describe(self) -> dict[str, object]:
        """What the session should record about this backend once open (runtime, extensions, ...)."""
        return {}

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
