"""SQLAlchemy models of the study database: the schema is the type annotations.

All times are stored as UTC. SQLite keeps no time zone, so :class:`UTCDateTime` converts aware datetimes
to UTC on the way in and attaches UTC on the way out; code never sees a naive datetime from the store.

Every foreign key cascades on delete, so removing one participant (data protection) removes their
sessions, trials, answers, questionnaires, pose and gaze samples, validations and events in one statement.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Optional

import sqlalchemy as sa
import sqlalchemy.orm as so

#: Version of this schema; :func:`study.store.open_study` refuses a database of another one, and
#: :func:`study.store.migrate_study` brings a version-1 database to it.
#: Version 2: several numbered sessions per participant with the station they ran on, the ``declined``
#: status, and pose samples with presentation, interruption flag, field of view, position and runtime time.
#: Version 3: eye-gaze samples of the trials, and the eye-tracker validations with their targets and samples.
SCHEMA_VERSION = 3


class UTCDateTime(sa.types.TypeDecorator):
    """A timestamp stored as naive UTC and returned as an aware UTC ``datetime``."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            # A naive time is ambiguous (local? UTC?); refusing it keeps every stored time comparable.
            raise ValueError(f"naive datetime {value!r} cannot be stored; pass a timezone-aware datetime")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


def utc_now() -> datetime:
    """The current time, aware, in UTC (a callable default, evaluated per row)."""
    return datetime.now(timezone.utc)


IntPK = Annotated[int, so.mapped_column(primary_key=True)]
UTCNow = Annotated[datetime, so.mapped_column(UTCDateTime(), default=utc_now)]
UTCTime = Annotated[datetime, so.mapped_column(UTCDateTime())]
JSONDict = Annotated[dict[str, Any], so.mapped_column(sa.JSON, default=dict)]


def _fk(target: str) -> Any:
    return so.mapped_column(sa.ForeignKey(target, ondelete="CASCADE"), index=True)


class Base(so.DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime()}


class SchemaInfo(Base):
    """One row: the schema version the database was written with."""

    __tablename__ = "schema_info"

    version: so.Mapped[int] = so.mapped_column(primary_key=True, autoincrement=False)
    created_at: so.Mapped[UTCNow]

    def __repr__(self) -> str:
        return f"SchemaInfo(version={self.version})"


class Study(Base):
    """A study: the protocol it runs, verbatim, with its hash."""

    __tablename__ = "study"

    id: so.Mapped[IntPK]
    name: so.Mapped[str]
    protocol_text: so.Mapped[str] = so.mapped_column(sa.Text)
    protocol_sha256: so.Mapped[str] = so.mapped_column(sa.String(64))
    protocol_schema_version: so.Mapped[int]
    # Where the protocol was read from (for messages) and the folder its relative training paths start at.
    protocol_source: so.Mapped[str]
    protocol_base_dir: so.Mapped[str]
    created_at: so.Mapped[UTCNow]

    stimuli: so.Mapped[list[Stimulus]] = so.relationship(back_populates="study", passive_deletes=True)
    participants: so.Mapped[list[Participant]] = so.relationship(back_populates="study", passive_deletes=True)

    def __repr__(self) -> str:
        return f"Study(id={self.id}, name={self.name!r}, protocol_sha256={self.protocol_sha256[:12]!r})"


class Stimulus(Base):
    """A validated equirectangular panorama, identified by its path and content hash."""

    __tablename__ = "stimulus"
    __table_args__ = (sa.UniqueConstraint("study_id", "path"),)

    id: so.Mapped[IntPK]
    study_id: so.Mapped[int] = _fk("study.id")
    path: so.Mapped[str]
    sha256: so.Mapped[str] = so.mapped_column(sa.String(64), index=True)
    scene: so.Mapped[str]
    width: so.Mapped[int]
    height: so.Mapped[int]
    training: so.Mapped[bool] = so.mapped_column(default=False)
    generator_metadata: so.Mapped[JSONDict]
    imported_at: so.Mapped[UTCNow]

    study: so.Mapped[Study] = so.relationship(back_populates="stimuli")
    trials: so.Mapped[list[Trial]] = so.relationship(back_populates="stimulus", passive_deletes=True)

    def __repr__(self) -> str:
        kind = "training" if self.training else "test"
        return f"Stimulus(id={self.id}, scene={self.scene!r}, {kind}, path={self.path!r})"


