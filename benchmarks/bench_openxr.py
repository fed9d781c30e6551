"""OpenXR frame loop on a real runtime: frames per second and the Python side of each frame.

One frame is what the session runner does: ``poll_input`` (events, ``xrWaitFrame``, ``xrBeginFrame``,
``xrLocateViews``, the head and both controllers, ``xrSyncActions``) and ``draw`` (two views into their
swapchain images, ``xrEndFrame``). Every pyopenxr call is timed and split into the runtime's waits
(``xrWaitFrame``, ``xrWaitSwapchainImage``), the rest of the runtime's calls, and the GL draw (the
renderer's commands); what is left is the Python side. With a tiny swapchain (``--scale``) the GL draw
all but vanishes, which isolates it. Goal: the Python side at most 1 ms per frame, the rest of the
11.1 ms budget at 90 Hz belongs to the GPU.

Needs a running OpenXR runtime. ``make bench-xr`` runs it against Monado (simulated headset, null
compositor, lavapipe) in the Debian 13 root; Monado's null compositor paces frames itself, so the fps
say nothing about a real headset's pacing.

Run: ``python benchmarks/bench_openxr.py [--frames 300] [--scale 0.1]``
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from viewer.backends.base import Frame
from viewer.backends.openxr import OpenXRBackend

WAITS = ("xrWaitFrame", "xrWaitSwapchainImage")


class CallClock:
    """Wall time spent in each pyopenxr C call and in the renderer's eye draws, per frame."""

    def __init__(self, xr, backend):
        self.spent: dict[str, float] = {}
        raw = xr.raw_functions
        for name in dir(raw):
            if name.startswith("xr") and callable(getattr(raw, name)):
                setattr(raw, name, self._timed(name, getattr(raw, name)))
        draw_eye = backend.renderer.draw_eye
        backend.renderer.draw_eye = self._timed("gl_draw", draw_eye)

    def _timed(self, name, call):
        @functools.wraps(call)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - start
        return timed

    def take(self) -> dict[str, float]:
        spent, self.spent = self.spent, {}
        return spent


def run(frames: int, scale: float, stimulus: Path) -> dict[str, float]:
    """One session of ``frames`` frames with eye images ``scale`` × the recommended size."""
    import xr

    backend = OpenXRBackend(render_scale=scale)
    backend.open()
    try:
        clock = CallClock(xr, backend)
        texture = backend.renderer.stimuli.get(str(stimulus), block=True)
        for _ in range(30):   # the session reaches FOCUSED, caches warm up
            backend.poll_input()
            backend.draw(Frame(stimulus=texture))
        clock.take()
        rows = []
        started = time.perf_counter()
        for _ in range(frames):
            begin, cpu = time.perf_counter(), time.thread_time()
            user = backend.poll_input()
            backend.draw(Frame(stimulus=texture))
            wall, cpu = time.perf_counter() - begin, time.thread_time() - cpu
            if user.events:
                raise SystemExit(f"the runtime stopped the benchmark: {user.events[0].key}")
            spent = clock.take()
            waits = sum(spent.get(name, 0.0) for name in WAITS)
            gl = spent.get("gl_draw", 0.0)
            runtime = sum(v for k, v in spent.items() if k not in WAITS and k != "gl_draw")
            rows.append((wall, waits, runtime, gl, wall - waits - runtime - gl, cpu))
        elapsed = time.perf_counter() - started
        size = backend.describe()["view_sizes"][0]
    finally:
        backend.close()
    columns = np.array(rows) * 1000.0
    median = {name: float(np.median(columns[:, i])) for i, name in
              enumerate(("frame", "waits", "runtime", "gl", "python", "thread_cpu"))}
    median["python_p95"] = float(np.percentile(columns[:, 4], 95))
    median["fps"] = frames / elapsed
    median["size"] = f"{size[0]}x{size[1]}"
    return median


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--scale", type=float, default=0.1, help="tiny swapchain: this × the recommended size")
    args = parser.parse_args(argv)
    why = OpenXRBackend.why_not()
    if why is not None:
        print(f"bench_openxr: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        stimulus = Path(folder) / "stimulus.png"
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (1024, 2048, 3), dtype=np.uint8)).save(stimulus)
        results = [run(args.frames, args.scale, stimulus), run(args.frames, 1.0, stimulus)]
    print(f"{'eye images':>12} {'fps':>6} {'frame':>7} {'waits':>7} {'runtime':>8} {'GL draw':>8} "
          f"{'python':>7} {'p95':>6} {'thread CPU':>10}   (medians, ms per frame)")
    for r in results:
        print(f"{r['size']:>12} {r['fps']:6.1f} {r['frame']:7.2f} {r['waits']:7.2f} {r['runtime']:8.2f} {r['gl']:8.2f} "
              f"{r['python']:7.3f} {r['python_p95']:6.3f} {r['thread_cpu']:10.2f}")
    tiny = results[0]
    verdict = "meets" if tiny["python"] <= 1.0 else "misses"
    print(f"Python side with the tiny swapchain: {tiny['python']:.3f} ms per frame "
          f"({tiny['python'] / (1000 / 90) * 100:.1f} % of the 11.1 ms budget at 90 Hz); {verdict} the 1 ms goal")
    print("runtime: calls into the OpenXR runtime other than its waits (on Monado: its client library and IPC)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
