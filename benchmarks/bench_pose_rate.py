"""Head poses on time: the share of samples within ±2 ms of their due time, with frames slowed to 10 Hz.

For each rate (30, 60, 90 Hz) a headless backend renders two 1440 × 1600 eyes (on a software renderer a
frame takes about 100 ms; each is padded to exactly 100 ms) while the session's pose sampler
(``viewer.pose.PoseSampler``) samples in its own thread for ``--seconds``. Two sources are measured:

* **now-only**: a tracker that can only report the head at the moment it is asked (the hardest case);
  a sample is on time if the sampler asked within ±2 ms of its due time.
* **timed**: a source that answers for a given time, as the desktop's view-state history, OpenVR's
  predicted pose and OpenXR's ``xrLocateSpace`` do; its samples are the poses of their due times.

The baseline is the old frame-bound logger: at most one sample per frame, taken when the frame happens.
Goal: ≥ 99 % of samples within ±2 ms.

Run: ``.venv/bin/python benchmarks/bench_pose_rate.py [--seconds 10]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from viewer.backends.base import Frame, HeadSample
from viewer.backends.headless import HeadlessBackend
from viewer.camera import view_rotation
from viewer.pose import PoseSampler, due_times

FRAME_S = 0.1


def measure(backend, texture, rate_hz: float, seconds: float, priority: bool) -> dict[str, np.ndarray]:
    asked: list[tuple[int, int]] = []

    def now_only(monotonic_ns: int):
        asked.append((monotonic_ns, time.monotonic_ns()))
        return HeadSample(np.eye(3))

    sampler = PoseSampler(rate_hz, now_only, raise_priority=priority)
    onset = time.monotonic_ns()
    sampler.start(onset, seconds)
    frame_times = []
    frame = 0
    while (time.monotonic_ns() - onset) / 1e9 < seconds:
        start = time.perf_counter()
        backend.renderer.stimuli.update()
        backend.draw(Frame(stimulus=texture, head=view_rotation(3.0 * frame, 0.0)))
        frame += 1
        spent = time.perf_counter() - start
        if spent < FRAME_S:
            time.sleep(FRAME_S - spent)
        frame_times.append(time.perf_counter() - start)
        # the old logger: one sample per frame at most, at the frame's time
    samples = sampler.stop(onset + round(seconds * 1e9))
    due = np.array([d for d, _ in asked], dtype=np.int64)
    late_ms = (np.array([c for _, c in asked], dtype=np.int64) - due) / 1e6
    frames_at = np.cumsum(frame_times)
    # the old frame-bound logger: a sample at the first frame at or after each due time, one per frame
    grid = due_times(rate_hz, seconds)
    old = np.unique(np.searchsorted(frames_at, grid))
    old_times = frames_at[old[old < len(frames_at)]]
    old_due = grid[np.searchsorted(grid, old_times, side="right") - 1]
    return {"priority": sampler.priority, "late_ms": late_ms, "samples": np.array([s.t for s in samples]), "expected": grid,
            "frame_ms": np.array(frame_times) * 1000, "old_error_ms": (old_times - old_due) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="sampling time per rate")
    parser.add_argument("--no-priority", action="store_true", help="leave the sampling thread at normal OS priority")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "stimulus.png"
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)).resize((4096, 2048)).save(path)
        with HeadlessBackend(1440, 1600, fov_deg=(100.0, 110.0), eyes=2, read_pixels=False) as backend:
            texture = backend.renderer.stimuli.get(str(path), block=True)
            for _ in range(3):   # shaders compile on the first frames
                backend.draw(Frame(stimulus=texture))
            print(f"renderer: {backend.ctx.info['GL_RENDERER']}; frames padded to {FRAME_S * 1000:.0f} ms "
                  f"({1 / FRAME_S:.0f} Hz), {args.seconds:g} s per rate")
            for rate in (30.0, 60.0, 90.0):
                m = measure(backend, texture, rate, args.seconds, not args.no_priority)
                late = np.abs(m["late_ms"])
                timed_ok = np.isclose(m["samples"], m["expected"][: len(m["samples"])]).mean() if len(m["samples"]) else 0
                old_share = len(m["old_error_ms"]) / len(m["expected"])
                old_on_time = (np.abs(m["old_error_ms"]) <= 2.0).sum() / len(m["expected"])
                print(f"{rate:4.0f} Hz (sampler at {m['priority']} priority): {len(m['samples'])} of "
                      f"{len(m['expected'])} samples; frames median "
                      f"{np.median(m['frame_ms']):.0f} ms (max {m['frame_ms'].max():.0f})\n"
                      f"    now-only source: {100 * (late <= 2.0).mean():.2f} % within ±2 ms of the due time "
                      f"(lateness p50 {np.median(late):.2f} / p99 {np.percentile(late, 99):.2f} / max {late.max():.2f} ms)\n"
                      f"    timed source: {100 * timed_ok:.2f} % of samples are the pose of their due time\n"
                      f"    baseline (one sample per frame): {100 * old_share:.1f} % of the samples taken, "
                      f"{100 * old_on_time:.1f} % of them within ±2 ms")


if __name__ == "__main__":
    main()
