"""Desktop backend: a GLFW window for pilots and for studies without a headset.

Drag with the left mouse button to look around, scroll to change the field of view, click a panel
button or press digits / arrows and Enter to answer, Page Up / Page Down to turn a panel's pages, Escape
(or closing the window) to ask to stop (the session can be resumed). While a panel is up the view is
fixed: dragging and scrolling do nothing.

The view state (yaw, pitch, field of view) is kept with the time of every change, so :meth:`head_at`
answers for any recent moment, from the pose-sampling thread, exactly.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
import time

import numpy as np

from study.errors import BackendUnavailable
from viewer.backends.base import Backend, Capabilities, Frame, FrameInput, HeadSample, InputEvent, Ray
from viewer.camera import Tangents, pixel_ray, view_rotation, yaw_pitch_roll
from viewer.renderer import EyeView, Renderer

#: Pixels the mouse may move between press and release for it to count as a click, not a drag.
CLICK_SLOP_PX = 4
#: Degrees of view rotation per pixel of mouse drag.
DRAG_DEG_PER_PX = 0.15
#: How far back :meth:`DesktopBackend.head_at` can answer (the sampler asks for times just past).
HISTORY_NS = 5 * 10**9


class DesktopBackend(Backend):
    """A ``width`` × ``height`` window (or the whole primary screen with ``fullscreen``) showing one eye
    with a horizontal field of view of ``fov_deg``."""

    name = "desktop"
    capabilities = Capabilities(stereo=False, head_tracking=False, pointer=True, returns_pixels=False, paced=True)

    def __init__(self, width: int = 1280, height: int = 720, *, fov_deg: float = 90.0, downscale: bool = False,
                 title: str = "panostudy", fullscreen: bool = False):
        self.width, self.height, self.fov_deg = width, height, fov_deg
        self.downscale, self.title, self.fullscreen = downscale, title, fullscreen
        self.yaw = self.pitch = 0.0
        self.locked = False
        self.window = None
        self.ctx = None
        self._events: list[InputEvent] = []
        self._press: tuple[float, float] | None = None
        self._last: tuple[float, float] | None = None
        self._history: list[tuple[int, float, float, float, float]] = []   # (ns, yaw, pitch, h fov, v fov)
        self._history_lock = threading.Lock()
        self._aspect = height / width

    @classmethod
    def why_not(cls) -> str | None:
        try:
            import glfw
        except ImportError as exc:
            return f"glfw is not installed ({exc}); pip install 'panostudy[viewer]'"
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and os.name == "posix" and not _is_macos():
            return "no display (DISPLAY and WAYLAND_DISPLAY are unset); run on a desktop, under xvfb-run, or use --backend headless"
        if not glfw.init():
            return "GLFW could not initialise the windowing system; check the display or use --backend headless"
        return None

    def open(self) -> None:
        reason = self.why_not()
        if reason is not None:
            raise BackendUnavailable(self.name, reason)
        import glfw
        import moderngl

        glfw.window_hint(glfw.CONTEXT_VERSION_MAJOR, 3)
        glfw.window_hint(glfw.CONTEXT_VERSION_MINOR, 3)
        glfw.window_hint(glfw.OPENGL_PROFILE, glfw.OPENGL_CORE_PROFILE)
        glfw.window_hint(glfw.OPENGL_FORWARD_COMPAT, True)
        monitor = glfw.get_primary_monitor() if self.fullscreen else None
        if monitor:
            mode = glfw.get_video_mode(monitor)
            self.width, self.height = mode.size.width, mode.size.height
        self.window = glfw.create_window(self.width, self.height, self.title, monitor or None, None)
        if not self.window:
            glfw.terminate()
            raise BackendUnavailable(self.name, "GLFW could not create an OpenGL 3.3 core window; update the graphics driver")
        glfw.make_context_current(self.window)
        glfw.swap_interval(1)
        self.ctx = moderngl.create_context(require=330)
        self.renderer = Renderer(self.ctx, downscale=self.downscale)
        glfw.set_key_callback(self.window, self._on_key)
        glfw.set_mouse_button_callback(self.window, self._on_button)
        glfw.set_cursor_pos_callback(self.window, self._on_cursor)
        glfw.set_scroll_callback(self.window, self._on_scroll)
        w, h = glfw.get_framebuffer_size(self.window)
        self._aspect = h / max(w, 1)
        self._remember()

    # -- GLFW callbacks ----------------------------------------------------------------------------------

    def _on_key(self, window, key, scancode, action, mods) -> None:
        import glfw

        if action != glfw.PRESS:
            return
        names = {glfw.KEY_LEFT: "left", glfw.KEY_RIGHT: "right", glfw.KEY_ENTER: "enter", glfw.KEY_KP_ENTER: "enter",
                 glfw.KEY_PAGE_UP: "pageup", glfw.KEY_PAGE_DOWN: "pagedown", glfw.KEY_ESCAPE: "escape"}
        if glfw.KEY_0 <= key <= glfw.KEY_9:
            self._events.append(InputEvent("key", str(key - glfw.KEY_0)))
        elif glfw.KEY_KP_0 <= key <= glfw.KEY_KP_9:
            self._events.append(InputEvent("key", str(key - glfw.KEY_KP_0)))
        elif key in names:
            self._events.append(InputEvent("key", names[key]))

    def _on_button(self, window, button, action, mods) -> None:
        import glfw

        if button != glfw.MOUSE_BUTTON_LEFT:
            return
        # the position of the cursor events so far, not the pointer's position now: events queued within
        # one poll would otherwise turn a fast drag into a click
        x, y = self._last if self._last is not None else glfw.get_cursor_pos(window)
        if action == glfw.PRESS:
            self._press = self._last = (x, y)
        elif action == glfw.RELEASE and self._press is not None:
            if math.dist(self._press, (x, y)) <= CLICK_SLOP_PX:
                self._events.append(InputEvent("click", ray=self._ray(x, y)))
            self._press = None

    def _on_cursor(self, window, x, y) -> None:
        if self._press is not None and self._last is not None and not self.locked:
            self.yaw = (self.yaw - (x - self._last[0]) * DRAG_DEG_PER_PX + 180.0) % 360.0 - 180.0
            self.pitch = float(np.clip(self.pitch + (y - self._last[1]) * DRAG_DEG_PER_PX, -89.0, 89.0))
        self._last = (x, y)

    def _on_scroll(self, window, dx, dy) -> None:
        if not self.locked:
            self.fov_deg = float(np.clip(self.fov_deg - 5.0 * dy, 30.0, 120.0))

    # -- view state --------------------------------------------------------------------------------------

    def _fov_pair(self) -> tuple[float, float]:
        tx = math.tan(math.radians(self.fov_deg) / 2)
        return self.fov_deg, 2 * math.degrees(math.atan(tx * self._aspect))

    def _remember(self) -> None:
        """Records the view state as of now, if it changed, for head_at."""
        state = (self.yaw, self.pitch, *self._fov_pair())
        now = time.monotonic_ns()
        with self._history_lock:
            if self._history and self._history[-1][1:] == state:
                return
            self._history.append((now, *state))
            # keep the newest state older than the window: it is the state at every time in the window's start
            cut = bisect.bisect_left(self._history, (now - HISTORY_NS,))
            if cut > 1:
                del self._history[: cut - 1]

    def head_at(self, monotonic_ns: int) -> HeadSample | None:
        with self._history_lock:
            index = bisect.bisect_right(self._history, (monotonic_ns, math.inf)) - 1
            _, yaw, pitch, h_fov, v_fov = self._history[max(index, 0)]
        return HeadSample(view_rotation(yaw, pitch), fov_deg=(h_fov, v_fov))

    def reset_view(self, yaw_deg: float, pitch_deg: float = 0.0, *, fov_deg: float | None = None,
                   locked: bool = False) -> None:
        self.yaw, self.pitch = float(yaw_deg), float(pitch_deg)
        if fov_deg is not None:
            self.fov_deg = float(fov_deg)
        self.locked = locked
        self._press = None   # a drag in progress does not carry into the new view
        self._remember()

    # -- Backend -----------------------------------------------------------------------------------------

    def _tangents(self) -> Tangents:
        import glfw

        w, h = glfw.get_framebuffer_size(self.window)
        tx = math.tan(math.radians(self.fov_deg) / 2)
        ty = tx * h / max(w, 1)
        return Tangents(-tx, tx, -ty, ty)

    def _ray(self, x: float, y: float) -> Ray:
        import glfw

        w, h = glfw.get_window_size(self.window)
        return Ray(np.zeros(3), pixel_ray(self._tangents(), view_rotation(self.yaw, self.pitch), x, y, w, h))

    def poll_input(self) -> FrameInput:
        import glfw

        glfw.poll_events()
        if glfw.window_should_close(self.window):
            # closing the window asks, like Escape, before anything stops
            glfw.set_window_should_close(self.window, False)
            self._events.append(InputEvent("key", "escape"))
        w, h = glfw.get_framebuffer_size(self.window)
        self._aspect = h / max(w, 1)
        self._remember()
        events, self._events = tuple(self._events), []
        x, y = glfw.get_cursor_pos(self.window)
        return FrameInput(head=view_rotation(self.yaw, self.pitch), pointer=self._ray(x, y), events=events)

    def draw(self, frame: Frame) -> None:
        import glfw

        if frame.head is not None:
            # a scripted head is the view state too, so head_at reports what is shown
            self.yaw, self.pitch, _ = yaw_pitch_roll(frame.head)
            self._remember()
        head = frame.head if frame.head is not None else view_rotation(self.yaw, self.pitch)
        screen = self.ctx.detect_framebuffer()
        eye = EyeView(self._tangents(), head, np.zeros(3))
        self.renderer.draw_eye(screen, eye, stimulus=frame.stimulus, fade=frame.fade, panel=frame.panel,
                               target=frame.target)
        self.capture_mirror(screen)
        glfw.swap_buffers(self.window)
        return None

    def close(self) -> None:
        if self.window is None:
            return
        import glfw

        self.renderer.release()
        self.ctx.release()
        glfw.destroy_window(self.window)
        glfw.terminate()
        self.window = None


def _is_macos() -> bool:
    import sys

    return sys.platform == "darwin"
