"""Checks that turn a long-format frame into the test answers every analysis works on.

All checks run before any statistic, so bad input stops the analysis with one :class:`AnalysisError` line
that names the column or value, says what was wrong and how to fix it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from study.errors import AnalysisError

ANSWER_COLUMNS = (
    "study", "protocol_hash", "participant", "session", "trial_index", "training", "stimulus",
    "stimulus_sha256", "scene", "scale", "item", "value", "scale_min", "scale_max",
    "response_time_s", "shown_at", "answered_at", "answer_source",
)
# The columns the statistics actually read; the others may be absent in a hand-made frame.
REQUIRED_COLUMNS = ("participant", "training", "stimulus", "scene", "scale", "item", "value", "scale_min", "scale_max")
KEY_COLUMNS = ("participant", "stimulus", "scene", "scale", "item")
SSQ_COLUMNS = ("participant", "session", "phase", "item", "value")
POSE_COLUMNS = ("participant", "session", "trial_index", "stimulus", "scene", "t", "yaw_deg", "pitch_deg", "roll_deg")


def _require(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AnalysisError(
            f"{what} lack the column(s) {', '.join(missing)}; give the long format of 'panostudy study export'"
        )


def require_finite(frame: pd.DataFrame, column: str, where: str) -> None:
    """Refuses a frame whose ``column`` is missing or holds NaN / infinite values (one line naming the first)."""
    if column not in frame.columns:
        raise AnalysisError(f"{where}: the answers lack the column '{column}'; give the long format of 'panostudy study export'")
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)
    bad = ~np.isfinite(values)
    if bad.any():
        row = frame.loc[frame.index[np.flatnonzero(bad)[0]]]
        who = ", ".join(f"{k} {row[k]}" for k in ("participant", "stimulus", "scale", "item") if k in frame.columns)
        raise AnalysisError(
            f"{where}: column '{column}' holds {int(bad.sum())} missing or non-numeric value(s), e.g. {row[column]!r}"
            + (f" ({who})" if who else "") + "; drop those rows or fix them before the analysis"
        )


def category_codes(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes 0..k−1 and the k labels (as str) of a column, cheap when it is already categorical."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes = column.cat.codes.to_numpy()
        return codes, np.asarray(column.cat.categories.astype(str))
    codes, labels = pd.factorize(column, sort=True)
    return codes, np.asarray(labels.astype(str))


def _as_category(column: pd.Series) -> pd.Series:
    if isinstance(column.dtype, pd.CategoricalDtype):
        column = column.cat.remove_unused_categories()
        return column.cat.rename_categories([str(c) for c in column.cat.categories])
    return column.astype("string").astype("category")


def _as_bool(column: pd.Series) -> pd.Series:
    if column.dtype == bool:
        return column
    text = column.astype("string").str.strip().str.lower()
    mapped = text.map({"true": True, "1": True, "false": False, "0": False})
    if mapped.isna().any():
        bad = column[mapped.isna()].iloc[0]
        raise AnalysisError(f"column 'training' holds {bad!r}; use True/False (or 1/0)")
    return mapped.astype(bool)


def prepare_answers(answers: pd.DataFrame) -> pd.DataFrame:
    """Validates long-format answers and returns the test answers only.

    Parameters
    ----------
    answers : pandas.DataFrame
        One row per answer (columns of ``study.export.ANSWER_COLUMNS``; at least :data:`REQUIRED_COLUMNS`).

    Returns
    -------
    pandas.DataFrame
        The non-training rows, ``value`` as int64, key columns as categoricals (fast grouping),
        ``scale_min``/``scale_max`` as int64.

    Raises
    ------
    AnalysisError
        No answers at all, only training answers, several protocol versions (``protocol_hash``) in one
        frame, a value that is not an integer or lies outside ``scale_min..scale_max``, or a scene that has
        no answers for one of the scales.
    """
    _require(answers, REQUIRED_COLUMNS, "the answers")
    if answers.empty:
        raise AnalysisError("the study has no answers (empty database or export); run sessions first, then analyse")
    training = _as_bool(answers["training"])
    test = answers.loc[~training.to_numpy()]
    if test.empty:
        raise AnalysisError(
            f"the study has only training answers ({len(answers)} rows); training answers are never analysed"
        )
    if "protocol_hash" in test.columns:
        hashes = _as_category(test["protocol_hash"]).cat.categories
        if len(hashes) > 1:
            shown = ", ".join(sorted(str(h)[:12] for h in hashes))
            raise AnalysisError(
                f"the answers mix {len(hashes)} protocol versions (protocol_hash {shown}); "
                "analyse one protocol version at a time (pick one with --study or export it separately)"
            )
    values = pd.to_numeric(test["value"], errors="coerce")
    non_integer = values.isna() | (values != values.round())
    if non_integer.any():
        row = test.loc[non_integer].iloc[0]
        raise AnalysisError(
            f"column 'value' holds {row['value']!r} (participant {row['participant']}, stimulus {row['stimulus']}, "
            f"scale {row['scale']}); every rating must be an integer"
        )
    low = pd.to_numeric(test["scale_min"], errors="coerce")
    high = pd.to_numeric(test["scale_max"], errors="coerce")
    outside = (values < low) | (values > high) | low.isna() | high.isna()
    if outside.any():
        row = test.loc[outside].iloc[0]
        raise AnalysisError(
            f"{int(outside.sum())} rating(s) lie outside their scale's range, e.g. value {row['value']} for scale "
            f"{row['scale']} item {row['item']} (participant {row['participant']}, stimulus {row['stimulus']}) "
            f"outside {row['scale_min']}..{row['scale_max']}; fix or remove these rows"
        )
    out = test.copy()
    out["training"] = False
    out["value"] = values.astype("int64")
    out["scale_min"] = low.astype("int64")
    out["scale_max"] = high.astype("int64")
    for column in KEY_COLUMNS:
        out[column] = _as_category(out[column])

    present = out.groupby(["scene", "scale"], observed=True).size()
    scales = out["scale"].cat.categories
    for scene in out["scene"].cat.categories:
        have = set(present.loc[scene].index) if scene in present.index.get_level_values(0) else set()
        missing = [s for s in scales if s not in have]
        if missing:
            raise AnalysisError(
                f"scene '{scene}' has no answers for scale(s) {', '.join(missing)}; every scene needs every scale "
                "for Table 1 (check the protocol and the stimuli imported for this scene)"
            )
    return out.reset_index(drop=True)


def prepare_ssq(ssq: pd.DataFrame) -> pd.DataFrame:
    """Validates SSQ answers: items 1..16, values 0..3, complete questionnaires.

    Raises
    ------
    AnalysisError
        A missing column, an item outside 1..16, a value outside 0..3 (e.g. stored 1..4), a phase other than
        ``pre``/``post``, or a questionnaire with missing or repeated items.
    """
    _require(ssq, SSQ_COLUMNS, "the SSQ answers")
    frame = ssq.copy()
    frame["item"] = pd.to_numeric(frame["item"], errors="coerce")
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    frame["phase"] = frame["phase"].astype("string").str.lower()
    bad_item = ~frame["item"].between(1, 16)
    if bad_item.any():
        raise AnalysisError(f"SSQ item {frame.loc[bad_item, 'item'].iloc[0]!r} is not in 1..16 (Kennedy et al. 1993 order)")
    bad_value = ~frame["value"].isin([0, 1, 2, 3])
    if bad_value.any():
        raise AnalysisError(
            f"SSQ value {frame.loc[bad_value, 'value'].iloc[0]!r} is not in 0..3 (0 none, 1 slight, 2 moderate, "
            "3 severe); store answers zero-relative"
        )
    bad_phase = ~frame["phase"].isin(["pre", "post"])
    if bad_phase.any():
        raise AnalysisError(f"SSQ phase {frame.loc[bad_phase, 'phase'].iloc[0]!r} is neither 'pre' nor 'post'")
    counts = frame.groupby(["participant", "session", "phase"], observed=True)["item"].agg(["size", "nunique"])
    incomplete = counts[(counts["size"] != 16) | (counts["nunique"] != 16)]
    if not incomplete.empty:
        participant, session, phase = incomplete.index[0]
        raise AnalysisError(
            f"SSQ of participant {participant} session {session} ({phase}) has {incomplete['size'].iloc[0]} answers "
            "for 16 distinct items; each questionnaire needs items 1..16 exactly once"
        )
    frame["item"] = frame["item"].astype("int64")
    frame["value"] = frame["value"].astype("int64")
    return frame


def prepare_poses(poses: pd.DataFrame | None) -> pd.DataFrame:
    """Returns the pose samples (possibly none), checked for the columns the heat maps read."""
    if poses is None:
        return pd.DataFrame(columns=list(POSE_COLUMNS))
    _require(poses, ("scene", "stimulus", "yaw_deg", "pitch_deg"), "the pose samples")
    if "interrupted" in poses.columns:
        # A pause or a stop cut that showing short and the stimulus was shown again from its start: where
        # people looked is the complete showing's, so the interrupted one's samples stay in the data only.
        poses = poses[~poses["interrupted"].astype("boolean").fillna(False).to_numpy(bool)]
    return poses
