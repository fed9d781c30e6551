"""Fixations on the sphere from gaze samples (I-VT, I-DT), and head-only "fixations" from the viewport centre.

Every detector works on the samples' unit vectors, so nothing breaks at the ±180° seam or near the poles, and
uses the runtime's sample times. A fixation's centre is the normalised mean of its samples' unit vectors; its
onset and offset are the times of its first and last sample, its duration their difference. Invalid samples
(``valid`` false, or a non-finite direction) are left out; a fixation may bridge a loss of at most
``max_gap_s`` (Tobii's gap fill-in default, 75 ms) but never a longer one, such as a blink.

Defaults follow the Salient360! toolbox (``reference/gaze.md``): I-VT at 120°/s with at least 80 ms, I-DT at
1° dispersion for at least 100 ms, head-only centroids of 100 ms windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from study.errors import AnalysisError
from study.sphere import unit_vectors, yaw_pitch

IVT_VELOCITY_DEG_S = 120.0
IVT_MIN_DURATION_S = 0.08
IDT_DISPERSION_DEG = 1.0
IDT_MIN_DURATION_S = 0.1
HEAD_WINDOW_S = 0.1
MAX_GAP_S = 0.075
MERGE_GAP_S = 0.075
MERGE_ANGLE_DEG = 0.5

FIXATION_COLUMNS = ("onset_s", "offset_s", "duration_s", "yaw_deg", "pitch_deg", "n_samples")
#: One recording: a participant's samples during one trial of one session.
TRIAL_KEYS = ("participant", "session", "trial_index")
#: Columns of a trial that are carried from the samples to its fixations when present.
TRIAL_ATTRIBUTES = ("stimulus", "scene")


def _valid_samples(t, yaw_deg, pitch_deg, valid, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Times and unit vectors of the valid samples, after checking the arrays."""
    t = np.asarray(t, dtype=np.float64).ravel()
    yaw = np.asarray(yaw_deg, dtype=np.float64).ravel()
    pitch = np.asarray(pitch_deg, dtype=np.float64).ravel()
    keep = np.ones(t.size, dtype=bool) if valid is None else np.array(valid, dtype=bool).ravel()
    if not (t.size == yaw.size == pitch.size == keep.size):
        raise AnalysisError(
            f"{where}: t, yaw, pitch and valid have {t.size}, {yaw.size}, {pitch.size} and {keep.size} samples; "
            "pass arrays of one length"
        )
    keep &= np.isfinite(yaw) & np.isfinite(pitch) & np.isfinite(t)
    times = t[keep]
    if times.size > 1 and (np.diff(times) <= 0).any():
        raise AnalysisError(f"{where}: sample times are not increasing; sort the samples by t and drop duplicates")
    return times, unit_vectors(yaw[keep], pitch[keep])


def _segment_starts(times: np.ndarray, max_gap_s: float) -> np.ndarray:
    """True at each sample that follows a loss longer than ``max_gap_s`` (and at the first sample)."""
    starts = np.ones(times.size, dtype=bool)
    if times.size > 1:
        dt = np.diff(times)
        nominal = float(np.median(dt))
        starts[1:] = dt > max_gap_s + nominal
    return starts


