"""Study data in long format, as the analysis reads it: one row per answer, SSQ item or pose sample.

Training answers are included with ``training=True``; the analysis excludes them. Times are tz-aware
UTC pandas datetimes. Answers of withdrawn sessions are kept (withdrawing stops a session, it does not
retract consent to use what was recorded); ``panostudy study delete-participant`` removes a participant.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from study.errors import PanostudyError
from study.models import Answer, Participant, PoseSample, SsqAnswer, Stimulus, Study, StudySession, Trial
from study.outputs import check_output_file, write_all
from study.store import StudyDB, open_study

ANSWER_COLUMNS = {
    "study": "string",
    "protocol_hash": "string",
    "participant": "string",
    "session": "int64",
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
SSQ_COLUMNS = {"participant": "string", "session": "int64", "phase": "string", "item": "int64", "value": "int64"}
POSE_COLUMNS = {
    "participant": "string",
    "session": "int64",
    "trial_index": "int64",
    "stimulus": "string",
    "scene": "string",
    "t": "float64",
    "yaw_deg": "float64",
    "pitch_deg": "float64",
    "roll_deg": "float64",
    "runtime_time_ns": "Int64",   # the tracker's own time stamp (OpenXR XrTime), empty where there is none
}


def _typed(rows: list, columns: dict[str, str]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(rows, columns=list(columns))
    for position, (name, dtype) in enumerate(columns.items()):
        if dtype == "Int64":
            # straight from the rows: through float64 (pandas' way with gaps) ns time stamps would lose digits
            frame[name] = pd.array([row[position] for row in rows], dtype="Int64")
        elif dtype.startswith("datetime64"):
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
                Study.name, StudySession.protocol_sha256, Participant.code, StudySession.id, Trial.index, Trial.training,
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
        for (study, sha, code, session_id, index, training, path, stim_sha, scene, scale, item, value, rt, shown, answered) in raw:
            limits = db.protocol.scale(scale)
            rows.append(
                (study, sha, code, session_id, index, training, path, stim_sha, scene, scale, item, value,
                 limits.min, limits.max, rt, shown, answered)
            )
        return _typed(rows, ANSWER_COLUMNS)


def load_ssq(db_url: str | Path | StudyDB) -> pd.DataFrame:
    """Every SSQ answer (columns :data:`SSQ_COLUMNS`; ``item`` 1..16 in Kennedy et al. (1993) order)."""
    with _opened(db_url) as db:
        query = (
            sa.select(Participant.code, StudySession.id, SsqAnswer.phase, SsqAnswer.item, SsqAnswer.value)
            .select_from(SsqAnswer)
            .join(StudySession, SsqAnswer.session_id == StudySession.id)
            .join(Participant, StudySession.participant_id == Participant.id)
            .order_by(Participant.number, SsqAnswer.phase.desc(), SsqAnswer.item)
        )
        with db.Session() as session:
            return _typed(session.execute(query).all(), SSQ_COLUMNS)


def load_poses(db_url: str | Path | StudyDB) -> pd.DataFrame:
    """Every head pose sample (columns :data:`POSE_COLUMNS`; ``t`` in seconds since the stimulus was shown)."""
    with _opened(db_url) as db:
        query = (
            sa.select(
                Participant.code, StudySession.id, Trial.index, Stimulus.path, Stimulus.scene,
                PoseSample.t, PoseSample.yaw_deg, PoseSample.pitch_deg, PoseSample.roll_deg, PoseSample.runtime_time_ns,
            )
            .select_from(PoseSample)
            .join(Trial, PoseSample.trial_id == Trial.id)
            .join(Stimulus, Trial.stimulus_id == Stimulus.id)
            .join(StudySession, PoseSample.session_id == StudySession.id)
            .join(Participant, StudySession.participant_id == Participant.id)
            .order_by(Participant.number, Trial.index, PoseSample.t, PoseSample.id)
        )
        with db.Session() as session:
            return _typed(session.execute(query).all(), POSE_COLUMNS)


def check_output_path(out_path: Path, option: str = "--out") -> str:
    """Refuses an export path that cannot be written (see :func:`study.outputs.check_output_file`);
    returns its suffix."""
    return check_output_file(Path(out_path), option, (".csv", ".parquet"))


def _writer(frame: pd.DataFrame, suffix: str):
    if suffix == ".csv":
        return lambda path: frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    return lambda path: frame.to_parquet(path, index=False)


def write_frames(frames: list[tuple[pd.DataFrame, str | Path]]) -> list[Path]:
    """Writes frames as CSV (ISO-8601 UTC times) or Parquet, chosen by each file's suffix, all or nothing:
    no file is replaced unless every one was written (files 0600, missing folders created 0700)."""
    outputs = [(Path(path), _writer(frame, check_output_path(Path(path)))) for frame, path in frames]
    return write_all(outputs)


def write_frame(frame: pd.DataFrame, out_path: str | Path) -> Path:
    """Writes one frame as :func:`write_frames` does."""
    return write_frames([(frame, out_path)])[0]


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
    return _typed(list(frame[list(columns)].itertuples(index=False, name=None)), columns)