class Participant(Base):
    """A participant, known only by a pseudonymous code; demographics are optional."""

    __tablename__ = "participant"
    __table_args__ = (sa.UniqueConstraint("study_id", "code"), sa.UniqueConstraint("study_id", "number"))

    id: so.Mapped[IntPK]
    study_id: so.Mapped[int] = _fk("study.id")
    code: so.Mapped[str]
    # 0-based order of enrolment; picks the participant's row of the scale-order Latin square.
    number: so.Mapped[int]
    age: so.Mapped[Optional[int]]
    gender: so.Mapped[Optional[str]]
    vision_correction: so.Mapped[Optional[str]]
    enrolled_at: so.Mapped[UTCNow]

    study: so.Mapped[Study] = so.relationship(back_populates="participants")
    sessions: so.Mapped[list[StudySession]] = so.relationship(back_populates="participant", passive_deletes=True)

    def __repr__(self) -> str:
        return f"Participant(id={self.id}, code={self.code!r}, number={self.number})"


#: The states of a session: planned (its trials are stored), running, and the three ends.
SESSION_STATUSES = ("planned", "running", "completed", "withdrawn", "declined")


class StudySession(Base):
    """One of a participant's sessions of the protocol (named so that it does not shadow ``orm.Session``).

    ``number`` counts a participant's sessions from 1 as the protocol's ``[[sessions]]`` list them;
    ``station`` names the machine the session started on (later runs on other stations are events).
    """

    __tablename__ = "session"
    __table_args__ = (
        sa.UniqueConstraint("participant_id", "number", name="session_participant_number"),
        sa.CheckConstraint(f"status IN {SESSION_STATUSES}", name="session_status"),
    )

    id: so.Mapped[IntPK]
    participant_id: so.Mapped[int] = _fk("participant.id")
    number: so.Mapped[int] = so.mapped_column(default=1)
    station: so.Mapped[Optional[str]] = so.mapped_column(sa.String(64))
    status: so.Mapped[str] = so.mapped_column(sa.String(16), default="planned")
    seed: so.Mapped[int]
    protocol_sha256: so.Mapped[str] = so.mapped_column(sa.String(64))
    planned_at: so.Mapped[UTCNow]
    started_at: so.Mapped[Optional[datetime]]
    ended_at: so.Mapped[Optional[datetime]]
    withdraw_reason: so.Mapped[Optional[str]]

    participant: so.Mapped[Participant] = so.relationship(back_populates="sessions")
    trials: so.Mapped[list[Trial]] = so.relationship(
        back_populates="session", order_by="Trial.index", passive_deletes=True
    )

    def __repr__(self) -> str:
        return (f"StudySession(id={self.id}, participant_id={self.participant_id}, number={self.number}, "
                f"status={self.status!r})")


class Trial(Base):
    """One planned presentation; a session's trials are written together before its first step."""

    __tablename__ = "trial"
    __table_args__ = (sa.UniqueConstraint("session_id", "index"),)

    id: so.Mapped[IntPK]
    session_id: so.Mapped[int] = _fk("session.id")
    index: so.Mapped[int]
    stimulus_id: so.Mapped[int] = _fk("stimulus.id")
    training: so.Mapped[bool]
    scale_order: so.Mapped[list[str]] = so.mapped_column(sa.JSON)
    break_before: so.Mapped[bool]

    session: so.Mapped[StudySession] = so.relationship(back_populates="trials")
    stimulus: so.Mapped[Stimulus] = so.relationship(back_populates="trials")

    def __repr__(self) -> str:
        return f"Trial(session_id={self.session_id}, index={self.index}, stimulus_id={self.stimulus_id})"


class Answer(Base):
    """One rating of one scale item for one trial; the unique key makes a second record impossible."""

    __tablename__ = "answer"
    __table_args__ = (sa.UniqueConstraint("session_id", "trial_id", "scale", "item"),)

    id: so.Mapped[IntPK]
    session_id: so.Mapped[int] = _fk("session.id")
    trial_id: so.Mapped[int] = _fk("trial.id")
    scale: so.Mapped[str]
    item: so.Mapped[str]
    value: so.Mapped[int]
    response_time_s: so.Mapped[float]
    shown_at: so.Mapped[UTCTime]
    answered_at: so.Mapped[UTCTime]

    def __repr__(self) -> str:
        return f"Answer(trial_id={self.trial_id}, scale={self.scale!r}, item={self.item!r}, value={self.value})"


