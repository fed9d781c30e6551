"""Does the full-size demo recover the simulated truth? (issue 7; a benchmark-style check, not run in CI)

Runs ``panostudy demo`` with 32 participants (or reads an existing demo folder with ``--from``) and compares
its Table 1 with the simulated truth: per scene and scale, the true quality the raters were given (the paper's
Table 1, ``panostudy.demo.PAPER_TABLE1``) plus the mean of the rater model's fixed item offsets of that scale. Prints, per scale, the true and recovered scene orderings, Kendall's τ, and
every scene pair with its paired standard error (the SD over participants of their own difference between the
two scenes, / √N); exits 1 if a pair whose true difference is at least ``--min-se`` standard errors comes out in
the wrong order. Smaller true differences (the paper's ACR spans 3.82–4.05) are within the rating noise of 32
participants and are reported, not judged.

    python benchmarks/check_demo_recovery.py [--out out/demo-full] [--from out/demo] [--min-se 3]
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from panostudy.demo import PAPER_TABLE1, DemoSettings
from study.driver import RaterModel
from study.export import load_answers
from study.protocol import DEFAULT_PROTOCOL, load_protocol


def simulated_truth(seed: int) -> dict[tuple[str, str], float]:
    """(scene, scale) → the scale's mean latent quality under the demo's rater model."""
    raters = RaterModel(seed, scene_quality=PAPER_TABLE1)
    protocol = load_protocol(DEFAULT_PROTOCOL)
    return {
        (scene, scale.id): PAPER_TABLE1[scene][scale.id]
        + sum(raters.item_offset(scene, scale.id, item.id) for item in scale.items) / len(scale.items)
        for scene in protocol.scenes
        for scale in protocol.scales
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo-full"), help="where to run the demo")
    parser.add_argument("--from", dest="existing", type=Path, help="an existing demo folder instead of a new run")
    parser.add_argument("--participants", type=int, default=32)
    parser.add_argument("--per-scene", type=int, default=1)
    parser.add_argument("--seed", type=int, default=DemoSettings.seed, help="the demo's --seed")
    parser.add_argument("--min-se", type=float, default=3.0, help="judge pairs whose true difference is this many SEs")
    args = parser.parse_args()

    folder = args.existing
    if folder is None:
        started = time.perf_counter()
        command = [sys.executable, "-m", "panostudy", "demo", "--out", str(args.out),
                   "--participants", str(args.participants), "--per-scene", str(args.per_scene), "--seed", str(args.seed)]
        if subprocess.run(command, stdin=subprocess.DEVNULL).returncode != 0:
            return 2
        print(f"\ndemo wall time: {time.perf_counter() - started:.0f} s "
              f"({args.participants} participants, {args.per_scene} panorama(s) per scene)")
        folder = args.out
    table = pd.read_csv(folder / "report" / "table1.csv")
    true_means = simulated_truth(args.seed)
    answers = load_answers(folder / "study.sqlite")
    per_participant = (answers[~answers["training"]].groupby(["scale", "scene", "participant"], observed=True)["value"]
                       .mean().unstack("participant"))

    wrong = 0
    for scale, rows in table.groupby("scale", sort=False):
        recovered = dict(zip(rows["scene"], rows["mos"]))
        truth = {scene: true_means[scene, scale] for scene in recovered}
        scenes = sorted(truth)
        tau = kendalltau([truth[s] for s in scenes], [recovered[s] for s in scenes]).statistic
        print(f"\n{scale}: true order {' > '.join(sorted(truth, key=truth.get, reverse=True))}; "
              f"recovered {' > '.join(sorted(recovered, key=recovered.get, reverse=True))}; Kendall tau {tau:+.2f}")
        for a, b in itertools.combinations(scenes, 2):
            true_diff, got_diff = truth[a] - truth[b], recovered[a] - recovered[b]
            paired = per_participant.loc[(scale, a)] - per_participant.loc[(scale, b)]
            se = paired.std(ddof=1) / np.sqrt(paired.count())
            judged = abs(true_diff) >= args.min_se * se
            ok = (true_diff > 0) == (got_diff > 0)
            wrong += judged and not ok
            verdict = ("ok" if ok else "WRONG") if judged else "(too close to judge)"
            print(f"  {a:>11} − {b:<11} true {true_diff:+.2f}  recovered {got_diff:+.2f}  SE {se:.2f}  {verdict}")
    print(f"\n{wrong} pair(s) with a true difference ≥ {args.min_se} SE recovered in the wrong order")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
