"""A seeded simulator of a whole study in the long format the analysis reads.

The generative model is the one of ITU-T P.913 §12.6 / P.910 Annex E (Netflix sureal's MLE model) followed
by what a real 1..5 scale does to it:

    u_es = clip(round(x_e + b_s + ε_es), scale_min, scale_max),   ε_es ~ N(0, v_s² + a_c(e)²)

with x_e the true quality of presentation e (stimulus × scale × item), b_s the bias and v_s the
inconsistency of participant s, and a_c the ambiguity of stimulus c. Tests, the benchmark and the demo
draw from it, so the truth behind every estimate is known.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

_FIRST_SESSION = pd.Timestamp("2026-11-02 09:00", tz="UTC")
PAPER_SCENES = ("vehicle", "street", "indoor", "mountainous")
PAPER_SCALES: Mapping[str, tuple[str, ...]] = {
    "ACR": ("overall",),
    "VAR": ("clarity", "colour_reproduction", "detail_rendering"),
    "SSDS": ("distorted_natural", "flat_spatial", "incoherent_coherent"),
    "PCR": ("seamless_transitions", "layout_consistency"),
}
# The paper's Table 1 (scale -> scene -> mean); the default true scene quality of the simulator.
PAPER_TABLE1: Mapping[str, Mapping[str, float]] = {
    "ACR": {"vehicle": 4.05, "street": 3.82, "indoor": 3.93, "mountainous": 4.02},
    "VAR": {"vehicle": 3.20, "street": 3.92, "indoor": 3.79, "mountainous": 3.85},
    "SSDS": {"vehicle": 4.32, "street": 3.89, "indoor": 3.96, "mountainous": 4.202},
    "PCR": {"vehicle": 4.23, "street": 3.96, "indoor": 4.02, "mountainous": 4.58},
}


@dataclass(frozen=True)
class SimulatedStudy:
    """A simulated study and the truth behind it.

    Attributes
    ----------
    answers : pandas.DataFrame
        Long-format answers (the columns of ``study.export.ANSWER_COLUMNS``), training rows included.
    ssq : pandas.DataFrame
        ``participant, session, phase, item, value`` (16 items, 0..3, before and after).
    poses : pandas.DataFrame
        ``participant, session, trial_index, stimulus, scene, t, yaw_deg, pitch_deg, roll_deg``.
    bias, inconsistency : pandas.Series
        b_s and v_s per participant (biases centred to mean 0, which the MLE model also assumes).
    ambiguity : pandas.Series
        a_c per stimulus.
    quality : pandas.DataFrame
        ``stimulus, scene, scale, item, x_e``: the latent true quality of every presentation.
    scene_means : pandas.DataFrame
        ``scale, scene, latent, expected``: the mean latent quality of a Table 1 cell and the expected
        observed (rounded, clipped) rating of the cell for these participants, which Table 1 estimates.
    """

    answers: pd.DataFrame
    ssq: pd.DataFrame
    poses: pd.DataFrame
    bias: pd.Series
    inconsistency: pd.Series
    ambiguity: pd.Series
    quality: pd.DataFrame
    scene_means: pd.DataFrame


def expected_rating(mean: np.ndarray, sd: np.ndarray, low: int, high: int) -> np.ndarray:
    """Expected value of ``clip(round(Z), low, high)`` for ``Z ~ N(mean, sd²)``.

    Notes
    -----
    E[R] = low + Σ_{k=low}^{high−1} P(Z ≥ k + ½), since R exceeds k exactly when Z rounds above k.
    """
    thresholds = np.arange(low, high) + 0.5
    z = (np.asarray(mean)[..., None] - thresholds) / np.asarray(sd)[..., None]
    return low + stats.norm.cdf(z).sum(axis=-1)


def simulate_study(
    *,
    n_participants: int = 32,
    stimuli_per_scene: int = 5,
    scenes: Sequence[str] = PAPER_SCENES,
    scales: Mapping[str, Sequence[str]] = PAPER_SCALES,
    scene_quality: Mapping[str, Mapping[str, float]] | None = None,
    bias_sd: float = 0.3,
    inconsistency: tuple[float, float] = (0.3, 0.7),
    ambiguity: tuple[float, float] = (0.1, 0.3),
    stimulus_sd: float = 0.15,
    item_sd: float = 0.1,
    coverage: float = 1.0,
    n_training: int = 2,
    scale_range: tuple[int, int] = (1, 5),
    pose_rate_hz: float = 10.0,
    exposure_s: float = 3.0,
    study: str = "simulated",
    protocol_hash: str = "0" * 64,
    seed: int = 0,
) -> SimulatedStudy:
    """Draws a study from the generative model in the module docstring.

    Parameters
    ----------
    n_participants, stimuli_per_scene : int
        Panel size and number of panoramas per scene.
    scenes, scales : sequence of str, mapping scale -> item ids
        Design; defaults are the paper's four scenes and the protocol ``dong2025``'s items.
    scene_quality : mapping scale -> scene -> float, optional
        Mean true quality of each Table 1 cell; defaults to the paper's Table 1 (other scales: 3.5).
    bias_sd : float
        Standard deviation of the participant biases b_s (then centred to mean 0).
    inconsistency, ambiguity : (float, float)
        Uniform ranges of v_s and a_c.
    stimulus_sd, item_sd : float
        Spread of the stimulus and item offsets around the cell mean (both centred within a cell, so the
        cell's mean latent quality is exactly ``scene_quality``).
    coverage : float
        Share of the test stimuli each participant rates (1.0: every participant rates every stimulus).
    n_training : int
        Training trials per participant (flagged ``training=True``, rated like the others).
    scale_range : (int, int)
        ``scale_min, scale_max`` of every scale.
    pose_rate_hz, exposure_s : float
        Head-pose sampling rate and viewing time per trial; ``pose_rate_hz=0`` gives no pose samples.
    seed : int
        Seed of the local ``numpy.random.Generator``; same arguments → same study.

    Returns
    -------
    SimulatedStudy
    """
    rng = np.random.default_rng(seed)
    low, high = scale_range
    scenes = tuple(scenes)
    scale_ids = tuple(scales)
    quality_means = scene_quality or PAPER_TABLE1
    participants = np.array([f"P{i + 1:03d}" for i in range(n_participants)])

    # 1. Participants: centred biases keep x_e identifiable (the MLE fixes mean(b_s) = 0 the same way).
    b_s = rng.normal(0.0, bias_sd, n_participants)
    b_s -= b_s.mean() if n_participants > 1 else b_s
    v_s = rng.uniform(*inconsistency, n_participants)

    # 2. Stimuli and presentations (stimulus × scale × item) with their latent true quality x_e.
    stimuli = [(f"{scene}/{scene}_{k:02d}.png", scene) for scene in scenes for k in range(stimuli_per_scene)]
    a_c = rng.uniform(*ambiguity, len(stimuli))
    rows = []
    for scale in scale_ids:
        items = tuple(scales[scale])
        item_offset = rng.normal(0.0, item_sd, len(items))
        item_offset -= item_offset.mean()
        for scene in scenes:
            cell_mean = quality_means.get(scale, {}).get(scene, 3.5)
            stim_offset = rng.normal(0.0, stimulus_sd, stimuli_per_scene)
            stim_offset -= stim_offset.mean()
            for k in range(stimuli_per_scene):
                for item, offset in zip(items, item_offset):
                    rows.append((f"{scene}/{scene}_{k:02d}.png", scene, scale, item, cell_mean + stim_offset[k] + offset))
    quality = pd.DataFrame(rows, columns=["stimulus", "scene", "scale", "item", "x_e"])
    stim_index = {name: i for i, (name, _) in enumerate(stimuli)}

    # 3. Trials: training first, then a random subset (all, by default) of the stimuli in random order.
    n_stimuli = len(stimuli)
    n_seen = max(1, int(round(coverage * n_stimuli)))
    seen = np.argsort(rng.random((n_participants, n_stimuli)), axis=1)[:, :n_seen]
    trial_stim = np.concatenate([np.full((n_participants, n_training), -1), seen], axis=1)  # -1: training
    n_trials = trial_stim.shape[1]
    trial_part = np.repeat(np.arange(n_participants), n_trials)
    trial_index = np.tile(np.arange(n_trials), n_participants)
    trial_stim = trial_stim.ravel()

    # Every stimulus is rated on every item, so presentations form a (stimulus, item) grid; training
    # trials reuse the first stimulus's qualities under the name of a training panorama.
    quality = quality.sort_values(["stimulus"], kind="stable", key=lambda c: c.map(stim_index)).reset_index(drop=True)
    x_grid = quality["x_e"].to_numpy().reshape(n_stimuli, -1)
    n_items = x_grid.shape[1]
    row_trial = np.repeat(np.arange(trial_part.size), n_items)
    row_item = np.tile(np.arange(n_items), trial_part.size)
    row_stim = trial_stim[row_trial]
    row_part = trial_part[row_trial]
    training = row_stim < 0
    stim_for_quality = np.where(training, 0, row_stim)
    noise_sd = np.hypot(v_s[row_part], a_c[stim_for_quality])
    x_row = x_grid[stim_for_quality, row_item]
    value = np.clip(np.rint(x_row + b_s[row_part] + rng.normal(0.0, 1.0, row_part.size) * noise_sd), low, high)
    rt = rng.gamma(4.0, 0.8, row_part.size)
    shown = _FIRST_SESSION + pd.to_timedelta(row_part * 86_400 + trial_index[row_trial] * 60, unit="s")
    item_cum = np.cumsum(rt.reshape(-1, n_items), axis=1).ravel()

    training_names = [f"training/training_{t:02d}.png" for t in range(n_training)]
    stim_names = [name for name, _ in stimuli] + training_names
    stim_code = np.where(training, n_stimuli + np.minimum(trial_index[row_trial], max(n_training - 1, 0)), row_stim)
    scene_names = list(scenes) + ["training"]
    scene_code = np.where(training, len(scenes), np.array([scenes.index(sc) for _, sc in stimuli])[stim_for_quality])
    grid_scale = quality["scale"].to_numpy().reshape(n_stimuli, -1)[0]
    grid_item = quality["item"].to_numpy().reshape(n_stimuli, -1)[0]
    frame = pd.DataFrame(
        {
            "study": pd.Categorical.from_codes(np.zeros(row_part.size, dtype=np.int8), [study]),
            "protocol_hash": pd.Categorical.from_codes(np.zeros(row_part.size, dtype=np.int8), [protocol_hash]),
            "participant": pd.Categorical.from_codes(row_part, participants),
            "session": row_part + 1,
            "trial_index": trial_index[row_trial],
            "training": training,
            "stimulus": pd.Categorical.from_codes(stim_code, stim_names),
            "stimulus_sha256": pd.Categorical.from_codes(stim_code, [_fake_sha256(n) for n in stim_names]),
            "scene": pd.Categorical.from_codes(scene_code, scene_names),
            "scale": pd.Categorical(grid_scale[row_item], categories=list(scale_ids)),
            "item": pd.Categorical(grid_item[row_item]),
            "value": value.astype(np.int64),
            "scale_min": np.int64(low),
            "scale_max": np.int64(high),
            "response_time_s": rt,
            "shown_at": shown,
            "answered_at": shown + pd.to_timedelta(exposure_s + item_cum, unit="s"),
            "answer_source": pd.Categorical.from_codes(np.zeros(row_part.size, dtype=np.int8), ["simulated"]),
        }
    )

    # Head poses: a slow random walk in yaw around a per-trial preferred direction, pitch near the horizon.
    test_trials = np.flatnonzero(trial_stim >= 0)
    t = np.arange(0.0, exposure_s, 1.0 / pose_rate_hz) if pose_rate_hz > 0 else np.zeros(0)
    walk = rng.normal(0.0, 40.0, (test_trials.size, 1)) + np.cumsum(rng.normal(0.0, 4.0, (test_trials.size, t.size)), axis=1)
    pose_trial = np.repeat(test_trials, t.size)
    poses = pd.DataFrame(
        {
            "participant": pd.Categorical.from_codes(trial_part[pose_trial], participants),
            "session": trial_part[pose_trial] + 1,
            "trial_index": trial_index[pose_trial],
            "stimulus": pd.Categorical.from_codes(trial_stim[pose_trial], stim_names),
            "scene": pd.Categorical.from_codes(
                np.array([scenes.index(sc) for _, sc in stimuli], dtype=np.int64)[trial_stim[pose_trial]], scene_names
            ),
            "t": np.tile(t, test_trials.size),
            "yaw_deg": ((walk + 180.0) % 360.0 - 180.0).ravel(),
            "pitch_deg": np.clip(rng.normal(-5.0, 12.0, pose_trial.size), -89.0, 89.0),
            "roll_deg": rng.normal(0.0, 2.0, pose_trial.size),
        }
    )

    # 4. SSQ before and after: post-session symptoms a little more frequent than before.
    phase_p = {"pre": [0.75, 0.2, 0.05, 0.0], "post": [0.55, 0.3, 0.12, 0.03]}
    ssq = pd.DataFrame(
        [
            (participants[s], s + 1, phase, item, int(rng.choice(4, p=phase_p[phase])))
            for s in range(n_participants)
            for phase in ("pre", "post")
            for item in range(1, 17)
        ],
        columns=["participant", "session", "phase", "item", "value"],
    )

    # 5. Truth of every Table 1 cell: mean latent quality, and the expected observed rating for this panel.
    # Table 1 averages each participant first, so the truth is the mean over participants of their expectation.
    test = ~training
    expected = pd.DataFrame(
        {
            "scale": frame["scale"].to_numpy()[test],
            "scene": frame["scene"].to_numpy()[test],
            "participant": row_part[test],
            "expected": expected_rating(x_row[test] + b_s[row_part[test]], noise_sd[test], low, high),
        }
    )
    expected = expected.groupby(["scale", "scene", "participant"], sort=False, observed=True)["expected"].mean()
    expected = expected.groupby(level=["scale", "scene"], sort=False, observed=True).mean()
    latent = quality.groupby(["scale", "scene"], sort=False)["x_e"].mean().rename("latent")
    scene_means = pd.concat([latent, expected], axis=1).reset_index()

    return SimulatedStudy(
        answers=frame,
        ssq=ssq,
        poses=poses,
        bias=pd.Series(b_s, index=participants, name="b_s"),
        inconsistency=pd.Series(v_s, index=participants, name="v_s"),
        ambiguity=pd.Series(a_c, index=[name for name, _ in stimuli], name="a_c"),
        quality=quality,
        scene_means=scene_means,
    )


def _fake_sha256(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()
