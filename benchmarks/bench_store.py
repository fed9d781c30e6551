"""Store benchmark: latency of committing one answer through the session engine, and pose-sample insert
throughput, on a SQLite file with ``synchronous=FULL`` (every commit reaches the disk).

Goals (issue 2): answer commit p99 <= 10 ms; pose batch inserts >= 10x the real time of 90 Hz sampling.

Usage: ``python benchmarks/bench_store.py [--participants 5] [--dir FOLDER]`` (the folder's file system is
what is measured; the default is a fresh temporary folder).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from study.driver import RaterModel
from study.engine import SessionEngine
from study.protocol import DEFAULT_PROTOCOL
from study.store import add_participant, create_study, import_stimuli

POSE_HZ = 90.0


def make_stimuli(folder: Path, scenes: tuple[str, ...], per_scene: int) -> Path:
    rng = np.random.default_rng(0)
    for scene in scenes:
        (folder / scene).mkdir(parents=True, exist_ok=True)
        for n in range(per_scene):
            Image.fromarray(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)).save(folder / scene / f"{n}.png")
    return folder


def answer_latencies(engine: SessionEngine, rater: RaterModel) -> list[float]:
    """Runs the session; returns the wall time of each rating/SSQ submit (the commit included), in s."""
    clock = datetime.now(timezone.utc)
    latencies = []
    step = engine.current()
    while step.kind != "done":
        duration = {"stimulus": step.exposure_s, "break": step.min_duration_s}.get(step.kind, 2.0)
        value = rater.value(engine.participant_code, step) if step.kind in ("rating", "ssq") else None
        shown, clock = clock, clock + timedelta(seconds=duration)
        start = time.perf_counter()
        step_kind = step.kind
        step = engine.submit(step.key, value, shown_at=shown, answered_at=clock)
        if step_kind in ("rating", "ssq"):
            latencies.append(time.perf_counter() - start)
    return latencies


def pose_throughput(engine: SessionEngine, batch: int, batches: int) -> float:
    """Pose samples stored per second when inserted ``batch`` at a time."""
    rng = np.random.default_rng(1)
    samples = [tuple(row) for row in np.column_stack([np.arange(batch) / POSE_HZ, rng.normal(size=(batch, 3))]).tolist()]
    start = time.perf_counter()
    for _ in range(batches):
        engine.record_poses(engine.trials[0].index, samples)
    return batch * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=5)
    parser.add_argument("--per-scene", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        db = create_study(folder / "bench.sqlite", DEFAULT_PROTOCOL)
        with db:
            with db.engine.connect() as connection:
                mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
                sync = connection.exec_driver_sql("PRAGMA synchronous").scalar()
            import_stimuli(db, make_stimuli(folder / "stimuli", db.protocol.scenes, args.per_scene))
            rater = RaterModel(0)
            latencies: list[float] = []
            engines = []
            for number in range(args.participants):
                code = f"B{number:03d}"
                add_participant(db, code)
                engines.append(SessionEngine.start(db, code))
                latencies += answer_latencies(engines[-1], rater)
            ms = np.array(latencies) * 1e3
            print(f"database: {folder / 'bench.sqlite'} (journal_mode={mode}, synchronous={sync} (2 = FULL))")
            print(
                f"answer commit through SessionEngine.submit, n={ms.size}: p50 {np.percentile(ms, 50):.2f} ms, "
                f"p90 {np.percentile(ms, 90):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms, max {ms.max():.2f} ms "
                f"(goal p99 <= 10 ms: {'met' if np.percentile(ms, 99) <= 10 else 'NOT met'})"
            )
            for batch, batches in ((90, 100), (int(20 * POSE_HZ), 20)):
                rate = pose_throughput(engines[0], batch, batches)
                print(
                    f"pose samples, batches of {batch} ({batch / POSE_HZ:g} s at 90 Hz): {rate:,.0f} samples/s "
                    f"= {rate / POSE_HZ:,.0f}x real time (goal >= 10x: {'met' if rate / POSE_HZ >= 10 else 'NOT met'})"
                )


if __name__ == "__main__":
    main()