def _merge_adjacent(
    times: np.ndarray, vectors: np.ndarray, first: np.ndarray, last: np.ndarray, gap_s: float | None, angle_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Joins consecutive runs less than ``gap_s`` apart whose centres are within ``angle_deg`` (Tobii's I-VT
    filter step): a noise spike or a short loss inside a fixation must not cut it in two."""
    if gap_s is None or first.size < 2:
        return first, last
    sums = np.vstack([np.zeros((1, 3)), np.cumsum(vectors, axis=0)])
    merged_first, merged_last = [int(first[0])], [int(last[0])]
    for start, end in zip(first[1:].tolist(), last[1:].tolist()):
        previous = sums[merged_last[-1] + 1] - sums[merged_first[-1]]
        current = sums[end + 1] - sums[start]
        cos_angle = previous @ current / (np.linalg.norm(previous) * np.linalg.norm(current))
        close = np.degrees(np.arccos(np.clip(cos_angle, -1.0, 1.0))) <= angle_deg
        if close and times[start] - times[merged_last[-1]] <= gap_s:
            merged_last[-1] = end
        else:
            merged_first.append(start)
            merged_last.append(end)
    return np.array(merged_first, dtype=np.int64), np.array(merged_last, dtype=np.int64)


def _frame(times: np.ndarray, vectors: np.ndarray, first: np.ndarray, last: np.ndarray) -> pd.DataFrame:
    """The fixation table of runs ``first[k]..last[k]`` (inclusive sample indices)."""
    sums = np.vstack([np.zeros((1, 3)), np.cumsum(vectors, axis=0)])
    yaw, pitch = yaw_pitch(sums[last + 1] - sums[first])
    return pd.DataFrame(
        {
            "onset_s": times[first],
            "offset_s": times[last],
            "duration_s": times[last] - times[first],
            "yaw_deg": yaw,
            "pitch_deg": pitch,
            "n_samples": (last - first + 1).astype(np.int64),
        },
        columns=list(FIXATION_COLUMNS),
    )


def _empty() -> pd.DataFrame:
    return _frame(np.zeros(0), np.zeros((0, 3)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))


def angular_velocity_deg_s(times: np.ndarray, vectors: np.ndarray, segment_starts: np.ndarray) -> np.ndarray:
    """Angular speed (°/s) at each sample: from the previous sample, or to the next one at a segment's start."""
    if times.size < 2:
        return np.zeros(times.size)
    step = np.degrees(2.0 * np.arcsin(np.clip(np.linalg.norm(np.diff(vectors, axis=0), axis=1) / 2.0, 0.0, 1.0)))
    backward = np.concatenate([[np.nan], step / np.diff(times)])
    forward = np.concatenate([backward[1:], [np.nan]])
    # the first sample after a gap has no previous sample in its segment: use the next one
    velocity = np.where(segment_starts, forward, backward)
    next_is_start = np.concatenate([segment_starts[1:], [True]])
    return np.where(segment_starts & next_is_start, 0.0, velocity)


def _runs(mask: np.ndarray, segment_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive ``(first, last)`` indices of the runs of ``mask``, split at segment starts."""
    begins = mask & (segment_starts | ~np.concatenate([[False], mask[:-1]]))
    ends = mask & np.concatenate([segment_starts[1:] | ~mask[1:], [True]])
    return np.flatnonzero(begins), np.flatnonzero(ends)


def ivt_fixations(
    t,
    yaw_deg,
    pitch_deg,
    valid=None,
    *,
    velocity_deg_s: float = IVT_VELOCITY_DEG_S,
    min_duration_s: float = IVT_MIN_DURATION_S,
    max_gap_s: float = MAX_GAP_S,
    merge_gap_s: float | None = MERGE_GAP_S,
    merge_angle_deg: float = MERGE_ANGLE_DEG,
    smoothing: str | None = None,
) -> pd.DataFrame:
    """Fixations by velocity threshold (I-VT; Salvucci & Goldberg 2000) on the sphere.

    Parameters
    ----------
    t, yaw_deg, pitch_deg : array-like, shape (N,)
        Sample times (s) and gaze directions in the stimulus frame.
    valid : array-like of bool, optional
        The runtime's validity flags; invalid samples are ignored.
    velocity_deg_s : float
        Samples slower than this belong to fixations (Salient360!: 120°/s).
    min_duration_s : float
        Shorter runs of slow samples are dropped (80 ms).
    max_gap_s : float
        Longest loss of samples a fixation may bridge.
    merge_gap_s, merge_angle_deg : float
        Consecutive fixations at most this far apart in time (75 ms) and in direction (0.5°) are joined
        before short ones are dropped; ``merge_gap_s=None`` turns this off.
    smoothing : {None, "savgol", "gaussian"}
        Smooth the velocity before thresholding: Savitzky–Golay (window 9, order 2) or a Gaussian
        (σ = 2 samples), as the Salient360! toolbox offers; noisy trackers need it.

    Returns
    -------
    pandas.DataFrame
        One row per fixation with :data:`FIXATION_COLUMNS`, in time order.

    Notes
    -----
    The speed at sample i is :math:`v_i = \\angle(\\mathbf{x}_{i-1}, \\mathbf{x}_i) / (t_i - t_{i-1})`, the
    angle from the chord, :math:`2\\arcsin(|\\mathbf{x}_{i-1} - \\mathbf{x}_i| / 2)`. A fixation is a
    maximal run of samples with :math:`v_i < v_{\\max}` lasting at least the minimum duration.
    """
    if not velocity_deg_s > 0 or not min_duration_s >= 0:
        raise AnalysisError(f"ivt_fixations: velocity_deg_s={velocity_deg_s!r} must be > 0 and min_duration_s={min_duration_s!r} >= 0")
    times, vectors = _valid_samples(t, yaw_deg, pitch_deg, valid, "ivt_fixations")
    if times.size < 2:
        return _empty()
    starts = _segment_starts(times, max_gap_s)
    velocity = angular_velocity_deg_s(times, vectors, starts)
    if smoothing == "savgol":
        from scipy.signal import savgol_filter

        if velocity.size >= 9:
            velocity = savgol_filter(velocity, 9, 2)
    elif smoothing == "gaussian":
        from scipy.ndimage import gaussian_filter1d

        velocity = gaussian_filter1d(velocity, 2.0)
    elif smoothing is not None:
        raise AnalysisError(f"ivt_fixations: smoothing={smoothing!r}; use None, 'savgol' or 'gaussian'")
    first, last = _runs(velocity < velocity_deg_s, starts)
    first, last = _merge_adjacent(times, vectors, first, last, merge_gap_s, merge_angle_deg)
    long_enough = times[last] - times[first] >= min_duration_s
    return _frame(times, vectors, first[long_enough], last[long_enough])


def idt_fixations(
    t,
    yaw_deg,
    pitch_deg,
    valid=None,
    *,
    dispersion_deg: float = IDT_DISPERSION_DEG,
    min_duration_s: float = IDT_MIN_DURATION_S,
    max_gap_s: float = MAX_GAP_S,
    merge_gap_s: float | None = MERGE_GAP_S,
    merge_angle_deg: float = MERGE_ANGLE_DEG,
) -> pd.DataFrame:
    """Fixations by dispersion threshold (I-DT; Salvucci & Goldberg 2000) on the sphere.

    A window of samples spanning ``min_duration_s`` is a fixation if its dispersion — the largest angle
    between any two of its samples — is at most ``dispersion_deg``; it then grows sample by sample while
    the dispersion stays within the threshold. Otherwise the window moves on by one sample.
    Parameters and result as :func:`ivt_fixations` (defaults 1°, 100 ms).
    """
    if not dispersion_deg > 0 or not min_duration_s > 0:
        raise AnalysisError(f"idt_fixations: dispersion_deg={dispersion_deg!r} and min_duration_s={min_duration_s!r} must be > 0")
    times, vectors = _valid_samples(t, yaw_deg, pitch_deg, valid, "idt_fixations")
    if times.size < 2:
        return _empty()
    starts = _segment_starts(times, max_gap_s)
    segment = np.cumsum(starts)
    segment_end = np.searchsorted(segment, segment, side="right") - 1
    limit = 2.0 * np.sin(np.radians(dispersion_deg) / 2.0)  # the same threshold as a chord
    firsts, lasts = [], []
    i, n = 0, times.size
    while i < n:
        j = int(np.searchsorted(times, times[i] + min_duration_s, side="left"))
        if j > segment_end[i]:
            i = segment_end[i] + 1
            continue
        window = vectors[i : j + 1]
        if np.linalg.norm(window[:, None, :] - window[None, :, :], axis=-1).max() <= limit:
            while j + 1 <= segment_end[i] and np.linalg.norm(vectors[i : j + 1] - vectors[j + 1], axis=1).max() <= limit:
                j += 1
            firsts.append(i)
            lasts.append(j)
            i = j + 1
        else:
            i += 1
    first, last = _merge_adjacent(
        times, vectors, np.array(firsts, dtype=np.int64), np.array(lasts, dtype=np.int64), merge_gap_s, merge_angle_deg
    )
    return _frame(times, vectors, first, last)


def head_fixations(t, yaw_deg, pitch_deg, *, window_s: float = HEAD_WINDOW_S) -> pd.DataFrame:
    """Head-only "fixations": the viewport centre's centroid over consecutive windows of ``window_s``.

    Without eye data the viewport centre stands for the gaze (Salient360!'s head-only maps). As in its
    toolbox, the head trajectory is reduced to the centroids of consecutive 100 ms windows, each of which
    counts as one fixation; maps of them use the wider head-only kernel (σ = 3.34°).
    """
    if not window_s > 0:
        raise AnalysisError(f"head_fixations: window_s={window_s!r} must be positive")
    times, vectors = _valid_samples(t, yaw_deg, pitch_deg, None, "head_fixations")
    if times.size == 0:
        return _empty()
    # the tolerance keeps a sample that falls on a window boundary in the later window despite rounding
    window = np.floor((times - times[0]) / window_s + 1e-9).astype(np.int64)
    first = np.flatnonzero(np.concatenate([[True], np.diff(window) > 0]))
    last = np.concatenate([first[1:] - 1, [times.size - 1]])
    return _frame(times, vectors, first, last)


_DETECTORS = {"ivt": ivt_fixations, "idt": idt_fixations, "head": head_fixations}


def detect_fixations(
    samples: pd.DataFrame, *, method: str = "ivt", keys: Sequence[str] = TRIAL_KEYS, **params
) -> pd.DataFrame:
    """Fixations of every recording in a frame of samples.

    Parameters
    ----------
    samples : pandas.DataFrame
        Gaze samples (``t, yaw_deg, pitch_deg`` and optionally ``valid``) or, for ``method="head"``, head
        poses as ``study.export.load_poses`` returns them; plus the ``keys`` columns.
    method : {"ivt", "idt", "head"}
        :func:`ivt_fixations`, :func:`idt_fixations` or :func:`head_fixations`.
    keys : sequence of str
        Columns that identify one recording (participant, session, trial).
    **params
        Passed to the detector (e.g. ``velocity_deg_s=100``).

    Returns
    -------
    pandas.DataFrame
        ``keys``, the recording's ``stimulus``/``scene`` where the samples have them, then
        :data:`FIXATION_COLUMNS`; one row per fixation.
    """
    if method not in _DETECTORS:
        raise AnalysisError(f"detect_fixations: method={method!r}; use one of {', '.join(_DETECTORS)}")
    needed = [*keys, "t", "yaw_deg", "pitch_deg"]
    missing = [column for column in needed if column not in samples.columns]
    if missing:
        raise AnalysisError(f"gaze samples lack the columns {missing}; they need {needed} (and optionally 'valid')")
    attributes = [column for column in TRIAL_ATTRIBUTES if column in samples.columns and column not in keys]
    parts = []
    for key, recording in samples.sort_values([*keys, "t"]).groupby(list(keys), sort=True, observed=True):
        arguments = [recording["t"].to_numpy(), recording["yaw_deg"].to_numpy(), recording["pitch_deg"].to_numpy()]
        if method != "head":
            arguments.append(recording["valid"].to_numpy(dtype=bool) if "valid" in recording.columns else None)
        found = _DETECTORS[method](*arguments, **params)
        for name, value in zip(keys, key if isinstance(key, tuple) else (key,)):
            found.insert(len(found.columns) - len(FIXATION_COLUMNS), name, value)
        for name in attributes:
            found.insert(len(found.columns) - len(FIXATION_COLUMNS), name, recording[name].iloc[0])
        parts.append(found)
    columns = [*keys, *attributes, *FIXATION_COLUMNS]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]
