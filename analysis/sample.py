"""Who took part and what was left out: demographics, session durations and the exclusions summary."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.screening import ScreeningResult

def _counts(column: pd.Series) -> str:
    values = column.astype("string").fillna("not given").str.strip().replace("", "not given")
    counts = values.value_counts()
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def demographics(participants: pd.DataFrame | None, analysed: pd.Series) -> pd.DataFrame:
    """N, age (mean, SD, range, how many gave it), gender and vision-correction counts of the analysed participants.

    Parameters
    ----------
    participants : pandas.DataFrame or None
        ``participant, age, gender, vision_correction`` (``study.export.load_participants``).
    analysed : pandas.Series
        Participant codes that contributed test answers.

    Returns
    -------
    pandas.DataFrame
        ``measure, value`` rows, ready to print.
    """
    codes = pd.Index(analysed.astype("string").unique())
    rows = [("participants analysed", str(len(codes)))]
    if participants is None or participants.empty:
        rows.append(("demographics", "not available (no participant table: analyse the database or an export folder)"))
        return pd.DataFrame(rows, columns=["measure", "value"])
    table = participants.assign(participant=participants["participant"].astype("string"))
    rows.insert(0, ("participants enrolled", str(table["participant"].nunique())))
    table = table[table["participant"].isin(codes)]
    age = pd.to_numeric(table["age"], errors="coerce").dropna()
    if len(age):
        rows.append(("age (years)", f"mean {age.mean():.1f}, SD {age.std(ddof=1) if len(age) > 1 else float('nan'):.1f}, "
                                    f"range {age.min():.0f}–{age.max():.0f} (given by {len(age)} of {len(table)})"))
    else:
        rows.append(("age (years)", f"not given by any of the {len(table)}"))
    rows.append(("gender", _counts(table["gender"])))
    rows.append(("vision correction", _counts(table["vision_correction"])))
    return pd.DataFrame(rows, columns=["measure", "value"])


def session_durations(sessions: pd.DataFrame | None, answers: pd.DataFrame) -> pd.DataFrame:
    """Duration of every session (minutes), and a one-row summary in ``attrs['summary']``.

    From the sessions table (``started_at`` to ``ended_at``, breaks included) where given, otherwise from the
    answers (first question shown to last answer confirmed, so the instructions and the first SSQ are missing).
    """
    if sessions is not None and len(sessions) and sessions["duration_min"].notna().any():
        table = sessions[["participant", "session", "status", "duration_min"]].copy()
        source = "sessions table: start to end, breaks included"
    elif {"shown_at", "answered_at", "session"} <= set(answers.columns):
        grouped = answers.groupby(["participant", "session"], observed=True)
        span = (grouped["answered_at"].max() - grouped["shown_at"].min()).dt.total_seconds() / 60.0
        table = span.rename("duration_min").reset_index().assign(status="unknown")
        table = table[["participant", "session", "status", "duration_min"]]
        source = "answers: first rating shown to last rating confirmed (instructions and SSQ excluded)"
    else:
        table = pd.DataFrame(columns=["participant", "session", "status", "duration_min"])
        source = "not available"
    minutes = pd.to_numeric(table["duration_min"], errors="coerce").dropna()
    table.attrs["summary"] = (
        f"{len(minutes)} sessions: mean {minutes.mean():.1f} min, SD {minutes.std(ddof=1) if len(minutes) > 1 else float('nan'):.1f}, "
        f"median {minutes.median():.1f}, range {minutes.min():.1f}–{minutes.max():.1f} min ({source})"
        if len(minutes) else f"session durations {source}"
    )
    return table


def flagged_answer_mask(answers: pd.DataFrame, flagged: pd.DataFrame | None) -> np.ndarray:
    """True for every answer of a flagged trial (matched on participant, trial and, where both have it, session)."""
    if flagged is None or flagged.empty:
        return np.zeros(len(answers), dtype=bool)
    keys = ["participant", "trial_index"] + (["session_number"] if "session_number" in answers.columns else [])
    right = flagged[keys].astype({"participant": "string"}).drop_duplicates().assign(_flagged=True)
    left = answers[keys].astype({"participant": "string"}).reset_index(drop=True)
    left["trial_index"] = left["trial_index"].astype("int64")
    right["trial_index"] = right["trial_index"].astype("int64")
    return left.merge(right, on=keys, how="left")["_flagged"].fillna(False).to_numpy(bool)


def exclusions_summary(screening: ScreeningResult, sessions: pd.DataFrame | None,
                       flagged: pd.DataFrame | None, *, flagged_excluded: bool = False) -> pd.DataFrame:
    """Everything left out of (or flagged in) the analysis, one row each: ``what, participant, detail, effect``.

    Parameters
    ----------
    screening : ScreeningResult
        The screening that was applied (rejected observers and the rule's statistics).
    sessions : pandas.DataFrame or None
        The sessions table (``status``, ``withdraw_reason``, ``withdrawn_at_step``).
    flagged : pandas.DataFrame or None
        Flagged trials with the columns of ``study.export.FLAG_COLUMNS`` (pose rate too low, stimulus
        interrupted by a pause).
    flagged_excluded : bool
        Whether the flagged trials' answers were removed before the analysis.
    """
    rows = []
    stats = screening.participants.set_index(screening.participants["participant"].astype(str))
    for code in screening.rejected:
        detail = "screened out"
        if screening.method == "bt500" and code in stats.index:
            r = stats.loc[code]
            detail = (f"BT.500 β2 rule: {int(r['P'])} scores above and {int(r['Q'])} below the panel's limits, "
                      f"(P+Q)/n = {r['ratio_pq']:.3f} > 0.05 and |P−Q|/(P+Q) = {r['ratio_balance']:.2f} < 0.3")
        rows.append(("screened-out observer", code, detail, "all answers removed"))
    if sessions is not None and len(sessions):
        for r in sessions[sessions["status"].astype("string") == "withdrawn"].itertuples():
            reason = r.withdraw_reason if isinstance(r.withdraw_reason, str) and r.withdraw_reason else "no reason given"
            step = f" at step {r.withdrawn_at_step}" if isinstance(getattr(r, "withdrawn_at_step", None), str) else ""
            rows.append(("withdrawn session", str(r.participant), f"{reason}{step}",
                         "answers recorded before the withdrawal are analysed"))
        for r in sessions[sessions["status"].astype("string") == "declined"].itertuples():
            rows.append(("consent declined", str(r.participant), "declined on the consent panel",
                         "nothing recorded but the decision"))
        for r in sessions[sessions["status"].astype("string").isin(["planned", "running"])].itertuples():
            rows.append((f"{r.status} session", str(r.participant), "not finished", "answers recorded so far are analysed"))
    if flagged is not None and len(flagged):
        for r in flagged.itertuples():
            where = f"session {r.session_number}, station {r.station}, trial {r.trial_index}"
            rows.append((f"flagged trial: {r.flag}", str(r.participant), f"{where}: {r.detail}",
                         "answers removed" if flagged_excluded else "kept (flagged only)"))
    return pd.DataFrame(rows, columns=["what", "participant", "detail", "effect"])
