"""The session's side of the experimenter's console: a child process with a window of its own.

The console (:mod:`viewer.console`) never runs in the participant's process: it is started with the
``spawn`` method, so its toolkit (Tk) shares neither the interpreter lock nor the GL context with the
frames. The session sends it a status dictionary a few times per second through a bounded queue
(``put_nowait``: a busy console loses an update, it never blocks a frame) and reads its commands
(pause, resume, break, abort, mirror, finish) once per frame without waiting.

The mirror is a shared-memory image: while the console asks for it, :class:`Mirror` is attached to the
backend (``backend.mirror``), and the backend's :meth:`~viewer.backends.base.Backend.capture_mirror`
scales the left eye into a small framebuffer at most :data:`MIRROR_HZ` times per second and copies it
into the shared block, where the console picks it up.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import queue
import time
from multiprocessing.shared_memory import SharedMemory

import numpy as np

#: Status updates per second sent to the console.
STATUS_HZ = 4.0
#: Mirror images per second, and their largest width (pixels).
MIRROR_HZ = 5.0
MIRROR_WIDTH = 480
MIRROR_HEIGHT = 540
_HEADER = 16   # bytes: frame counter (uint64), width, height (uint32 each)


def why_not() -> str | None:
    """None if the console's toolkit is there, else a one-line reason with the fix."""
    if importlib.util.find_spec("tkinter") is None or importlib.util.find_spec("_tkinter") is None:
        return ("this Python has no tkinter (Debian/Ubuntu: apt-get install python3-tk; a Python built from "
                "source needs tk-dev at build time)")
    return None


class Mirror:
    """A downscaled copy of one eye in shared memory, refreshed at most :data:`MIRROR_HZ` times a second.

    ``capture`` runs on the render thread inside ``draw``: a scaled blit into a small framebuffer and a
    read of that (a few hundred kilobytes).
    """

    def __init__(self, memory: SharedMemory):
        self._memory = memory
        self._target = None
        self._last = 0.0
        self.frames = 0

    def capture(self, framebuffer) -> None:
        now = time.perf_counter()
        if now - self._last < 1.0 / MIRROR_HZ:
            return
        self._last = now
        from OpenGL import GL

        ctx = framebuffer.ctx
        width, height = framebuffer.size
        scale = min(MIRROR_WIDTH / width, MIRROR_HEIGHT / height, 1.0)
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        if self._target is None or self._target.size != size:
            if self._target is not None:
                self._target.release()
            self._target = ctx.framebuffer(color_attachments=[ctx.renderbuffer(size, 3)])
        GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, framebuffer.glo)
        GL.glBindFramebuffer(GL.GL_DRAW_FRAMEBUFFER, self._target.glo)
        GL.glBlitFramebuffer(0, 0, width, height, 0, 0, size[0], size[1], GL.GL_COLOR_BUFFER_BIT, GL.GL_LINEAR)
        pixels = self._target.read(components=3, alignment=1)
        framebuffer.use()
        buffer = self._memory.buf
        count = len(pixels)
        if _HEADER + count > len(buffer):
            return
        buffer[_HEADER:_HEADER + count] = pixels
        self.frames += 1
        buffer[:_HEADER] = np.array([self.frames], "<u8").tobytes() + np.array(size, "<u4").tobytes()

    def release(self) -> None:
        if self._target is not None:
            self._target.release()
            self._target = None


def read_mirror(memory: SharedMemory, seen: int) -> tuple[int, np.ndarray | None]:
    """(frame counter, image ``(H, W, 3) uint8`` top row first, or None if no new one since ``seen``)."""
    header = bytes(memory.buf[:_HEADER])
    frames = int(np.frombuffer(header[:8], "<u8")[0])
    if frames == seen or frames == 0:
        return seen, None
    width, height = (int(v) for v in np.frombuffer(header[8:16], "<u4"))
    pixels = np.frombuffer(memory.buf[_HEADER:_HEADER + width * height * 3], np.uint8).reshape(height, width, 3)
    return frames, pixels[::-1].copy()


class ConsoleLink:
    """Starts the console window and carries status to it and commands from it.

    Parameters
    ----------
    title : str
        The console window's title.
    """

    def __init__(self, title: str = "panostudy – experimenter console"):
        self.title = title
        self._context = multiprocessing.get_context("spawn")
        self._status = self._context.Queue(maxsize=4)
        self._commands = self._context.Queue()
        self._memory = SharedMemory(create=True, size=_HEADER + MIRROR_WIDTH * MIRROR_HEIGHT * 3)
        self._memory.buf[:_HEADER] = bytes(_HEADER)
        self.mirror = Mirror(self._memory)
        self._process = None
        self._last_status = 0.0

    def start(self) -> None:
        from viewer import console

        self._process = self._context.Process(
            target=console.main, args=(self._status, self._commands, self._memory.name, self.title),
            name="panostudy-console", daemon=True,
        )
        self._process.start()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def send(self, status: dict, *, force: bool = False) -> None:
        """Sends ``status`` if an update is due (or ``force``); drops it if the console is behind."""
        now = time.perf_counter()
        if not force and now - self._last_status < 1.0 / STATUS_HZ:
            return
        self._last_status = now
        try:
            self._status.put_nowait(status)
        except queue.Full:
            pass

    def commands(self) -> list[dict]:
        """Every command the console sent since the last call."""
        found = []
        while True:
            try:
                found.append(self._commands.get_nowait())
            except queue.Empty:
                return found

    def close(self) -> None:
        """Tells the console the session is over and waits briefly for it to close."""
        if self._process is not None:
            try:
                self._status.put({"closing": True}, timeout=1.0)
            except queue.Full:
                pass
            self._process.join(5.0)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(2.0)
            self._process = None
        self.mirror.release()
        for q in (self._status, self._commands):
            q.close()
            q.cancel_join_thread()
        self._memory.close()
        self._memory.unlink()
