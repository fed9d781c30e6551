"""Benchmark: about one million simulated answers → validation, BT.500 screening, Table 1 with CIs.

Prints the wall time of each step (best of ``--repeat`` runs) and the ratio of the whole pipeline to a bare
``groupby(["scale", "scene"]).mean()`` over the same frame, the least any Table 1 can cost.

    .venv/bin/python benchmarks/bench_analysis.py [--participants 1000] [--stimuli-per-scene 28] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

from analysis.screening import bt500_screening
from analysis.simulate import simulate_study
from analysis.table1 import table1
from analysis.validate import prepare_answers


def best_of(repeat: int, fn):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=1000)
    parser.add_argument("--stimuli-per-scene", type=int, default=28)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    start = time.perf_counter()
    study = simulate_study(n_participants=args.participants, stimuli_per_scene=args.stimuli_per_scene,
                           pose_rate_hz=0, seed=0)
    frame = study.answers
    print(f"simulated {len(frame):,} answers ({int((~frame['training']).sum()):,} test) from {args.participants} "
          f"participants in {time.perf_counter() - start:.2f} s")

    t_base, _ = best_of(args.repeat, lambda: frame.groupby(["scale", "scene"], observed=True)["value"].mean())
    t_valid, test = best_of(args.repeat, lambda: prepare_answers(frame))
    t_bt500, screened = best_of(args.repeat, lambda: bt500_screening(test))
    t_table, t1 = best_of(args.repeat, lambda: table1(screened))
    total = t_valid + t_bt500 + t_table

    print(f"bare groupby(scale, scene).mean()       {t_base * 1e3:9.1f} ms")
    print(f"validate + drop training                 {t_valid * 1e3:9.1f} ms")
    print(f"BT.500 beta2 screening ({len(screened.presentations):,} presentations) {t_bt500 * 1e3:9.1f} ms")
    print(f"Table 1 with t and BCa bootstrap CIs     {t_table * 1e3:9.1f} ms")
    print(f"total                                    {total * 1e3:9.1f} ms  (goal <= 10 s)")
    print(f"ratio total / bare groupby mean          {total / t_base:9.1f} x")
    print(f"rejected observers: {len(screened.rejected)} of {test['participant'].nunique()}; "
          f"Table 1 cells: {len(t1.cells)}")


if __name__ == "__main__":
    main()
