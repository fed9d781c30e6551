"""Stimulus images: checked decoding, sRGB-correct mip chains, and uploads that never stall a frame.

A stimulus is decoded and its whole mip chain computed in a low-priority background process
(:class:`StimulusLoader`); the render thread then copies it into a GPU texture a few megabytes per
frame through a pixel-buffer object (:class:`SpreadUpload`), so a switch never costs more than one
chunk of upload in any frame. ``glGenerateMipmap`` is never called for a stimulus: on a software
rasteriser it takes a whole frame or more for an 8192 × 4096 image.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np

from study.errors import StimulusError
from study.stimuli import MAX_WIDTH, check_size, open_image, srgb8

#: GL internal formats (sized, so every driver accepts them).
GL_SRGB8 = 0x8C41
GL_SRGB8_ALPHA8 = 0x8C43

#: Bytes copied into textures per frame during a spread upload (about 3 ms on llvmpipe).
UPLOAD_BYTES_PER_FRAME = 4 << 20


def _srgb_to_linear16() -> np.ndarray:
    c = np.arange(256) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return np.round(linear * 65535).astype(np.uint16)


def _linear16_to_srgb() -> np.ndarray:
    c = np.arange(65536) / 65535.0
    srgb = np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)
    return np.round(srgb * 255).astype(np.uint8)


_TO_LINEAR = _srgb_to_linear16()
_TO_SRGB = _linear16_to_srgb()


def decode_stimulus(path: str | Path, *, max_width: int = MAX_WIDTH, downscale: bool = False) -> np.ndarray:
    """Reads an equirect stimulus as ``(H, W, 3) uint8`` sRGB, checking its header size first.

    Every image mode is converted as :func:`study.stimuli.srgb8` describes (16-bit grey scaled, alpha
    composited over the neutral grey, CMYK converted).

    Parameters
    ----------
    path : str or Path
        PNG, JPEG, ... image, exactly twice as wide as high.
    max_width : int
        Widest image accepted: the smaller of 8192 and the context's ``GL_MAX_TEXTURE_SIZE``.
    downscale : bool
        Shrink a wider image to ``max_width`` × ``max_width / 2`` (Lanczos) instead of refusing it.

    Raises
    ------
    StimulusError
        If the file is missing or unreadable, not 2:1, or too large and ``downscale`` is False.
    """
    from PIL import Image

    path = Path(path)
    with open_image(path) as image:
        width, height = image.size
        check_size(str(path), width, height, max_width=max_width, allow_downscale=downscale,
                   limit=f"the {max_width}x{max_width // 2} texture limit", fix="downscale the image or pass --downscale")
        try:
            pixels = srgb8(image, str(path))
        except (OSError, ValueError, SyntaxError) as exc:
            raise StimulusError(f"{path}: unreadable image ({exc}); re-export it as PNG or JPEG") from None
    if width > max_width:
        pixels = np.asarray(Image.fromarray(pixels).resize((max_width, max_width // 2), Image.Resampling.LANCZOS))
    return pixels


def mip_chain(image: np.ndarray) -> list[np.ndarray]:
    """All mip levels of an sRGB image, each the 2 × 2 box average of the previous one in linear light.

    Parameters
    ----------
    image : (H, W, C) uint8
        sRGB-encoded level 0.

    Returns
    -------
    list of (H_k, W_k, C) uint8
        Level ``k`` is ``max(1, H >> k)`` × ``max(1, W >> k)``, down to 1 × 1 (GL's mip sizes).

    Notes
    -----
    Averaging the sRGB codes themselves would darken fine detail at a distance; the average is taken
    of :math:`c_{lin} = ((c + 0.055)/1.055)^{2.4}` in 16-bit fixed point and re-encoded. An odd last
    row or column is dropped, as GL's box filter does for non-power-of-two sizes.
    """
    h, w, channels = image.shape
    if h == w == 1:
        return [image]
    # Level 1 is built band by band so the 16-bit linear copy stays in cache: for 8192 x 4096 this is
    # 4x faster than converting the whole image at once, and it leaves memory bandwidth to the renderer.
    linear = np.empty((max(1, h // 2), max(1, w // 2), channels), np.uint16)
    rows = max(2, h // 2 * 2)
    for top in range(0, rows, _BAND_ROWS):
        band = image[top : min(top + _BAND_ROWS, rows)]
        linear[top // 2 : top // 2 + max(1, band.shape[0] // 2)] = _halve(_TO_LINEAR[band])
    levels = [image, _TO_SRGB[linear]]
    while linear.shape[0] > 1 or linear.shape[1] > 1:
        linear = _halve(linear)
        levels.append(_TO_SRGB[linear])
    return levels


#: Rows of level 0 converted to linear light at a time by :func:`mip_chain` (even).
_BAND_ROWS = 64


def _halve(linear: np.ndarray) -> np.ndarray:
    """The next mip level of a 16-bit linear image: rounded 2 × 2 box means (a single row or column
    is averaged with itself)."""
    h, w = linear.shape[:2]
    if h > 1:
        total = np.add(linear[0 : h // 2 * 2 : 2], linear[1 : h // 2 * 2 : 2], dtype=np.uint32)
    else:
        total = linear.astype(np.uint32) * 2
    if w > 1:
        total = total[:, 0 : w // 2 * 2 : 2] + total[:, 1 : w // 2 * 2 : 2]
    else:
        total *= 2
    total += 2
    total >>= 2
    return total.astype(np.uint16)


@dataclass(frozen=True)
class DecodedStimulus:
    """A stimulus ready for upload: its path and mip chain (level 0 first).

    The levels may be views into a shared-memory block (``shared``) owned by the
    :class:`StimulusLoader` that decoded them; they are valid until the loader forgets the stimulus.
    """

    path: str
    levels: tuple[np.ndarray, ...]
    shared: SharedMemory | None = None

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.levels[0].shape[:2]
        return w, h


def decode_with_mips(path: str | Path, *, max_width: int = MAX_WIDTH, downscale: bool = False) -> DecodedStimulus:
    """:func:`decode_stimulus` followed by :func:`mip_chain`."""
    return DecodedStimulus(str(path), tuple(mip_chain(decode_stimulus(path, max_width=max_width, downscale=downscale))))


def _decode_to_shared_memory(path: str, max_width: int, downscale: bool, reuse: str | None) -> tuple[str, list[tuple[int, ...]]]:
    """Runs in the decoding process: the mip chain, packed into the shared-memory block named ``reuse``
    if it is large enough (the stimuli of a study usually share one size), else into a new one."""
    levels = decode_with_mips(path, max_width=max_width, downscale=downscale).levels
    size = sum(level.nbytes for level in levels)
    block = SharedMemory(name=reuse) if reuse is not None else None
    if block is None or block.size < size:
        if block is not None:
            block.close()
        block = SharedMemory(create=True, size=size)
    offset = 0
    for level in levels:
        np.ndarray(level.shape, np.uint8, buffer=block.buf, offset=offset)[...] = level
        offset += level.nbytes
    name = block.name
    block.close()
    return name, [level.shape for level in levels]


def _set_idle_class(pid: int, idle: bool) -> bool:
    """Moves a process (0: the calling thread) into Linux's SCHED_IDLE class or back to the normal one;
    False where that is not possible."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE if idle else os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):
        return False
    return True


def _init_decoding_process() -> None:
    """Runs first in the decoding process: lowest priority, and exit as soon as the viewer dies.

    Decoding is background work. Without a GPU the renderer *is* the CPU: at nice 19 the decoder still
    lengthened the slowest frames by a quarter; SCHED_IDLE only runs it on a core nothing else wants.
    A pool worker outlives a killed parent; this one must not, because its exit is what lets the
    resource tracker free the shared-memory blocks the crashed viewer left behind.
    """
    if not _set_idle_class(0, True):
        with contextlib.suppress(OSError, AttributeError):
            os.nice(19)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()


def _exit_with(parent_sentinel: int) -> None:
    multiprocessing.connection.wait([parent_sentinel])
    os._exit(0)


class StimulusLoader:
    """Decodes stimuli in one low-priority background process; the render thread only ever picks up
    finished ones.

    A process rather than a thread, because decoding an 8192 × 4096 PNG and its mips holds Python's
    GIL for long stretches, which would stall the render loop; the mip chain comes back through shared
    memory, so nothing large is pickled.

    Parameters
    ----------
    max_width : int
        See :func:`decode_stimulus`.
    downscale : bool
        See :func:`decode_stimulus`.
    """

    def __init__(self, *, max_width: int = MAX_WIDTH, downscale: bool = False):
        self.max_width = max_width
        self.downscale = downscale
        self._pool: ProcessPoolExecutor | None = None
        self._jobs: dict[str, Future] = {}
        self._done: dict[str, DecodedStimulus] = {}
        # Shared-memory blocks are mapped here once and reused, like the texture slots: creating and
        # freeing ~130 MB per 8192 x 4096 stimulus costs 30-40 ms of page work, a third of a frame on
        # a software renderer.
        self._blocks: dict[str, SharedMemory] = {}
        self._spare: list[str] = []
        self._lent: dict[str, str] = {}
        self._worker_pid: Future | None = None
        self._hurried: str | None = None

    def request(self, path: str) -> None:
        """Starts decoding ``path`` unless it is already queued or done."""
        if path in self._jobs:
            return
        if self._pool is None:
            # spawn: forking a process that holds a GL context and threads is unsafe
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_init_decoding_process)
            self._worker_pid = self._pool.submit(os.getpid)   # for hurry()
        reuse = self._spare.pop() if self._spare else None
        if reuse is not None:
            self._lent[path] = reuse
        self._jobs[path] = self._pool.submit(_decode_to_shared_memory, path, self.max_width, self.downscale, reuse)

    def hurry(self, path: str) -> None:
        """Lets the decoding process run at normal priority until ``path`` is decoded: someone waits for it.

        Next to a software renderer a decoder in SCHED_IDLE gets almost no CPU, even while the display
        shows grey waiting for it: 42 s for an 8192 x 4096 PNG on 2 cores, instead of 2.5 s.
        Call it again if it comes too early (the process may still be starting).
        """
        job = self._jobs.get(path)
        if self._hurried is not None or job is None or job.done() or not self._worker_pid.done():
            return
        if _set_idle_class(self._worker_pid.result(), False):
            self._hurried = path

    def _calm(self) -> None:
        if self._hurried is not None:
            _set_idle_class(self._worker_pid.result(), True)
            self._hurried = None

    def ready(self, path: str) -> DecodedStimulus | None:
        """The decoded stimulus if it is finished, else None; re-raises its StimulusError."""
        job = self._jobs.get(path)
        if job is None or not job.done():
            return None
        return self._result(path, job)

    def wait(self, path: str) -> DecodedStimulus:
        """Blocks until ``path`` is decoded (requesting it if needed)."""
        self.request(path)
        return self._result(path, self._jobs[path])

    def _result(self, path: str, job: Future) -> DecodedStimulus:
        if path == self._hurried:
            self._calm()
        if path not in self._done:
            lent = self._lent.pop(path, None)
            try:
                name, shapes = job.result()
            except BaseException:
                # a failed decode may be retried (e.g. after the file was fixed)
                del self._jobs[path]
                if lent is not None:
                    self._spare.append(lent)
                raise
            if lent is not None and lent != name:
                self._free(lent)   # too small for this stimulus
            block = self._blocks.get(name) or SharedMemory(name=name)
            self._blocks[name] = block
            levels, offset = [], 0
            for shape in shapes:
                level = np.ndarray(shape, np.uint8, buffer=block.buf, offset=offset)
                levels.append(level)
                offset += level.nbytes
            self._done[path] = DecodedStimulus(path, tuple(levels), block)
        return self._done[path]

    def forget(self, path: str) -> None:
        """Drops a finished decode (its arrays become invalid); its memory is kept for the next one.

        The renderer forgets a stimulus once it is uploaded, :meth:`close` after waiting for the decode;
        a running decode must not be forgotten, as its block may be lent again.
        """
        job = self._jobs.get(path)
        if path not in self._done and job is not None and job.done() and not job.cancelled() and job.exception() is None:
            self._result(path, job)
        self._jobs.pop(path, None)
        decoded = self._done.pop(path, None)
        if decoded is not None:
            self._spare.append(decoded.shared.name)
        lent = self._lent.pop(path, None)
        if lent is not None:
            self._spare.append(lent)

    def _free(self, name: str) -> None:
        block = self._blocks.pop(name, None)
        if block is not None:
            block.close()
            block.unlink()

    def close(self) -> None:
        """Stops the decoding process and frees every shared-memory block."""
        for path in list(self._jobs):
            job = self._jobs[path]
            if not job.done():
                job.cancel()
            with contextlib.suppress(Exception):
                job.result()
            self.forget(path)
        self._hurried = None
        for name in list(self._blocks):
            self._free(name)
        self._spare = []
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def allocate_stimulus_texture(ctx, size: tuple[int, int]):
    """An empty sRGB texture with storage for every mip level and the stimulus sampling state.

    Trilinear mipmapping, the highest anisotropy the driver offers (≤ 16; none on llvmpipe), GL_REPEAT across longitude
    and clamp at the poles. Allocation is slow on some drivers, so textures are allocated once per
    size and reused (see :class:`viewer.renderer.Renderer`).
    """
    import moderngl

    texture = ctx.texture(size, 3, internal_format=GL_SRGB8)
    # moderngl only allows writes to levels that glGenerateMipmap has defined.
    texture.build_mipmaps()
    texture.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
    # Mesa llvmpipe (22.3) returns wrong texels from textureGrad when anisotropic filtering is on (whole
    # columns of the LOD transition go wrong); the software renderer gets plain trilinear filtering.
    software = "llvmpipe" in ctx.info["GL_RENDERER"]
    texture.anisotropy = 1.0 if software else min(16.0, ctx.max_anisotropy)
    texture.repeat_x = True
    texture.repeat_y = False
    return texture


