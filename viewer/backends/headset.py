"""What both headset backends (``openvr`` and ``openxr``) share, once.

- the hidden GLFW window whose OpenGL context the runtime composites from, and the renderer in it;
- drawing each eye with the shared renderer: panorama, the fade to grey and the panel are all drawn
  into the eye images (OpenXR has no compositor fade; OpenVR's is only added on top);
- the controller laser: a ray along the aim pose's -z axis, and a click on the trigger's press edge,
  which the panel hit-tests like any pointer ray (:meth:`viewer.panel.Panel.hit`);
- the experimenter's console: the left eye handed to the console's mirror
  (:meth:`~viewer.backends.base.Backend.capture_mirror`) as soon as it is drawn, before the runtime takes
  the image; the display counts reported through :meth:`~viewer.backends.base.Backend.timing_stats` and
  :meth:`~viewer.backends.base.Backend.dropped_frames`;
- poses on time: :meth:`~viewer.backends.base.Backend.head_at` asks the runtime for the pose at the
  sample's own time; a view that follows the head ignores
  :meth:`~viewer.backends.base.Backend.reset_view`.

Each backend file keeps only what its VR API needs (session, swapchains or submits, actions).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

import numpy as np

from study.errors import BackendUnavailable
from viewer.backends.base import Backend, Capabilities, Frame, InputEvent, Ray
from viewer.renderer import EyeView, Renderer

#: OpenGL's sRGB-encoding switch; kept off, because the shaders write sRGB codes themselves.
GL_FRAMEBUFFER_SRGB = 0x8DB9


def laser_ray(rotation: np.ndarray, position: np.ndarray) -> Ray:
    """The laser of a controller whose aim pose is ``rotation`` (world-from-controller) at ``position``.

    Both OpenVR and OpenXR aim poses point down their own -z axis.
    """
    return Ray(np.asarray(position, dtype=np.float64), -np.asarray(rotation, dtype=np.float64)[:, 2])


class PressEdge:
    """Turns a button's level into one click per press, with the laser of the hand that pressed it."""

    def __init__(self):
        self._down: dict[str, bool] = {}

    def update(self, hand: str, pressed: bool, ray: Ray | None) -> InputEvent | None:
        """A click if ``hand``'s button went down since the last update and its laser is known."""
        was_down, self._down[hand] = self._down.get(hand, False), pressed
        if pressed and not was_down and ray is not None:
            return InputEvent("click", ray=ray)
        return None


class HeadsetBackend(Backend):
    """Both eyes of a tracked headset, drawn by the shared renderer into eye images a runtime composites.

    Parameters
    ----------
    downscale : bool
        See :class:`viewer.renderer.Renderer`.
    """

    capabilities = Capabilities(stereo=True, head_tracking=True, pointer=True, returns_pixels=False, paced=True)

    def __init__(self, *, downscale: bool = False):
        self.downscale = downscale
        self.renderer = None
        self.ctx = None
        self._window = None

    # -- GL ------------------------------------------------------------------------------------------------

    def _open_gl(self, title: str, version: tuple[int, int] = (4, 1)) -> None:
        """A hidden GLFW window with an OpenGL ``version`` core context, current, and the renderer in it."""
        import glfw
        import moderngl

        if not glfw.init():
            raise BackendUnavailable(self.name, "GLFW could not initialise; the headset needs a desktop session with a GPU")
        glfw.window_hint(glfw.CONTEXT_VERSION_MAJOR, version[0])
        glfw.window_hint(glfw.CONTEXT_VERSION_MINOR, version[1])
        glfw.window_hint(glfw.OPENGL_PROFILE, glfw.OPENGL_CORE_PROFILE)
        glfw.window_hint(glfw.VISIBLE, False)
        self._window = glfw.create_window(320, 180, title, None, None)
        if not self._window:
            glfw.terminate()
            raise BackendUnavailable(
                self.name, f"GLFW could not create an OpenGL {version[0]}.{version[1]} context for the runtime; update the graphics driver"
            )
        glfw.make_context_current(self._window)
        # the runtime paces frames; vsync on the hidden window would only add latency
        glfw.swap_interval(0)
        self.ctx = moderngl.create_context(require=version[0] * 100 + version[1] * 10)
        self.renderer = Renderer(self.ctx, downscale=self.downscale)

    def _draw_eye(self, index: int, fbo, eye: EyeView, frame: Frame) -> None:
        """Draws ``frame`` for one eye into ``fbo``; the left eye (index 0) goes to the console's mirror
        while ``fbo`` is still ours (before a submit or a swapchain release hands it to the runtime)."""
        self.ctx.disable_direct(GL_FRAMEBUFFER_SRGB)
        self.renderer.draw_eye(fbo, eye, stimulus=frame.stimulus, fade=frame.fade, panel=frame.panel,
                               target=frame.target)
        if index == 0:
            self.capture_mirror(fbo)

    def _clear_gl_errors(self) -> None:
        """Drains glGetError: SteamVR has left an error set after submitting, which would be blamed on us."""
        for _ in range(16):
            if self.ctx.error == "GL_NO_ERROR":
                return

    def _close_gl(self) -> None:
        """Releases the renderer and the window; safe to call twice."""
        if self.renderer is not None:
            self.renderer.release()
            self.renderer = None
        if self._window is not None:
            import glfw

            glfw.destroy_window(self._window)
            glfw.terminate()
            self._window = None


@contextlib.contextmanager
def captured_stderr():
    """Collects what C code writes to file descriptor 2 (the OpenXR loader and libopenvr log their errors there).

    Yields a list that holds the captured text once the block has finished, so a failed probe ends in
    one line of ours, not the loader's dozen.
    """
    captured: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield captured
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))
