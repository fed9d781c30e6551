"""Viewer frame times: two 1440 × 1600 eye buffers from an 8192 × 4096 stimulus, headless (EGL).

Prints the time of a normal frame, the longest frame while the next stimulus is switched in with
background preload (decode + mips in a background process, upload a strip per frame), and the same
switch without preload (decode and upload inside the frame that needs it), as a baseline. Goal: the
longest frame of a preloaded switch is at most 1.5 × a normal frame.

On a software renderer (Mesa llvmpipe) the GPU is the CPU, so the decoding process and the renderer
share the cores; the switch's own work on the render thread (``update ms``) is printed separately.
Last, a stimulus that is due before it is decoded: grey frames until it is ready; and the normal frame
again with the experimenter's console open (its own process and window, status updates four times a
second, the one-eye mirror captured five times a second), against the same frames without it (needs a
display; an Xvfb is started if there is none).

Run: ``.venv/bin/python benchmarks/bench_viewer.py [--frames 120] [--size 8192]``
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from viewer.backends.base import Frame
from viewer.backends.headless import HeadlessBackend
from viewer.camera import view_rotation

EYE_W, EYE_H = 1440, 1600
FOV = (100.0, 110.0)


def make_stimulus(path: Path, width: int, seed: int) -> None:
    """A detailed panorama: smooth noise upsampled, plus fine stripes (PNG, fast compression)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)).resize((width, width // 2), Image.Resampling.BICUBIC)
    pixels = np.asarray(coarse).copy()
    pixels[:, ::7] //= 2
    Image.fromarray(pixels).save(path, compress_level=1)


#: The head turns this much per frame in every measurement, so normal and switch frames sample the
#: panorama alike (the cost of a frame on a software renderer depends on where it looks).
YAW_STEP_DEG = 3.0
_frame_number = itertools.count()


def frame(backend: HeadlessBackend, texture) -> tuple[float, float]:
    """One frame as the session runner does it: the upload share, both eyes, and wait for the GPU.

    Returns the whole frame and the share spent in ``stimuli.update()`` (picking up a decoded stimulus,
    one upload strip): the switch's own work on the render thread, in ms.
    """
    yaw = (YAW_STEP_DEG * next(_frame_number)) % 360.0
    start = time.perf_counter()
    backend.renderer.stimuli.update()
    updated = time.perf_counter()
    backend.draw(Frame(stimulus=texture, head=view_rotation(yaw, 0.0)))
    end = time.perf_counter()
    return (end - start) * 1000.0, (updated - start) * 1000.0


def normal_frames(backend, texture, count: int) -> np.ndarray:
    return np.array([frame(backend, texture)[0] for _ in range(count)])


def switch_with_preload(backend, shown, path: str) -> dict[str, np.ndarray]:
    """Frames of `shown` while `path` decodes and uploads in the background, then frames of it.

    Returns ``(frames, 2)`` arrays of (frame ms, update ms) by phase: "decoding" (the other process
    works), "uploading" (a strip per frame), "new" (the first frames showing the new stimulus).
    """
    stimuli = backend.renderer.stimuli
    stimuli.want([path])
    phases: dict[str, list[tuple[float, float]]] = {"decoding": [], "uploading": [], "new": []}
    while stimuli.get(path) is None:
        phase = "uploading" if stimuli.uploading else "decoding"
        phases[phase].append(frame(backend, shown))
    stimuli.show(path)
    for _ in range(3):
        phases["new"].append(frame(backend, stimuli.get(path)))
    return {k: np.array(v).reshape(-1, 2) for k, v in phases.items()}


def describe(phases: dict[str, np.ndarray], normal: np.ndarray) -> str:
    median = np.median(normal)
    longest = max(v[:, 0].max() for v in phases.values() if v.size)
    work = max(v[:, 1].max() for v in phases.values() if v.size)
    parts = [f"{k}: {len(v)} frames, median {np.median(v[:, 0]):.0f} / p95 {np.percentile(v[:, 0], 95):.0f} / "
             f"max {v[:, 0].max():.0f} ms = {v[:, 0].max() / median:.2f} x"
             for k, v in phases.items() if v.size]
    return (f"longest frame {longest:.0f} ms = {longest / median:.2f} x the median normal frame "
            f"({longest / normal.max():.2f} x the longest normal frame); the switch's own work in a frame "
            f"at most {work:.1f} ms\n    " + "\n    ".join(parts))


def switch_without_preload(backend, path: str) -> float:
    """The frame that needs `path` decodes and uploads it itself."""
    start = time.perf_counter()
    texture = backend.renderer.stimuli.get(path, block=True)
    backend.renderer.stimuli.show(path)
    backend.draw(Frame(stimulus=texture, head=view_rotation(0.0, 0.0)))
    return (time.perf_counter() - start) * 1000.0


def wait_on_grey(backend, path: str) -> tuple[float, np.ndarray]:
    """A stimulus that is due but not decoded: grey frames while its decode is hurried, as the session
    runner does. Returns the seconds until it is ready and the grey frame times (ms)."""
    stimuli = backend.renderer.stimuli
    stimuli.want([path])
    start, times = time.perf_counter(), []
    while stimuli.get(path) is None:
        stimuli.hurry(path)
        begin = time.perf_counter()
        stimuli.update()
        backend.draw(Frame(stimulus=None, fade=1.0))
        times.append((time.perf_counter() - begin) * 1000.0)
    return time.perf_counter() - start, np.array(times)


def with_console(backend, texture, count: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Normal frames without, then with, the console open and mirroring (alternating blocks of 20, so both
    see the same load); returns both frame-time arrays and the mirror images the console received."""
    from viewer.console_link import ConsoleLink, read_mirror

    link = ConsoleLink()
    link.start()
    status = {"participant": "P01", "session_number": 1, "session_count": 1, "session_name": "Session 1",
              "station": "bench", "state": "running", "state_text": "", "step_index": 1, "step_count": 95,
              "step_text": "trial 3 (test): stimulus", "stimulus": "street/0.png", "scene": "street",
              "stimulus_time_s": 1.0, "exposure_s": 20.0, "last_answer": "", "frame_hz": 10.0, "frame_ms": 100.0,
              "pose_text": "30 Hz due", "dropped": None, "controls": ("pause",), "note": "", "log": []}
    time.sleep(2.0)   # the window opens
    without, inside = [], []
    try:
        for block in range(count // 20):
            on = block % 2 == 1
            backend.mirror = link.mirror if on else None
            for _ in range(20):
                start = time.perf_counter()
                frame(backend, texture)
                if on:
                    link.commands()
                    link.send(status)
                (inside if on else without).append((time.perf_counter() - start) * 1000.0)
        received, _ = read_mirror(link._memory, 0)
    finally:
        backend.mirror = None
        link.close()
    return np.array(without), np.array(inside), received


def _display() -> subprocess.Popen | None:
    """An Xvfb for the console when there is no display (stopped by the caller)."""
    if os.environ.get("DISPLAY") or shutil.which("Xvfb") is None:
        return None
    number = next(n for n in range(140, 200) if not os.path.exists(f"/tmp/.X11-unix/X{n}"))
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ["DISPLAY"] = f":{number}"
    time.sleep(1.0)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120, help="normal frames to time")
    parser.add_argument("--size", type=int, default=8192, help="stimulus width (height is half)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"stimulus{i}.png" for i in range(4)]
        start = time.perf_counter()
        for i, path in enumerate(paths):
            make_stimulus(path, args.size, i)
        print(f"wrote 4 stimuli of {args.size}x{args.size // 2} in {time.perf_counter() - start:.1f} s")

        with HeadlessBackend(EYE_W, EYE_H, fov_deg=FOV, eyes=2, read_pixels=False) as backend:
            info = backend.ctx.info
            print(f"renderer: {info['GL_RENDERER']} ({info['GL_VERSION']}), GL_MAX_TEXTURE_SIZE {info['GL_MAX_TEXTURE_SIZE']}")
            stimuli = backend.renderer.stimuli
            start = time.perf_counter()
            stimuli.reserve((args.size, args.size // 2))
            print(f"texture slots allocated once per session: {(time.perf_counter() - start) * 1000:.0f} ms")

            start = time.perf_counter()
            first = stimuli.get(str(paths[0]), block=True)
            stimuli.show(str(paths[0]))
            print(f"first stimulus, blocking decode + mips + upload: {(time.perf_counter() - start) * 1000:.0f} ms")

            normal = normal_frames(backend, first, args.frames)
            print(f"normal frame (2 eyes {EYE_W}x{EYE_H}): median {np.median(normal):.1f} ms, "
                  f"p95 {np.percentile(normal, 95):.1f} ms, max {normal.max():.1f} ms "
                  f"({normal.max() / np.median(normal):.2f} x median, over {len(normal)} frames)")

            for number, (shown, path) in enumerate([(paths[0], paths[1]), (paths[1], paths[2])], start=1):
                start = time.perf_counter()
                phases = switch_with_preload(backend, stimuli.get(str(shown)), str(path))
                print(f"switch {number} with preload ({time.perf_counter() - start:.0f} s until ready): {describe(phases, normal)}")

            stimuli.show(str(paths[2]))
            stall = switch_without_preload(backend, str(paths[3]))
            print(f"switch without preload: one frame of {stall:.0f} ms = {stall / np.median(normal):.1f} x normal")
            stimuli.show(str(paths[3]))
            waited, grey = wait_on_grey(backend, str(paths[0]))
            print(f"due but not decoded: ready after {waited:.1f} s of grey frames ({len(grey)} frames, median "
                  f"{np.median(grey):.0f} ms, max {grey.max():.0f} ms); the decoding process is hurried to normal priority")
            print(f"threads alive: {threading.active_count()}")

            server = _display()
            try:
                if os.environ.get("DISPLAY"):
                    shown = stimuli.get(str(paths[0]))
                    without, inside, mirrored = with_console(backend, shown, max(80, args.frames))
                    print(f"console open and mirroring: normal frame median {np.median(inside):.1f} ms / p95 "
                          f"{np.percentile(inside, 95):.1f} ms against {np.median(without):.1f} / "
                          f"{np.percentile(without, 95):.1f} ms without it in the same run "
                          f"({np.median(inside) / np.median(without):.3f} x); {mirrored} mirror images sent")
                else:
                    print("console: no display and no Xvfb; not measured")
            finally:
                if server is not None:
                    server.terminate()
                    server.wait(10)


if __name__ == "__main__":
    main()
