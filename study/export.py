"""Study data in long format, as the analysis reads it, and the export package that R, Python and SPSS users load.

One row per answer, SSQ item, pose or gaze sample, validation target or flagged trial; one row per participant,
session and stimulus.
Training answers are included with ``training=True``; the analysis excludes them. Every row names its session
both by database id (``session``) and by the participant's session number with the station it ran on
(``session_number``, ``station``). Times are tz-aware UTC pandas datetimes.
Answers of withdrawn sessions are kept (withdrawing stops a session, it does not retract consent to use what
was recorded); ``panostudy study delete-participant`` removes a participant.

:func:`export_study` writes every table as CSV (or Parquet), the protocol verbatim, a codebook
(``codebook.md``) and a Frictionless Data package descriptor (``datapackage.json``) with a Table Schema per
CSV, and on request SPSS ``.sav`` files with the protocol's wording as variable and value labels, and one
``.xlsx`` workbook. :data:`CODEBOOK` documents every column of every table; a test checks that no exported
column lacks an entry, so a new column cannot ship undocumented.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from study.errors import PanostudyError
from study.models import (
    Answer,
    Event,
    GazeSample,
    Participant,
    PoseSample,
    SsqAnswer,
    Stimulus,
    Study,
    StudySession,
    Trial,
    ValidationRun,
    ValidationSample,
    ValidationTarget,
)
from study.outputs import check_output_file, write_all
from study.protocol import Protocol
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
    "answer_source": "string",
}
SSQ_COLUMNS = {"participant": "string", "session": "int64", "session_number": "int64", "station": "string",
               "phase": "string", "item": "int64", "item_name": "string", "value": "int64"}
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
    "x_m": "float64",
    "y_m": "float64",
    "z_m": "float64",
    "runtime_time_ns": "Int64",   # the tracker's own time stamp (OpenXR XrTime), empty where there is none
}
GAZE_COLUMNS = {
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
    "valid": "bool",
    "presentation": "int64",
    "interrupted": "bool",
    "runtime_time_ns": "Int64",
}
VALIDATION_COLUMNS = {
    "participant": "string",
    "session": "int64",
    "session_number": "int64",
    "station": "string",
    "attempt": "int64",
    "level": "string",
    "target": "Int64",
    "target_yaw_deg": "float64",
    "target_pitch_deg": "float64",
    "n_samples": "int64",
    "n_valid": "int64",
    "accuracy_deg": "float64",
    "precision_rms_s2s_deg": "float64",
    "precision_sd_deg": "float64",
    "data_loss_pct": "float64",
    "threshold_deg": "float64",
    "recalibrate": "bool",
    "gaze_source": "string",
    "validated_at": "datetime64[ns, UTC]",
}
VALIDATION_SAMPLE_COLUMNS = {
    "participant": "string",
    "session": "int64",
    "session_number": "int64",
    "station": "string",
    "attempt": "int64",
    "target": "int64",
    "t": "float64",
    "yaw_deg": "float64",
    "pitch_deg": "float64",
    "valid": "bool",
    "runtime_time_ns": "Int64",
}
FLAG_COLUMNS = {
    "participant": "string",
    "session_number": "int64",
    "station": "string",
    "trial_index": "int64",
    "flag": "string",
    "detail": "string",
}
PARTICIPANT_COLUMNS = {
    "participant": "string", "number": "int64", "age": "Int64", "gender": "string", "vision_correction": "string",
    "enrolled_at": "datetime64[ns, UTC]",
}
SESSION_COLUMNS = {
    "participant": "string", "session": "int64", "session_number": "int64", "station": "string", "status": "string", "planned_at": "datetime64[ns, UTC]",
    "started_at": "datetime64[ns, UTC]", "ended_at": "datetime64[ns, UTC]", "duration_min": "float64",
    "withdraw_reason": "string", "withdrawn_at_step": "string", "resumes": "int64", "answer_source": "string",
    "backend": "string", "frame_mean_ms": "float64", "frame_p99_ms": "float64",
}
STIMULUS_COLUMNS = {
    "stimulus": "string", "sha256": "string", "scene": "string", "training": "bool", "width": "int64",
    "height": "int64", "placeholder": "bool", "model": "string", "prompt": "string", "seed": "Int64",
    "generator_metadata": "string",
}
#: The tables of an export, by file stem, with their columns.
TABLES = {"answers": ANSWER_COLUMNS, "participants": PARTICIPANT_COLUMNS, "sessions": SESSION_COLUMNS,
          "stimuli": STIMULUS_COLUMNS, "ssq": SSQ_COLUMNS, "poses": POSE_COLUMNS, "flagged_trials": FLAG_COLUMNS,
          "gaze": GAZE_COLUMNS, "validation": VALIDATION_COLUMNS, "validation_samples": VALIDATION_SAMPLE_COLUMNS}


@dataclass(frozen=True)
class Field:
    """One column in the codebook: Table Schema type, what it means, unit and allowed values."""

    type: str
    description: str
    unit: str = ""
    allowed: tuple = ()
    minimum: float | None = None
    maximum: float | None = None


_UTC = "UTC, ISO 8601 (e.g. 2026-11-02T09:00:00.000000Z)"
_PARTICIPANT = Field("string", "pseudonymous participant code (the key to persons is kept outside panostudy)")
_SESSION = Field("integer", "session id, unique in the study (one per session of a participant)")
_SESSION_NUMBER = Field("integer", "which of the participant's sessions, from 1 (the protocol's [[sessions]] in order)",
                        minimum=1)
_STATION = Field("string", "the station (machine) the session started on: --station, by default its host name "
                           "(empty: recorded before schema version 2)")
_STIMULUS = Field("string", "stimulus file, relative to the export's stimulus root (datapackage.json "
                            "'panostudy:stimulus_root')")
_TRIAL = Field("integer", "position of the trial in the session's planned order, from 0 (training first)", minimum=0)
_PRESENTATION = Field("integer", "which showing of the trial's stimulus, from 0; a pause or stop interrupts a showing "
                                 "and the stimulus is shown again from its start", minimum=0)
_INTERRUPTED = Field("boolean", "sample of an interrupted showing (kept, but not the trial's complete exposure; the "
                                "analysis leaves these rows out)")
#: table -> column -> :class:`Field`. Add an entry here with every new exported column.
CODEBOOK: dict[str, dict[str, Field]] = {
    "answers": {
        "study": Field("string", "study name (the protocol's name)"),
        "protocol_hash": Field("string", "SHA-256 of the protocol TOML the session ran"),
        "participant": _PARTICIPANT,
        "session": _SESSION,
        "session_number": _SESSION_NUMBER,
        "station": _STATION,
        "trial_index": _TRIAL,
        "training": Field("boolean", "training trial (never analysed)"),
        "stimulus": _STIMULUS,
        "stimulus_sha256": Field("string", "SHA-256 of the stimulus file"),
        "scene": Field("string", "scene of the stimulus ('training' for training panoramas)"),
        "scale": Field("string", "rating scale id of the protocol"),
        "item": Field("string", "item id within the scale (wording in protocol.toml and the codebook's items)"),
        "value": Field("integer", "the rating", "scale point", (), None, None),
        "scale_min": Field("integer", "lowest value of the item's scale", "scale point"),
        "scale_max": Field("integer", "highest value of the item's scale", "scale point"),
        "response_time_s": Field("number", "time from the question appearing to the confirmed answer", "s", minimum=0),
        "shown_at": Field("datetime", "when the question appeared", _UTC),
        "answered_at": Field("datetime", "when the answer was confirmed and committed", _UTC),
        "answer_source": Field("string", "who answered: a participant, the seeded simulated rater, or a replayed "
                                         "answer file", allowed=("participant", "simulated", "replayed")),
    },
    "participants": {
        "participant": _PARTICIPANT,
        "number": Field("integer", "order of enrolment from 0 (picks the scale-order Latin square row)", minimum=0),
        "age": Field("integer", "age as stated (empty: not given)", "years", minimum=0),
        "gender": Field("string", "gender as the participant stated it (empty: not given)"),
        "vision_correction": Field("string", "vision correction as stated, e.g. none, glasses, contact lenses"),
        "enrolled_at": Field("datetime", "when the participant was enrolled", _UTC),
    },
    "sessions": {
        "participant": _PARTICIPANT,
        "session": _SESSION,
        "session_number": _SESSION_NUMBER,
        "station": _STATION,
        "status": Field("string", "state of the session (declined: consent declined, nothing else recorded)",
                        allowed=("planned", "running", "completed", "withdrawn", "declined")),
        "planned_at": Field("datetime", "when the trial order was planned and stored", _UTC),
        "started_at": Field("datetime", "first step shown (empty: not started)", _UTC),
        "ended_at": Field("datetime", "completed or withdrawn (empty: still open)", _UTC),
        "duration_min": Field("number", "ended_at − started_at (breaks and pauses included)", "min", minimum=0),
        "withdraw_reason": Field("string", "reason given when the session was withdrawn"),
        "withdrawn_at_step": Field("string", "step key at which the session was withdrawn"),
        "resumes": Field("integer", "times the session was resumed after a crash or pause", minimum=0),
        "answer_source": Field("string", "who answered (see answers.answer_source)",
                               allowed=("participant", "simulated", "replayed")),
        "backend": Field("string", "viewer backend that showed the stimuli (empty: none, e.g. --backend none)"),
        "frame_mean_ms": Field("number", "mean frame time over the session's trials", "ms", minimum=0),
        "frame_p99_ms": Field("number", "largest per-trial 99th-percentile frame time", "ms", minimum=0),
    },
    "stimuli": {
        "stimulus": _STIMULUS,
        "sha256": Field("string", "SHA-256 of the file at import"),
        "scene": Field("string", "scene ('training' for training panoramas outside a scene folder)"),
        "training": Field("boolean", "training panorama (never a test stimulus)"),
        "width": Field("integer", "image width", "px", minimum=1),
        "height": Field("integer", "image height (width / 2)", "px", minimum=1),
        "placeholder": Field("boolean", "made by the offline tiny random-weight model: a placeholder, not meaningful"),
        "model": Field("string", "stage-1 model id of the generator (empty: not generated by panostudy)"),
        "prompt": Field("string", "generator prompt"),
        "seed": Field("integer", "generator seed (stage 1)"),
        "generator_metadata": Field("string", "the generator manifest's line for this image, as JSON"),
    },
    "ssq": {
        "participant": _PARTICIPANT,
        "session": _SESSION,
        "session_number": _SESSION_NUMBER,
        "station": _STATION,
        "phase": Field("string", "before or after the trials", allowed=("pre", "post")),
        "item": Field("integer", "item number in Kennedy et al. (1993) order", minimum=1, maximum=16),
        "item_name": Field("string", "the symptom as the protocol words it"),
        "value": Field("integer", "0 None, 1 Slight, 2 Moderate, 3 Severe (zero-based)", "scale point", (0, 1, 2, 3)),
    },
    "poses": {
        "participant": _PARTICIPANT,
        "session": _SESSION,
        "session_number": _SESSION_NUMBER,
        "station": _STATION,
        "trial_index": _TRIAL,
        "stimulus": _STIMULUS,
        "scene": Field("string", "scene of the stimulus"),
        "t": Field("number", "time since the stimulus appeared", "s", minimum=0),
        "yaw_deg": Field("number", "head yaw; 0 = image centre, positive = right", "degree", minimum=-180, maximum=180),
        "pitch_deg": Field("number", "head pitch; positive = up", "degree", minimum=-90, maximum=90),
        "roll_deg": Field("number", "head roll", "degree"),
        "presentation": _PRESENTATION,
        "interrupted": _INTERRUPTED,
        "fov_h_deg": Field("number", "horizontal field of view shown (desktop window; empty in a headset)", "degree",
                           minimum=0, maximum=180),
        "fov_v_deg": Field("number", "vertical field of view shown (desktop window; empty in a headset)", "degree",
                           minimum=0, maximum=180),
        "x_m": Field("number", "head position in the tracking space, x (empty where no tracker reports one)", "m"),
        "y_m": Field("number", "head position in the tracking space, y (up)", "m"),
        "z_m": Field("number", "head position in the tracking space, z", "m"),
        "runtime_time_ns": Field("integer", "the tracker's own time stamp of the pose (OpenXR XrTime); empty where "
                                            "the backend has no runtime clock", "ns"),
    },
    "gaze": {
        "participant": _PARTICIPANT,
        "session": _SESSION,
        "session_number": _SESSION_NUMBER,
        "station": _STATION,
        "trial_index": _TRIAL,
        "stimulus": _STIMULUS,
        "scene": Field("string", "scene of the stimulus"),
        "t": Field("number", "time since the stimulus appeared, at the eye tracker's own sample time", "s", minimum=0),
        "yaw_deg": Field("number", "gaze yaw in the stimulus frame; 0 = image centre, positive = right (empty: invalid "
                                   "sample)", "degree", minimum=-180, maximum=180),
        "pitch_deg": Field("number", "gaze pitch in the stimulus frame; positive = up (empty: invalid sample)", "degree",
                           minimum=-90, maximum=90),
        "valid": Field("boolean", "the tracker had the eyes (OpenXR isActive and a valid orientation); false: a blink "
                                  "or a lost eye, without a direction"),
        "presentation": _PRESENTATION,
        "interrupted": _INTERRUPTED,
        "runtime_time_ns": Field("integer", "the tracker's own sample time (OpenXR XrEyeGazeSampleTimeEXT); empty "
                                            "where there is no runtime clock (synthetic tracker)", "ns"),
    },
    "validation": {
        "participant": _PARTICIPANT,
        "session": _SESSION,
        "session_number": _SESSION_NUMBER,
        "station": _STATION,
        "attempt": Field("integer", "which validation of the session, from 1 (a repeat after 'recalibrate' is the next)",
                         minimum=1),
        "level": Field("string", "overall: the attempt's measures (means over targets, data loss pooled); target: one "
                                 "target's", allowed=("overall", "target")),
        "target": Field("integer", "the target's position in the protocol's validation.targets, from 0 (empty: overall)",
                        minimum=0),
        "target_yaw_deg": Field("number", "the target's yaw from straight ahead when the validation began", "degree",
                                minimum=-90, maximum=90),
        "target_pitch_deg": Field("number", "the target's pitch", "degree", minimum=-90, maximum=90),
        "n_samples": Field("integer", "gaze samples measured (after the discarded start of each target)", minimum=0),
        "n_valid": Field("integer", "of them valid", minimum=0),
        "accuracy_deg": Field("number", "mean angular error between gaze and target (empty: no valid sample)", "degree",
                              minimum=0),
        "precision_rms_s2s_deg": Field("number", "precision: RMS of the angles between successive valid samples",
                                       "degree", minimum=0),
        "precision_sd_deg": Field("number", "precision: SD of the samples' angles around their mean direction", "degree",
                                  minimum=0),
        "data_loss_pct": Field("number", "share of invalid samples", "%", minimum=0, maximum=100),
        "threshold_deg": Field("number", "the protocol's validation.threshold_deg (empty: none)", "degree", minimum=0),
        "recalibrate": Field("boolean", "the attempt's accuracy was worse than the threshold: the console said "
                                        "'recalibrate'"),
        "gaze_source": Field("string", "the eye tracker: openxr (XR_EXT_eye_gaze_interaction) or synthetic (the "
                                       "scripted tracker of tests and the demo)"),
        "validated_at": Field("datetime", "when the attempt's last target ended", _UTC),
    },
    "validation_samples": {
        "participant": _PARTICIPANT,
        "session": _SESSION,
        "session_number": _SESSION_NUMBER,
        "station": _STATION,
        "attempt": Field("integer", "the validation attempt (validation.csv)", minimum=1),
        "target": Field("integer", "the target shown, from 0", minimum=0),
        "t": Field("number", "time since the target appeared, at the tracker's sample time", "s", minimum=0),
        "yaw_deg": Field("number", "gaze yaw from straight ahead when the validation began (empty: invalid)", "degree",
                         minimum=-180, maximum=180),
        "pitch_deg": Field("number", "gaze pitch (empty: invalid)", "degree", minimum=-90, maximum=90),
        "valid": Field("boolean", "the tracker had the eyes"),
        "runtime_time_ns": Field("integer", "the tracker's own sample time (OpenXR XrEyeGazeSampleTimeEXT)", "ns"),
    },
    "flagged_trials": {
        "participant": _PARTICIPANT,
        "session_number": _SESSION_NUMBER,
        "station": _STATION,
        "trial_index": _TRIAL,
        "flag": Field("string", "what happened: head poses stored below 95 % of the protocol's pose_rate_hz, or the "
                                "stimulus was interrupted (and shown again)",
                      allowed=("pose_rate_low", "stimulus_interrupted")),
        "detail": Field("string", "the same in words, with the figures (achieved rate, samples, when it was interrupted)"),
    },
}
TABLE_DESCRIPTIONS = {
    "answers": "one row per rating (training rows flagged), long format",
    "participants": "one row per enrolled participant",
    "sessions": "one row per session: status, times, who answered, viewer and frame timing",
    "stimuli": "one row per imported panorama, with its hash and generator provenance",
    "ssq": "one row per Simulator Sickness Questionnaire item answered",
    "poses": "one row per head-orientation sample while a stimulus was shown",
    "flagged_trials": "one row per flag the session set on a trial (pose rate too low, stimulus interrupted)",
    "gaze": "one row per eye-gaze sample while a stimulus was shown (empty: no eye tracker)",
    "validation": "one row per eye-tracker validation attempt (overall) and per target of it",
    "validation_samples": "one row per gaze sample of a validation attempt",
}
EXPORT_MARKER = "datapackage.json"
#: Tables that fit a spreadsheet or an SPSS file; pose and gaze samples may have millions of rows and stay
#: CSV/Parquet only.
SMALL_TABLES = ("answers", "participants", "sessions", "stimuli", "ssq", "flagged_trials", "validation")


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


def _relative(path: str, root: Path | None) -> str:
    if root is None:
        return path
    return os.path.relpath(path, root)


def common_stimulus_root(db_url: str | Path | StudyDB) -> Path:
    """The deepest folder holding every stimulus of the study (test and training)."""
    with _opened(db_url) as db, db.Session() as session:
        paths = session.scalars(sa.select(Stimulus.path).where(Stimulus.study_id == db.study_id)).all()
    if not paths:
        return Path.cwd()
    return Path(os.path.commonpath([str(Path(p).parent) for p in paths]))


def _answer_sources(session, study_id: int) -> dict[int, str]:
    """Session id -> who answered, from the ``answers_source`` events the CLI and the demo record."""
    rows = session.execute(
        sa.select(Event.session_id, Event.detail).join(StudySession, Event.session_id == StudySession.id)
        .join(Participant, StudySession.participant_id == Participant.id)
        .where(Participant.study_id == study_id, Event.kind == "answers_source").order_by(Event.id)
    ).all()
    return {session_id: str(detail.get("source", "participant")) for session_id, detail in rows}


def load_answers(db_url: str | Path | StudyDB, *, stimulus_root: str | Path | None = None) -> pd.DataFrame:
    """Every rating of the study in long format (columns :data:`ANSWER_COLUMNS`), in recording order.

    Stimulus paths are as stored (absolute) unless ``stimulus_root`` is given; then they are relative to it.
    """
    root = None if stimulus_root is None else Path(stimulus_root)
    with _opened(db_url) as db:
        query = (
            sa.select(
                Study.name, StudySession.protocol_sha256, Participant.code, StudySession.id, StudySession.number,
                StudySession.station, Trial.index, Trial.training, Stimulus.path, Stimulus.sha256, Stimulus.scene, Answer.scale, Answer.item, Answer.value,
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
            sources = _answer_sources(session, db.study_id)
        rows = []
        for (study, sha, code, session_id, number, station, index, training, path, stim_sha, scene, scale, item, value,
             rt, shown, answered) in raw:
            limits = db.protocol.scale(scale)
            rows.append(
                (study, sha, code, session_id, number, station, index, training, _relative(path, root), stim_sha, scene,
                 scale, item, value, limits.min, limits.max, rt, shown, answered, sources.get(session_id, "participant"))
            )
        return _typed(rows, ANSWER_COLUMNS)


def load_ssq(db_url: str | Path | StudyDB) -> pd.DataFrame:
    """Every SSQ answer (columns :data:`SSQ_COLUMNS`; ``item`` 1..16 in Kennedy et al. (1993) order, named as the
    protocol words it)."""
    with _opened(db_url) as db:
        query = (
            sa.select(Participant.code, StudySession.id, StudySession.number, StudySession.station, SsqAnswer.phase,
                      SsqAnswer.item, SsqAnswer.value)
            .select_from(SsqAnswer)
            .join(StudySession, SsqAnswer.session_id == StudySession.id)
            .join(Participant, StudySession.participant_id == Participant.id)
            .order_by(Participant.number, StudySession.number, SsqAnswer.phase.desc(), SsqAnswer.item)
        )
        names = db.protocol.ssq.items
        with db.Session() as session:
            rows = [(code, sid, number, station, phase, item, names[item - 1] if 0 < item <= len(names) else None, value)
                    for code, sid, number, station, phase, item, value in session.execute(query).all()]
        return _typed(rows, SSQ_COLUMNS)


def load_poses(db_url: str | Path | StudyDB, *, stimulus_root: str | Path | None = None,
               interrupted: bool = False) -> pd.DataFrame:
    """Every head pose sample (columns :data:`POSE_COLUMNS`; ``t`` in seconds since the stimulus was shown).

    Parameters
    ----------
    stimulus_root : path, optional
        Stimulus paths relative to this folder (default: as stored, absolute).
    interrupted : bool
        Also return the samples of showings that a pause or a stop interrupted (``interrupted`` True; the
        stimulus was shown again from its start, and that showing's samples are the other rows). Off by
        default: viewing statistics want each trial's one complete showing. Exports include them.
    """
    root = None if stimulus_root is None else Path(stimulus_root)
    with _opened(db_url) as db:
        query = _sample_query(PoseSample, interrupted).add_columns(
            PoseSample.t, PoseSample.yaw_deg, PoseSample.pitch_deg, PoseSample.roll_deg, PoseSample.presentation,
            PoseSample.interrupted, PoseSample.fov_h_deg, PoseSample.fov_v_deg, PoseSample.x_m, PoseSample.y_m,
            PoseSample.z_m, PoseSample.runtime_time_ns)
        with db.Session() as session:
            rows = session.execute(query).all()
        if root is not None:
            rows = [(*r[:5], _relative(r[5], root), *r[6:]) for r in rows]
        return _typed(rows, POSE_COLUMNS)


def _sample_query(model, interrupted: bool):
    """Trial samples (poses or gaze) with their participant, session, trial and stimulus, in recording order."""
    query = (
        sa.select(Participant.code, StudySession.id, StudySession.number, StudySession.station, Trial.index,
                  Stimulus.path, Stimulus.scene)
        .select_from(model)
        .join(Trial, model.trial_id == Trial.id)
        .join(Stimulus, Trial.stimulus_id == Stimulus.id)
        .join(StudySession, model.session_id == StudySession.id)
        .join(Participant, StudySession.participant_id == Participant.id)
        .order_by(Participant.number, StudySession.number, Trial.index, model.presentation, model.t, model.id)
    )
    return query if interrupted else query.where(model.interrupted.is_(False))


def load_gaze(db_url: str | Path | StudyDB, *, stimulus_root: str | Path | None = None,
              interrupted: bool = False) -> pd.DataFrame:
    """Every eye-gaze sample of the trials (columns :data:`GAZE_COLUMNS`; ``t`` in seconds since the stimulus
    was shown, at the tracker's sample times; the direction in the stimulus frame, empty where invalid).

    ``stimulus_root`` and ``interrupted`` as for :func:`load_poses`; empty when no session had an eye tracker.
    """
    root = None if stimulus_root is None else Path(stimulus_root)
    with _opened(db_url) as db:
        query = _sample_query(GazeSample, interrupted).add_columns(
            GazeSample.t, GazeSample.yaw_deg, GazeSample.pitch_deg, GazeSample.valid, GazeSample.presentation,
            GazeSample.interrupted, GazeSample.runtime_time_ns)
        with db.Session() as session:
            rows = session.execute(query.where(Participant.study_id == db.study_id)).all()
        if root is not None:
            rows = [(*r[:5], _relative(r[5], root), *r[6:]) for r in rows]
        return _typed(rows, GAZE_COLUMNS)


def study_has_gaze(db_url: str | Path | StudyDB) -> bool:
    """Whether any session of the study recorded eye gaze during a trial."""
    with _opened(db_url) as db, db.Session() as session:
        return session.scalar(
            sa.select(GazeSample.id).join(StudySession, GazeSample.session_id == StudySession.id)
            .join(Participant, StudySession.participant_id == Participant.id)
            .where(Participant.study_id == db.study_id).limit(1)) is not None


def load_validation(db_url: str | Path | StudyDB) -> pd.DataFrame:
    """Every eye-tracker validation attempt (columns :data:`VALIDATION_COLUMNS`): an ``overall`` row, then one
    row per target, attempt after attempt."""
    with _opened(db_url) as db, db.Session() as session:
        runs = session.execute(
            sa.select(Participant.code, StudySession.id, StudySession.number, StudySession.station, ValidationRun)
            .join(StudySession, ValidationRun.session_id == StudySession.id)
            .join(Participant, StudySession.participant_id == Participant.id)
            .where(Participant.study_id == db.study_id)
            .order_by(Participant.number, StudySession.number, ValidationRun.attempt)
        ).all()
        targets: dict[int, list] = {}
        for row in session.scalars(sa.select(ValidationTarget).where(
                ValidationTarget.run_id.in_([run.id for *_, run in runs])).order_by(ValidationTarget.target)):
            targets.setdefault(row.run_id, []).append(row)
    rows = []
    for code, session_id, number, station, run in runs:
        mine = targets.get(run.id, [])
        common = (code, session_id, number, station, run.attempt)
        tail = (run.threshold_deg, run.recalibrate, run.gaze_source, run.ended_at)
        rows.append((*common, "overall", None, None, None, sum(t.n_samples for t in mine), sum(t.n_valid for t in mine),
                     run.accuracy_deg, run.precision_rms_s2s_deg, run.precision_sd_deg, run.data_loss_pct, *tail))
        rows += [(*common, "target", t.target, t.yaw_deg, t.pitch_deg, t.n_samples, t.n_valid, t.accuracy_deg,
                  t.precision_rms_s2s_deg, t.precision_sd_deg, t.data_loss_pct, *tail) for t in mine]
    return _typed(rows, VALIDATION_COLUMNS)


def load_validation_samples(db_url: str | Path | StudyDB) -> pd.DataFrame:
    """Every gaze sample of every validation attempt (columns :data:`VALIDATION_SAMPLE_COLUMNS`)."""
    with _opened(db_url) as db, db.Session() as session:
        rows = session.execute(
            sa.select(Participant.code, StudySession.id, StudySession.number, StudySession.station, ValidationRun.attempt,
                      ValidationSample.target, ValidationSample.t, ValidationSample.yaw_deg, ValidationSample.pitch_deg,
                      ValidationSample.valid, ValidationSample.runtime_time_ns)
            .select_from(ValidationSample)
            .join(ValidationRun, ValidationSample.run_id == ValidationRun.id)
            .join(StudySession, ValidationRun.session_id == StudySession.id)
            .join(Participant, StudySession.participant_id == Participant.id)
            .where(Participant.study_id == db.study_id)
            .order_by(Participant.number, StudySession.number, ValidationRun.attempt, ValidationSample.target,
                      ValidationSample.t, ValidationSample.id)
        ).all()
    return _typed(rows, VALIDATION_SAMPLE_COLUMNS)


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


def load_participants(db_url: str | Path | StudyDB) -> pd.DataFrame:
    """Every enrolled participant (columns :data:`PARTICIPANT_COLUMNS`): code, enrolment order, demographics."""
    with _opened(db_url) as db, db.Session() as session:
        rows = session.execute(
            sa.select(Participant.code, Participant.number, Participant.age, Participant.gender,
                      Participant.vision_correction, Participant.enrolled_at)
            .where(Participant.study_id == db.study_id).order_by(Participant.number)
        ).all()
    return _typed(rows, PARTICIPANT_COLUMNS)


def load_sessions(db_url: str | Path | StudyDB) -> pd.DataFrame:
    """Every session (columns :data:`SESSION_COLUMNS`), with who answered and the viewer's frame timing."""
    with _opened(db_url) as db, db.Session() as session:
        sessions = session.execute(
            sa.select(Participant.code, StudySession.id, StudySession.number, StudySession.station, StudySession.status,
                      StudySession.planned_at, StudySession.started_at, StudySession.ended_at,
                      StudySession.withdraw_reason)
            .join(Participant, StudySession.participant_id == Participant.id)
            .where(Participant.study_id == db.study_id).order_by(Participant.number, StudySession.number)
        ).all()
        events = session.execute(
            sa.select(Event.session_id, Event.kind, Event.detail)
            .join(StudySession, Event.session_id == StudySession.id)
            .join(Participant, StudySession.participant_id == Participant.id)
            .where(Participant.study_id == db.study_id, Event.kind.in_(("withdrawn", "resumed", "frame_timing")))
            .order_by(Event.id)
        ).all()
        sources = _answer_sources(session, db.study_id)
    per_session: dict[int, dict] = {}
    for session_id, kind, detail in events:
        info = per_session.setdefault(session_id, {"resumes": 0, "means": [], "p99": [], "backend": None})
        if kind == "resumed":
            info["resumes"] += 1
        elif kind == "withdrawn":
            info["at_step"] = detail.get("at_step")
        else:
            info["backend"] = detail.get("backend", info["backend"])
            if "mean_ms" in detail:
                info["means"].append(float(detail["mean_ms"]))
                info["p99"].append(float(detail["p99_ms"]))
    rows = []
    for code, session_id, number, station, status, planned, started, ended, reason in sessions:
        info = per_session.get(session_id, {"resumes": 0, "means": [], "p99": [], "backend": None})
        duration = (ended - started).total_seconds() / 60.0 if started and ended else None
        rows.append((code, session_id, number, station, status, planned, started, ended, duration, reason, info.get("at_step"),
                     info["resumes"], sources.get(session_id, "participant"), info["backend"],
                     sum(info["means"]) / len(info["means"]) if info["means"] else None,
                     max(info["p99"]) if info["p99"] else None))
    return _typed(rows, SESSION_COLUMNS)


def _generator_fields(metadata: Mapping) -> tuple[bool, str | None, str | None, int | None]:
    """Placeholder flag, model id, prompt and seed from a generator manifest line (any of them may be absent)."""
    stage1 = metadata.get("stage1") if isinstance(metadata.get("stage1"), Mapping) else {}
    model = stage1.get("model", metadata.get("model"))
    model_id = model.get("id") if isinstance(model, Mapping) else model
    placeholder = bool(metadata.get("placeholder_not_meaningful")) or model_id == "tiny"
    seeds = metadata.get("seeds")
    seed = seeds.get("stage1") if isinstance(seeds, Mapping) else metadata.get("seed")
    return placeholder, (None if model_id is None else str(model_id)), metadata.get("prompt"), seed


def load_stimuli(db_url: str | Path | StudyDB, *, stimulus_root: str | Path | None = None) -> pd.DataFrame:
    """Every imported panorama (columns :data:`STIMULUS_COLUMNS`) with its generator provenance."""
    root = None if stimulus_root is None else Path(stimulus_root)
    with _opened(db_url) as db, db.Session() as session:
        stimuli = session.scalars(sa.select(Stimulus).where(Stimulus.study_id == db.study_id).order_by(Stimulus.id)).all()
        rows = []
        for s in stimuli:
            metadata = s.generator_metadata or {}
            placeholder, model, prompt, seed = _generator_fields(metadata)
            rows.append((_relative(s.path, root), s.sha256, s.scene, s.training, s.width, s.height, placeholder, model,
                         prompt, seed, json.dumps(metadata, sort_keys=True) if metadata else None))
    return _typed(rows, STIMULUS_COLUMNS)


def placeholder_warning(db: StudyDB) -> str | None:
    """The line that warns the desk when stimuli of the study come from the offline tiny random-weight
    model (noise, for checking the workflow only), so that nobody runs a real participant on them."""
    with db.Session() as session:
        metadata = session.scalars(sa.select(Stimulus.generator_metadata).where(Stimulus.study_id == db.study_id)).all()
    placeholders = sum(_generator_fields(m or {})[0] for m in metadata)
    if not placeholders:
        return None
    return (f"warning: {placeholders} of the study's {len(metadata)} stimuli are PLACEHOLDERS from the offline tiny "
            "random-weight model, not meaningful: do not run real participants on them")


#: What a single-file export may be; a folder without a suffix takes the whole package.
FILE_SUFFIXES = (".csv", ".parquet", ".sav", ".xlsx")


def check_output_path(out_path: Path, option: str = "--out") -> str:
    """Refuses a single-file export path that cannot be written (see :func:`study.outputs.check_output_file`);
    returns its suffix."""
    return check_output_file(Path(out_path), option, FILE_SUFFIXES)


def _naive_utc(frame: pd.DataFrame) -> pd.DataFrame:
    """Spreadsheets and SPSS have no time zones: times become naive UTC (the codebook says so)."""
    out = frame.copy()
    for name in out.columns:
        if isinstance(out[name].dtype, pd.DatetimeTZDtype):
            out[name] = out[name].dt.tz_convert("UTC").dt.tz_localize(None)
    return out


def write_frame(frame: pd.DataFrame, out_path: str | Path) -> Path:
    """Writes one frame as :func:`write_frames` does."""
    return write_frames([(frame, out_path)])[0]


def frame_writer(frame: pd.DataFrame, suffix: str):
    """``write(path)`` for ``frame`` in the format of ``suffix``: CSV (ISO-8601 UTC times), Parquet, SPSS or Excel.

    SPSS and Excel files get naive UTC times and no value labels (use :func:`export_study` for the labelled
    package).
    """
    if suffix == ".csv":
        return lambda path: frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    if suffix == ".parquet":
        return lambda path: frame.to_parquet(path, index=False)
    if suffix == ".sav":
        return lambda path: _write_sav(frame, path, {}, {})

    def write_xlsx(path):
        with pd.ExcelWriter(path, engine="openpyxl") as writer:
            _naive_utc(frame).to_excel(writer, index=False, sheet_name="data")
    return write_xlsx


def write_frames(frames: list[tuple[pd.DataFrame, str | Path]]) -> list[Path]:
    """Writes frames in the format of each file's suffix, all or nothing: no file is replaced unless every one
    was written (files 0600, missing folders created 0700)."""
    return write_all([(Path(path), frame_writer(frame, check_output_path(Path(path)))) for frame, path in frames])


def export_answers(db_url: str | Path | StudyDB, out_path: str | Path) -> Path:
    """Writes :func:`load_answers` to ``out_path`` (``.csv``, ``.parquet``, ``.sav`` or ``.xlsx``)."""
    check_output_path(Path(out_path))
    return write_frame(load_answers(db_url), out_path)


def read_answers(path: str | Path) -> pd.DataFrame:
    """Reads an exported answers file back with the same dtypes as :func:`load_answers`."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        return _typed_frame(pd.read_parquet(path), ANSWER_COLUMNS)
    frame = pd.read_csv(path, dtype={k: v for k, v in ANSWER_COLUMNS.items() if not v.startswith("datetime")})
    return _typed_frame(frame, ANSWER_COLUMNS)


def read_table(path: str | Path, table: str) -> pd.DataFrame:
    """Reads one exported table (CSV or Parquet) back with the dtypes of :data:`TABLES`."""
    columns = TABLES[table]
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        return _typed_frame(pd.read_parquet(path), columns)
    dtypes = {k: v for k, v in columns.items() if not v.startswith("datetime")}
    return _typed_frame(pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[""]), columns)


def _typed_frame(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PanostudyError(f"the file lacks columns {missing}; export it again with 'panostudy study export'")
    return _typed(list(frame[list(columns)].itertuples(index=False, name=None)), columns)


# -- the export package --------------------------------------------------------------------------------------


def _allowed_text(field: Field) -> str:
    if field.allowed:
        return ", ".join(str(a) for a in field.allowed)
    if field.minimum is not None or field.maximum is not None:
        low = "" if field.minimum is None else f"{field.minimum:g}"
        high = "" if field.maximum is None else f"{field.maximum:g}"
        return f"{low} .. {high}"
    return ""


def codebook_markdown(tables: Mapping[str, pd.DataFrame], protocol: Protocol, *, stimulus_root: str) -> str:
    """The human-readable codebook: every column of every table (type, unit, allowed values), then every item's
    wording and anchors, then the SSQ items."""
    lines = [f"# Codebook of the export of study {protocol.name} ({protocol.version})", "",
             f"Protocol SHA-256: `{protocol.sha256}`; its text is `protocol.toml`. Stimulus paths are relative to "
             f"`{stimulus_root}`. Times are UTC (in `.sav` and `.xlsx`: naive UTC). Empty cells are missing values.",
             ""]
    for name, frame in tables.items():
        lines += [f"## {name}", "", TABLE_DESCRIPTIONS[name] + f" ({len(frame)} rows).", "",
                  "| column | type | unit | allowed values | meaning |", "|---|---|---|---|---|"]
        for column in frame.columns:
            field = CODEBOOK[name][column]
            allowed = _allowed_text(field)
            if name == "answers" and column == "value":
                allowed = "scale_min .. scale_max of the row's scale (anchors below)"
            lines.append(f"| {column} | {field.type} | {field.unit} | {allowed} | {field.description} |")
        lines.append("")
    lines += ["## Items: wording and anchors", "", "| scale | item | range | question | anchors |", "|---|---|---|---|---|"]
    for scale in protocol.scales:
        for item in scale.items:
            anchors = "; ".join(f"{v} = {label}" for v, label in sorted(item.labels.items()))
            lines.append(f"| {scale.id} ({scale.name}) | {item.id} | {scale.min}..{scale.max} | {item.question} | {anchors} |")
    lines += ["", f"## SSQ items ({protocol.ssq.question})", "", "| item | symptom |", "|---|---|"]
    lines += [f"| {k} | {name} |" for k, name in enumerate(protocol.ssq.items, start=1)]
    labels = "; ".join(f"{v} = {label}" for v, label in sorted(protocol.ssq.labels.items()))
    lines += ["", f"SSQ values: {labels}.", ""]
    return "\n".join(lines)


def datapackage_descriptor(tables: Mapping[str, pd.DataFrame], files: Mapping[str, str], protocol: Protocol, *,
                           stimulus_root: str) -> dict:
    """A Frictionless Data Package (``tabular-data-package``) with a Table Schema for every CSV written."""
    resources = []
    for name, frame in tables.items():
        if not files[name].endswith(".csv"):
            continue
        fields = []
        for column in frame.columns:
            field = CODEBOOK[name][column]
            entry = {"name": column, "type": field.type, "description": field.description}
            if field.unit:
                entry["unit"] = field.unit
            if field.type == "datetime":
                entry["format"] = "%Y-%m-%dT%H:%M:%S.%fZ"
            constraints = {}
            if field.allowed:
                constraints["enum"] = [str(a) if field.type == "string" else a for a in field.allowed]
            if field.minimum is not None:
                constraints["minimum"] = field.minimum
            if field.maximum is not None:
                constraints["maximum"] = field.maximum
            if constraints:
                entry["constraints"] = constraints
            fields.append(entry)
        resources.append({
            "name": name, "path": files[name], "profile": "tabular-data-resource", "format": "csv",
            "mediatype": "text/csv", "encoding": "utf-8", "description": TABLE_DESCRIPTIONS[name],
            "schema": {"fields": fields, "missingValues": [""]},
        })
    return {
        "profile": "tabular-data-package",
        "name": _package_name(protocol.name),
        "title": f"panostudy export of study {protocol.name} ({protocol.version})",
        "description": "Ratings, participants, sessions, stimuli, SSQ, flagged trials, head poses, eye gaze and "
                       "eye-tracker validations; see codebook.md.",
        "panostudy:protocol_sha256": protocol.sha256,
        "panostudy:stimulus_root": stimulus_root,
        "resources": resources,
    }


def _package_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-._" else "-" for c in name.lower())
    return cleaned or "panostudy-export"


def _write_sav(frame: pd.DataFrame, path: Path, column_labels: Mapping[str, str],
               value_labels: Mapping[str, Mapping]) -> None:
    import pyreadstat

    data = _naive_utc(frame)
    for name in data.columns:
        if data[name].dtype == bool:
            data[name] = data[name].astype("int64")
        elif str(data[name].dtype) in ("string", "Int64"):
            data[name] = data[name].astype(object).where(data[name].notna(), None)
            if str(frame[name].dtype) == "Int64":
                data[name] = pd.to_numeric(data[name], errors="coerce")
    pyreadstat.write_sav(data, str(path), column_labels=[column_labels.get(c, "") for c in data.columns],
                         variable_value_labels={k: dict(v) for k, v in value_labels.items() if k in data.columns})


def _spss_files(tables: Mapping[str, pd.DataFrame], protocol: Protocol, folder: Path) -> list[str]:
    """``<table>.sav`` for the small tables (codebook descriptions as variable labels; 0/1 flags, SSQ values
    labelled) and ``ratings_wide.sav``: one row per trial, one variable per item, labelled with the item's
    question and anchors from the protocol."""
    written = []
    flag_labels = {0: "no", 1: "yes"}
    for name in SMALL_TABLES:
        if name not in tables:
            continue
        frame = tables[name]
        labels = {c: CODEBOOK[name][c].description[:250] for c in frame.columns}
        values: dict[str, Mapping] = {c: flag_labels for c in frame.columns if frame[c].dtype == bool}
        if name == "ssq":
            values["value"] = dict(protocol.ssq.labels)
            values["item"] = dict(enumerate(protocol.ssq.items, start=1))
        _write_sav(frame, folder / f"{name}.sav", labels, values)
        written.append(f"{name}.sav")
    answers = tables["answers"]
    test = answers[~answers["training"]]
    if len(test):
        key = ["participant", "session", "session_number", "trial_index", "stimulus", "scene"]
        variable = test["scale"].astype(str) + "_" + test["item"].astype(str)
        wide = test.assign(variable=variable).pivot_table(index=key, columns="variable", values="value",
                                                          aggfunc="first", observed=True).reset_index()
        wide.columns.name = None
        labels = {c: CODEBOOK["answers"][c].description[:250] for c in key}
        values = {}
        for scale in protocol.scales:
            for item in scale.items:
                name = f"{scale.id}_{item.id}"
                if name in wide.columns:
                    wide[name] = wide[name].astype("float64")
                    labels[name] = f"{scale.id}: {item.question}"[:250]
                    values[name] = {float(k): v for k, v in item.labels.items()}
        _write_sav(wide, folder / "ratings_wide.sav", labels, values)
        written.append("ratings_wide.sav")
    return written


def _xlsx(tables: Mapping[str, pd.DataFrame], path: Path) -> None:
    with pd.ExcelWriter(path, engine="openpyxl") as writer:
        for name in SMALL_TABLES:
            if name in tables:
                _naive_utc(tables[name]).to_excel(writer, index=False, sheet_name=name)
        rows = [(t, c, CODEBOOK[t][c].type, CODEBOOK[t][c].unit, _allowed_text(CODEBOOK[t][c]), CODEBOOK[t][c].description)
                for t in tables for c in tables[t].columns]
        pd.DataFrame(rows, columns=["table", "column", "type", "unit", "allowed", "meaning"]).to_excel(
            writer, index=False, sheet_name="codebook")


def _check_package_folder(out: Path) -> None:
    if out.suffix:
        raise PanostudyError(f"--out {out}: a package is a folder; give a name without a suffix, or a file "
                             ".csv/.parquet/.sav/.xlsx for the answers alone")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / EXPORT_MARKER).is_file())):
        raise PanostudyError(f"--out {out}: exists and is not an earlier panostudy export; choose a new or empty folder")


def export_study(db_url: str | Path | StudyDB, out_dir: str | Path, *, parquet: bool = False, spss: bool = False,
                 xlsx: bool = False, poses: bool = True, gaze: bool = True,
                 stimulus_root: str | Path | None = None) -> dict[str, Path]:
    """Writes the whole export package into ``out_dir`` (created, with its parents, if missing).

    Parameters
    ----------
    db_url : path, URL or StudyDB
    out_dir : path
        A new or empty folder, or an earlier export (replaced as a whole).
    parquet : bool
        Tables as Parquet as well as CSV (CSV is always written: the data package describes it).
    spss, xlsx : bool
        Also ``<table>.sav`` + ``ratings_wide.sav`` (pyreadstat) and ``export.xlsx`` (openpyxl).
    poses : bool
        Include the head-pose samples (CSV/Parquet only; they may be millions of rows).
    gaze : bool
        Include the eye-gaze samples of the trials and of the validations (CSV/Parquet only); the validation
        results are always included.
    stimulus_root : path, optional
        Folder that stimulus paths are made relative to; by default the deepest folder holding all stimuli.

    Returns
    -------
    dict str -> pathlib.Path
        Each written file's name to its final path.

    Notes
    -----
    Everything is written into a temporary folder beside ``out_dir`` and moved into place at the end, so a
    failed export leaves the previous one (or none), never half of one.
    """
    out = Path(out_dir).resolve()
    _check_package_folder(out)
    with _opened(db_url) as db:
        root = Path(stimulus_root).resolve() if stimulus_root is not None else common_stimulus_root(db)
        tables = {
            "answers": load_answers(db, stimulus_root=root),
            "participants": load_participants(db),
            "sessions": load_sessions(db),
            "stimuli": load_stimuli(db, stimulus_root=root),
            "ssq": load_ssq(db),
            "flagged_trials": load_flagged_trials(db),
            "validation": load_validation(db),
        }
        if poses:
            # the interrupted showings too, marked: an export loses nothing
            tables["poses"] = load_poses(db, stimulus_root=root, interrupted=True)
        if gaze:
            tables["gaze"] = load_gaze(db, stimulus_root=root, interrupted=True)
            tables["validation_samples"] = load_validation_samples(db)
        protocol = db.protocol
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        files = {name: f"{name}.csv" for name in tables}
        for name, frame in tables.items():
            write_frame(frame, tmp / files[name])
            if parquet:
                write_frame(frame, tmp / f"{name}.parquet")
        (tmp / "protocol.toml").write_text(protocol.source_text, encoding="utf-8")
        codebook = codebook_markdown(tables, protocol, stimulus_root=str(root))
        (tmp / "codebook.md").write_text(codebook, encoding="utf-8")
        descriptor = datapackage_descriptor(tables, files, protocol, stimulus_root=str(root))
        (tmp / EXPORT_MARKER).write_text(json.dumps(descriptor, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if spss:
            _spss_files(tables, protocol, tmp)
        if xlsx:
            _xlsx(tables, tmp / "export.xlsx")
        written = sorted(p.name for p in tmp.iterdir())
        if out.exists():
            old = out.parent / f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {name: out / name for name in written}


def codebook_for_file(table: str, frame: pd.DataFrame) -> str:
    """A short Markdown codebook of one table, written beside a single-file export."""
    lines = [f"# {table}: {TABLE_DESCRIPTIONS[table]}", "", "| column | type | unit | allowed values | meaning |",
             "|---|---|---|---|---|"]
    for column in frame.columns:
        field = CODEBOOK[table][column]
        lines.append(f"| {column} | {field.type} | {field.unit} | {_allowed_text(field)} | {field.description} |")
    return "\n".join(lines) + "\n"