class SpreadUpload:
    """Copies a decoded mip chain into a texture in row strips of at most ``budget`` bytes per step.

    Strips go through one reused pixel-buffer object, so the driver copies from GPU-visible memory.
    """

    def __init__(self, ctx, texture, stimulus: DecodedStimulus, *, budget: int = UPLOAD_BYTES_PER_FRAME):
        self.texture = texture
        self.stimulus = stimulus
        self._ctx = ctx
        self._budget = budget
        self._pbo = None
        self._level = 0
        self._row = 0

    @property
    def done(self) -> bool:
        return self._level >= len(self.stimulus.levels)

    def step(self) -> bool:
        """Uploads the next strip(s) up to the byte budget; returns :attr:`done`."""
        spent = 0
        while not self.done and spent < self._budget:
            level = self.stimulus.levels[self._level]
            h, w = level.shape[:2]
            row_bytes = w * 3
            rows = max(1, min(h - self._row, (self._budget - spent) // row_bytes))
            strip = np.ascontiguousarray(level[self._row : self._row + rows])
            if self._pbo is None:
                self._pbo = self._ctx.buffer(reserve=max(min(self._budget, self.stimulus.levels[0].nbytes), strip.nbytes))
            if strip.nbytes > self._pbo.size:
                self._pbo.orphan(strip.nbytes)
            self._pbo.write(strip)
            self.texture.write(self._pbo, viewport=(0, self._row, w, rows), level=self._level, alignment=1)
            spent += strip.nbytes
            self._row += rows
            if self._row >= h:
                self._level += 1
                self._row = 0
        if self.done:
            self.release()
        return self.done

    def release(self) -> None:
        """Frees the pixel buffer (called by :meth:`step` when the upload is complete)."""
        if self._pbo is not None:
            self._pbo.release()
            self._pbo = None
