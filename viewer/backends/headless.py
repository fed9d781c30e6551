"""Headless backend: a standalone EGL context (no display), eye buffers read back into arrays.

Used by the tests, the scripted sessions and ``panostudy view --backend headless``. The head
orientation is whatever the caller puts in :attr:`Frame.head` (a scripted driver), input events are
queued with :meth:`HeadlessBackend.push`; its eye tracker, if any, is the one it is given (the synthetic
one of ``viewer.gaze`` in the demo and ``session run --backend headless``).
"""

from __future__ import annotations

import numpy as np

from study.errors import BackendUnavailable
from viewer.backends.base import Backend, Capabilities, Frame, FrameInput, InputEvent
from viewer.camera import Tangents, e2p_tangents
from viewer.renderer import EyeView, Renderer, finish


class HeadlessBackend(Backend):
    """Renders ``eyes`` views of ``width`` × ``height`` into offscreen RGBA8 buffers.

    Parameters
    ----------
    width, height : int
        Eye buffer size in pixels.
    fov_deg : float or (float, float)
        Horizontal field of view, or (horizontal, vertical), in e2p's convention (see
        :func:`viewer.camera.e2p_tangents`); a single value gives square pixels.
    eyes : int
        1 (monoscopic) or 2 (both eyes of a headset, same frustum; for benchmarks).
    read_pixels : bool
        Read eye images back into arrays in :meth:`draw`.
    downscale : bool
        See :class:`viewer.renderer.Renderer`.
    gaze : viewer.gaze.GazeSource, optional
        The eye tracker of the scripted participant (``viewer.gaze.SyntheticGaze``).
    """

    name = "headless"
    capabilities = Capabilities(stereo=False, head_tracking=False, pointer=False, returns_pixels=True, paced=False)

    def __init__(self, width: int = 256, height: int = 256, *, fov_deg: float | tuple[float, float] = 90.0, eyes: int = 1,
                 read_pixels: bool = True, downscale: bool = False, gaze=None):
        if eyes not in (1, 2):
            raise ValueError(f"eyes={eyes}: expected 1 or 2")
        self.width, self.height, self.eyes = width, height, eyes
        self.tangents = self._tangents(fov_deg)
        self.read_pixels = read_pixels
        self.downscale = downscale
        self.ctx = None
        self._fbos: list = []
        self._queue: list[InputEvent] = []
        self._head = np.eye(3)
        self.gaze = gaze

    def gaze_source(self):
        return self.gaze

    def why_no_gaze(self) -> str:
        return "the headless backend was given no eye tracker"

    def _tangents(self, fov_deg: float | tuple[float, float]) -> Tangents:
        if not isinstance(fov_deg, (int, float)):
            return e2p_tangents(fov_deg, self.width, self.height)
        # square pixels: the vertical extent follows from the aspect ratio
        tx = e2p_tangents(fov_deg, self.width, self.height).right
        ty = tx * self.height / self.width
        return Tangents(-tx, tx, -ty, ty)

    @classmethod
    def why_not(cls) -> str | None:
        try:
            import moderngl

            ctx = moderngl.create_context(standalone=True, backend="egl", require=330)
        except Exception as exc:  # noqa: BLE001 - any failure means "not here", with its text as the reason
            return f"no EGL OpenGL 3.3 context ({type(exc).__name__}: {exc}); install Mesa's EGL (libegl1 libegl-mesa0 libgl1-mesa-dri)"
        ctx.release()
        return None

    def open(self) -> None:
        import moderngl

        try:
            self.ctx = moderngl.create_context(standalone=True, backend="egl", require=330)
        except Exception as exc:  # noqa: BLE001
            raise BackendUnavailable(self.name, f"no EGL OpenGL 3.3 context ({exc}); install libegl1 libegl-mesa0 libgl1-mesa-dri") from None
        self._fbos = [
            self.ctx.framebuffer(color_attachments=[self.ctx.renderbuffer((self.width, self.height), 4)])
            for _ in range(self.eyes)
        ]
        self.renderer = Renderer(self.ctx, downscale=self.downscale)

    def push(self, *events: InputEvent) -> None:
        """Queues input events for the next :meth:`poll_input`."""
        self._queue.extend(events)

    def poll_input(self) -> FrameInput:
        events, self._queue = tuple(self._queue), []
        return FrameInput(head=self._head, events=events)

    def draw(self, frame: Frame) -> list[np.ndarray] | None:
        if frame.head is not None:
            self._head = frame.head
        eye = EyeView(self.tangents, self._head, np.zeros(3))
        images = []
        for fbo in self._fbos:
            self.renderer.draw_eye(fbo, eye, stimulus=frame.stimulus, fade=frame.fade, panel=frame.panel,
                                   target=frame.target)
        self.capture_mirror(self._fbos[0])
        if not self.read_pixels:
            finish(self.ctx)
            return None
        for fbo in self._fbos:
            pixels = np.frombuffer(fbo.read(components=3, alignment=1), np.uint8)
            images.append(pixels.reshape(self.height, self.width, 3)[::-1])
        return images

    def close(self) -> None:
        if self.ctx is None:
            return
        self.renderer.release()
        for fbo in self._fbos:
            fbo.release()
        self.ctx.release()
        self.ctx = None
