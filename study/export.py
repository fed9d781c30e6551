"""Study data in long format, as the analysis reads it: one row per answer, SSQ item, pose sample or flag.

Training answers are included with ``training=True``; the analysis excludes them. Every row names its
session both by database id (``session``) and by the participant's session number with the station it
ran on (``session_number``, ``station``). Times are tz-aware UTC pandas datetimes. Answers of withdrawn sessions are kept (withdrawing stops a session, it does not
retract consent to use what was recorded); ``panostudy study delete-participant`` removes a participant.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from study.errors import PanostudyError
from study.models import Answer, Event, Participant, PoseSample, SsqAnswer, Stimulus, Study, StudySession, Trial
from study.store import StudyDB, open_study

ANSWER_COLUMNS = {
    "study": "string",
    "protocol_hash": "string",
    "participant": "string",
    "session": "int64",
    "session_number": "int64",
    "station": "string",
    "trial_index": "int64",
    "training": "bool",
    "stimulus": "string",
    "stimulus_sha256": "string",
    "scene": "string",
    "scale": "string",
    "item": "string",
    "value": "int64",
    "scale_min": "int64",
    "scale_max": "int64",
    "response_time_s": "float64",
    "shown_at": "datetime64[ns, UTC]",
    "answered_at": "datetime64[ns, UTC]",
}
SSQ_COLUMNS = {"participant": "string", "session": "int64", "session_number": "int64", "station": "string",
               "phase": "string", "item": "int64", "value": "int64"}
POSE_COLUMNS = {
    "participant": "string",
    "session": "int64",
    "session_number": "int64",
    "station": "string",
    "trial_index": "int64",
    "stimulus": "string",
    "scene": "string",
    "t": "float64",
    "yaw_deg": "float64",
    "pitch_deg": "float64",
    "roll_deg": "float64",
    "presentation": "int64",
    "interrupted": "bool",
    "fov_h_deg": "float64",
    "fov_v_deg": "float64",
}
FLAG_COLUMNS = {
    "participant": "string",
    "session_number": "int64",
    "station": "string",
    "trial_index": "int64",
    "flag": "string",
    "detail": "string",
}


def _typed(rows: list, columns: dict[str, str]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(rows, columns=list(columns))
    for name, dtype in columns.items():
        if dtype.startswith("datetime64"):
            frame[name] = pd.to_datetime(frame[name], utc=True).astype(dtype)
        else:
            frame[name] = frame[name].astype(dtype)
    return frame


@contextmanager
def _opened(db: str | Path | StudyDB) -> Iterator[StudyDB]:
    """The study itself if already open (left open), else opened for the block and closed after it."""
    if isinstance(db, StudyDB):
        yield db
        return
    with open_study(db) as opened:
        yield opened


def load_answers(db_url: str | Path | StudyDB) -> pd.DataFrame:
    """Every rating of the study in long format (columns :data:`ANSWER_COLUMNS`), in recording order."""
    with _opened(db_url) as db:
        query = (
            sa.select(
                Study.name, StudySession.protocol_sha256, Participant.code, StudySession.id, StudySession.number,
                StudySession.station, Trial.index, Trial.training,
                Stimulus.path, Stimulus.sha256, Stimulus.scene, Answer.scale, Answer.item, Answer.value,
                Answer.response_time_s, Answer.shown_at, Answer.answered_at,
            )
            .select_from(Answer)
            .join(Trial, Answer.trial_id == Trial.id)
            .join(Stimulus, Trial.stimulus_id == Stimulus.id)
            .join(StudySession, Answer.session_id == StudySession.id)
            .join(Participant, StudySession.participant_id == Participant.id)
            .join(Study, Participant.study_id == Study.id)
            .order_by(Participant.number, Answer.answered_at, Answer.id)
        )
        with db.Session() as session:
            raw = session.execute(query).all()
        rows = []
        for (study, sha, code, session_id, number, station, index, training, path, stim_sha, scene, scale, item, value,
             rt, shown, answered) in raw:
            limits = db.protocol.scale(scale)
            rows.append(
                (study, sha, code, session_id, number, station, index, training, path, stim_sha, scene, scale, item,
                 value, limits.min, limits.max, rt, shown, answered)
            )
        return _typed(rows, ANSWER_COLUMNS)


def load_ssq(db_url: str | Path | StudyDB) -> pd.DataFrame:
    """Every SSQ answer (columns :data:`SSQ_COLUMNS`; ``item`` 1..16 in Kennedy et al. (1993) order)."""
    with _opened(db_url) as db:
        query = (
            sa.select(Participant.code, StudySession.id, StudySession.number, StudySession.station, SsqAnswer.phase,
                      SsqAnswer.item, SsqAnswer.value)
            .select_from(SsqAnswer)
            .join(StudySession, SsqAnswer.session_id == StudySession.id)
            .join(Participant, StudySession.participant_id == Participant.id)
            .order_by(Participant.number, StudySession.number, SsqAnswer.phase.desc(), SsqAnswer.item)
        )
        with db.Session() as session:
            return _typed(session.execute(query).all(), SSQ_COLUMNS)


def load_poses(db_url: str | Path | StudyDB, *, interrupted: bool = False) -> pd.DataFrame:
    """Every head pose sample (columns :data:`POSE_COLUMNS`; ``t`` in seconds since the stimulus was shown).

    Parameters
    ----------
    interrupted : bool
        Also return the samples of showings that a pause or a stop interrupted (``interrupted`` True;
        the stimulus was shown again from its start, and that showing's samples are the other rows).
        Off by default: viewing statistics want each trial's one complete showing.
    """
    with _opened(db_url) as db:
        query = (
            sa.select(
                Participant.code, StudySession.id, StudySession.number, StudySession.station, Trial.index,
                Stimulus.path, Stimulus.scene, PoseSample.t, PoseSample.yaw_deg, PoseSample.pitch_deg,
                PoseSample.roll_deg, PoseSample.presentation, PoseSample.interrupted, PoseSample.fov_h_deg,
                PoseSample.fov_v_deg,
            )
            .select_from(PoseSample)
            .join(Trial, PoseSample.trial_id == Trial.id)
            .join(Stimulus, Trial.stimulus_id == Stimulus.id)
            .join(StudySession, PoseSample.session_id == StudySession.id)
            .join(Participant, StudySession.participant_id == Participant.id)
            .order_by(Participant.number, StudySession.number, Trial.index, PoseSample.presentation, PoseSample.t,
                      PoseSample.id)
        )
        if not interrupted:
            query = query.where(PoseSample.interrupted.is_(False))
        with db.Session() as session:
            return _typed(session.execute(query).all(), POSE_COLUMNS)


def load_flagged_trials(db_url: str | Path | StudyDB) -> pd.DataFrame:
    """Every flagged trial, one row per flag (columns :data:`FLAG_COLUMNS`), in recording order.

    Flags are ``trial_flag`` events the session wrote: ``pose_rate_low`` (head poses stored below 95 % of
    the protocol's ``pose_rate_hz``) and ``stimulus_interrupted`` (a pause or a stop interrupted the
    stimulus, which was shown again from its start). ``detail`` says what happened in words.
    """
    with _opened(db_url) as db:
        query = (
            sa.select(Participant.code, StudySession.number, StudySession.station, Event.detail)
            .select_from(Event)
            .join(StudySession, Event.session_id == StudySession.id)
            .join(Participant, StudySession.participant_id == Participant.id)
            .where(Event.kind == "trial_flag", Participant.study_id == db.study_id)
            .order_by(Participant.number, StudySession.number, Event.at, Event.id)
        )
        with db.Session() as session:
            rows = [(code, number, station, d["trial_index"], d["flag"], d.get("detail", ""))
                    for code, number, station, d in session.execute(query).all()]
        return _typed(rows, FLAG_COLUMNS)


def check_output_path(out_path: Path) -> str:
    suffix = out_path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise PanostudyError(f"{out_path}: unknown export format '{suffix}'; name the file .csv or .parquet")
    if not out_path.parent.is_dir():
        raise PanostudyError(f"{out_path}: folder {out_path.parent} does not exist; create it first")
    return suffix


def write_frame(frame: pd.DataFrame, out_path: str | Path) -> Path:
    """Writes a frame as CSV (ISO-8601 UTC times) or Parquet, chosen by the file's suffix."""
    out_path = Path(out_path)
    if check_output_path(out_path) == ".csv":
        frame.to_csv(out_path, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    else:
        frame.to_parquet(out_path, index=False)
    return out_path


def export_answers(db_url: str | Path | StudyDB, out_path: str | Path) -> Path:
    """Writes :func:`load_answers` to ``out_path`` (``.csv`` or ``.parquet``)."""
    check_output_path(Path(out_path))
    return write_frame(load_answers(db_url), out_path)


def read_answers(path: str | Path) -> pd.DataFrame:
    """Reads an exported answers file back with the same dtypes as :func:`load_answers`."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        return _typed_frame(pd.read_parquet(path), ANSWER_COLUMNS)
    frame = pd.read_csv(path, dtype={k: v for k, v in ANSWER_COLUMNS.items() if not v.startswith("datetime")})
    return _typed_frame(frame, ANSWER_COLUMNS)


def _typed_frame(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PanostudyError(f"answers file lacks columns {missing}; export it again with 'panostudy study export'")
    return _typed(frame[list(columns)].to_dict("records"), columns)