class SsqAnswer(Base):
    """One Simulator Sickness Questionnaire item (0..3) before or after the trials."""

    __tablename__ = "ssq_answer"
    __table_args__ = (
        sa.UniqueConstraint("session_id", "phase", "item"),
        sa.CheckConstraint("phase IN ('pre', 'post')", name="ssq_phase"),
    )

    id: so.Mapped[IntPK]
    session_id: so.Mapped[int] = _fk("session.id")
    phase: so.Mapped[str] = so.mapped_column(sa.String(4))
    item: so.Mapped[int]  # 1-based position in Kennedy et al. (1993) order
    value: so.Mapped[int]
    response_time_s: so.Mapped[float]
    shown_at: so.Mapped[UTCTime]
    answered_at: so.Mapped[UTCTime]

    def __repr__(self) -> str:
        return f"SsqAnswer(session_id={self.session_id}, phase={self.phase!r}, item={self.item}, value={self.value})"


class StepDone(Base):
    """A finished step that carries no answer (instructions, a stimulus exposure, a break).

    Together with :class:`Answer` and :class:`SsqAnswer` this is everything the engine derives a session's
    position from after a crash.
    """

    __tablename__ = "step_done"
    __table_args__ = (sa.UniqueConstraint("session_id", "key"),)

    id: so.Mapped[IntPK]
    session_id: so.Mapped[int] = _fk("session.id")
    key: so.Mapped[str]
    shown_at: so.Mapped[UTCTime]
    done_at: so.Mapped[UTCTime]

    def __repr__(self) -> str:
        return f"StepDone(session_id={self.session_id}, key={self.key!r})"


class PoseSample(Base):
    """One head orientation sample while a stimulus was shown; inserted in batches through Core.

    A stimulus interrupted by a pause (or a stop) is shown again from its start; the samples of the
    interrupted showing are kept with ``interrupted`` set, and every showing of a trial has its own
    ``presentation`` number (0 first).
    """

    __tablename__ = "pose_sample"
    __table_args__ = (sa.Index("ix_pose_sample_session_trial", "session_id", "trial_id"),)

    id: so.Mapped[IntPK]
    session_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("session.id", ondelete="CASCADE"))
    trial_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("trial.id", ondelete="CASCADE"))
    t: so.Mapped[float]  # seconds since the stimulus was shown, on the sampling grid of pose_rate_hz
    yaw_deg: so.Mapped[float]
    pitch_deg: so.Mapped[float]
    roll_deg: so.Mapped[float]
    presentation: so.Mapped[int] = so.mapped_column(default=0)
    interrupted: so.Mapped[bool] = so.mapped_column(default=False)
    # The field of view shown, where the application sets it (desktop window); None in a headset.
    fov_h_deg: so.Mapped[Optional[float]]
    fov_v_deg: so.Mapped[Optional[float]]
    # Head position in the tracking space (metres), where a tracker reports one.
    x_m: so.Mapped[Optional[float]]
    y_m: so.Mapped[Optional[float]]
    z_m: so.Mapped[Optional[float]]
    # The runtime's own time stamp of the pose (OpenXR XrTime, ns), where there is a runtime.
    runtime_time_ns: so.Mapped[Optional[int]] = so.mapped_column(sa.BigInteger)

    def __repr__(self) -> str:
        return f"PoseSample(trial_id={self.trial_id}, t={self.t:.3f}, yaw={self.yaw_deg:.1f}, pitch={self.pitch_deg:.1f})"


class GazeSample(Base):
    """One eye-gaze sample while a stimulus was shown, at the tracker's own time; inserted in batches.

    The direction is in the stimulus frame (yaw 0 the image centre), like the head poses; an invalid sample
    (the tracker lost the eye: ``isActive`` false, a blink) keeps its time with no direction. Showings are
    numbered and flagged as for :class:`PoseSample`.
    """

    __tablename__ = "gaze_sample"
    __table_args__ = (sa.Index("ix_gaze_sample_session_trial", "session_id", "trial_id"),)

    id: so.Mapped[IntPK]
    session_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("session.id", ondelete="CASCADE"))
    trial_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("trial.id", ondelete="CASCADE"))
    t: so.Mapped[float]  # seconds since the stimulus was shown, at the tracker's sample time
    yaw_deg: so.Mapped[Optional[float]]
    pitch_deg: so.Mapped[Optional[float]]
    valid: so.Mapped[bool]
    presentation: so.Mapped[int] = so.mapped_column(default=0)
    interrupted: so.Mapped[bool] = so.mapped_column(default=False)
    # The tracker's own sample time (OpenXR XrEyeGazeSampleTimeEXT, ns), where there is a runtime.
    runtime_time_ns: so.Mapped[Optional[int]] = so.mapped_column(sa.BigInteger)

    def __repr__(self) -> str:
        return f"GazeSample(trial_id={self.trial_id}, t={self.t:.3f}, valid={self.valid})"


class ValidationRun(Base):
    """One attempt of the eye-tracker validation step, with its overall measures.

    ``attempt`` counts a session's validations from 1 (a repeat after "recalibrate" is the next one).
    """

    __tablename__ = "validation_run"
    __table_args__ = (sa.UniqueConstraint("session_id", "attempt"),)

    id: so.Mapped[IntPK]
    session_id: so.Mapped[int] = _fk("session.id")
    attempt: so.Mapped[int]
    gaze_source: so.Mapped[str]
    target_s: so.Mapped[float]
    discard_s: so.Mapped[float]
    threshold_deg: so.Mapped[Optional[float]]
    accuracy_deg: so.Mapped[Optional[float]]
    precision_rms_s2s_deg: so.Mapped[Optional[float]]
    precision_sd_deg: so.Mapped[Optional[float]]
    data_loss_pct: so.Mapped[Optional[float]]
    recalibrate: so.Mapped[bool]
    started_at: so.Mapped[UTCTime]
    ended_at: so.Mapped[UTCTime]

    def __repr__(self) -> str:
        return f"ValidationRun(session_id={self.session_id}, attempt={self.attempt}, accuracy_deg={self.accuracy_deg})"


class ValidationTarget(Base):
    """The measures of one target of a validation attempt."""

    __tablename__ = "validation_target"
    __table_args__ = (sa.UniqueConstraint("run_id", "target"),)

    id: so.Mapped[IntPK]
    run_id: so.Mapped[int] = _fk("validation_run.id")
    target: so.Mapped[int]   # position in the protocol's target list, from 0
    yaw_deg: so.Mapped[float]
    pitch_deg: so.Mapped[float]
    n_samples: so.Mapped[int]
    n_valid: so.Mapped[int]
    accuracy_deg: so.Mapped[Optional[float]]
    precision_rms_s2s_deg: so.Mapped[Optional[float]]
    precision_sd_deg: so.Mapped[Optional[float]]
    data_loss_pct: so.Mapped[Optional[float]]


class ValidationSample(Base):
    """One gaze sample of a validation attempt, in the validation's frame (yaw 0 straight ahead at its start)."""

    __tablename__ = "validation_sample"
    __table_args__ = (sa.Index("ix_validation_sample_run", "run_id"),)

    id: so.Mapped[IntPK]
    run_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("validation_run.id", ondelete="CASCADE"))
    target: so.Mapped[int]
    t: so.Mapped[float]   # seconds since the target appeared
    yaw_deg: so.Mapped[Optional[float]]
    pitch_deg: so.Mapped[Optional[float]]
    valid: so.Mapped[bool]
    runtime_time_ns: so.Mapped[Optional[int]] = so.mapped_column(sa.BigInteger)


class Event(Base):
    """Anything worth keeping that is not an answer: frame timing, a resume, a withdrawal."""

    __tablename__ = "event"

    id: so.Mapped[IntPK]
    session_id: so.Mapped[int] = _fk("session.id")
    kind: so.Mapped[str]
    detail: so.Mapped[JSONDict]
    at: so.Mapped[UTCNow]

    def __repr__(self) -> str:
        return f"Event(session_id={self.session_id}, kind={self.kind!r}, at={self.at.isoformat()})"
