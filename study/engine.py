"""The session state machine: what to show next, and the answers that move a session on.

A session runs instructions → SSQ before → training trials → test trials (each: the stimulus, then every
item of every scale in the participant's scale order) with breaks → SSQ after → done. The engine knows
nothing about rendering; the viewer and the scripted driver drive it through :meth:`SessionEngine.current`
and :meth:`SessionEngine.submit`.

Crash safety: every submit is one committed transaction before the engine moves on, and the position is
always derived from what is stored (answers, SSQ answers and finished steps), so a session opened again
after a crash — even a ``kill -9`` between two answers — continues at its first unfinished step.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import sqlalchemy as sa
import sqlalchemy.orm as so

from study.errors import SessionError
from study.models import (
    Answer,
    Event,
    PoseSample,
    SsqAnswer,
    StepDone,
    Stimulus,
    StudySession,
    Trial,
    utc_now,
)
from study.planner import StimulusRef, plan_session
from study.protocol import Protocol
from study.store import StudyDB, get_participant

StepKind = Literal["instructions", "ssq", "stimulus", "rating", "break", "done"]


@dataclass(frozen=True)
class Step:
    """One thing the participant sees; ``key`` identifies it within the session."""

    kind: StepKind
    key: str
    text: str = ""
    labels: Mapping[int, str] = field(default_factory=dict)
    min_value: int | None = None
    max_value: int | None = None
    trial_index: int | None = None
    stimulus_path: str | None = None
    scene: str | None = None
    training: bool = False
    exposure_s: float | None = None
    min_duration_s: float | None = None


@dataclass(frozen=True)
class PlannedTrialRow:
    """A stored trial with what the engine needs of its stimulus."""

    id: int
    index: int
    stimulus_path: str
    scene: str
    training: bool
    scale_order: tuple[str, ...]
    break_before: bool


@dataclass(frozen=True)
class _Done:
    shown_at: datetime
    done_at: datetime


def _require_aware(name: str, value: datetime) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise SessionError(f"{name}={value!r} must be a timezone-aware datetime (e.g. datetime.now(timezone.utc))")


class SessionEngine:
    """One participant's session in a study database.

    Create one with :meth:`start` (plans and stores the full trial order) or :meth:`resume`; :meth:`load`
    opens a session in any state (for withdrawal or inspection).
    """

    def __init__(self, db: StudyDB, session_id: int, participant_code: str):
        self.db = db
        self.protocol: Protocol = db.protocol
        self.pose_rate_hz: float = db.protocol.pose_rate_hz
        self.session_id = session_id
        self.participant_code = participant_code
        with db.Session() as session:
            row = session.get(StudySession, session_id)
            self.status: str = row.status
            self.trials: tuple[PlannedTrialRow, ...] = tuple(
                PlannedTrialRow(t.id, t.index, t.stimulus.path, t.stimulus.scene, t.training, tuple(t.scale_order), t.break_before)
                for t in session.scalars(
                    sa.select(Trial).where(Trial.session_id == session_id).order_by(Trial.index)
                    .options(so.joinedload(Trial.stimulus))
                )
            )
        self._trial_by_index = {t.index: t for t in self.trials}
        # The fixed parts of the step sequence, built once; only minute-rule breaks depend on stored times.
        self._fixed_trial_steps = {t.index: tuple(self._trial_steps(t)) for t in self.trials}
        self._fixed_ssq_steps = {phase: tuple(self._ssq_steps(phase)) for phase in ("pre", "post")}
        self._done = self._load_done()

    # -- opening -----------------------------------------------------------------------------------------

    @classmethod
    def start(cls, db: StudyDB, participant_code: str) -> SessionEngine:
        """Plans the participant's session and stores the whole trial order in one transaction.

        Raises
        ------
        StoreError
            If the participant is not enrolled.
        SessionError
            If they already have a session, or no test stimuli have been imported.
        """
        with db.Session.begin() as session:
            participant = get_participant(session, db, participant_code)
            existing = session.scalars(
                sa.select(StudySession).where(StudySession.participant_id == participant.id)
            ).one_or_none()
            if existing is not None:
                raise SessionError(
                    f"participant {participant_code!r} already has a session ({existing.status}); "
                    "continue it with 'panostudy session resume'"
                )
            stimuli = session.scalars(
                sa.select(Stimulus).where(Stimulus.study_id == db.study_id).order_by(Stimulus.id)
            ).all()
            tests = [StimulusRef(s.id, s.scene) for s in stimuli if not s.training]
            training = [StimulusRef(s.id, s.scene) for s in stimuli if s.training]
            if not tests:
                raise SessionError("the study has no test stimuli; import some with 'panostudy study import-stimuli'")
            plan = plan_session(db.protocol, tests, training, participant_code, participant.number)
            row = StudySession(participant_id=participant.id, seed=db.protocol.seed, protocol_sha256=db.protocol.sha256)
            session.add(row)
            session.flush()
            session.execute(
                sa.insert(Trial),
                [
                    dict(
                        session_id=row.id,
                        index=t.index,
                        stimulus_id=t.stimulus_id,
                        training=t.training,
                        scale_order=list(t.scale_order),
                        break_before=t.break_before,
                    )
                    for t in plan
                ],
            )
            session.add(Event(session_id=row.id, kind="planned", detail={"trials": len(plan)}))
            session_id = row.id
        return cls(db, session_id, participant_code)

    @classmethod
    def load(cls, db: StudyDB, participant_code: str) -> SessionEngine:
        """Opens the participant's session whatever its state.

        Raises
        ------
        SessionError
            If the participant has no session yet.
        """
        with db.Session() as session:
            participant = get_participant(session, db, participant_code)
            session_id = session.scalar(sa.select(StudySession.id).where(StudySession.participant_id == participant.id))
        if session_id is None:
            raise SessionError(
                f"participant {participant_code!r} has no session yet; start one with 'panostudy session run'"
            )
        return cls(db, session_id, participant_code)

    @classmethod
    def resume(cls, db: StudyDB, participant_code: str) -> SessionEngine:
        """Reopens a session at its first unfinished step, e.g. after a crash.

        Pose samples of a stimulus whose exposure was interrupted are discarded, because the stimulus is
        shown again from the start.

        Raises
        ------
        SessionError
            If there is no session or it was withdrawn.
        """
        engine = cls.load(db, participant_code)
        if engine.status == "withdrawn":
            raise SessionError(f"participant {participant_code!r} withdrew from the session; nothing more can be recorded")
        step = engine.current()
        with db.Session.begin() as session:
            discarded = 0
            if step.kind == "stimulus":
                trial_id = engine._trial_by_index[step.trial_index].id
                discarded = session.execute(
                    sa.delete(PoseSample).where(PoseSample.session_id == engine.session_id, PoseSample.trial_id == trial_id)
                ).rowcount
            session.add(
                Event(session_id=engine.session_id, kind="resumed", detail={"at_step": step.key, "discarded_poses": discarded})
            )
        return engine

    def _load_done(self) -> dict[str, _Done]:
        index_of = {t.id: t.index for t in self.trials}
        done: dict[str, _Done] = {}
        with self.db.Session() as session:
            for row in session.scalars(sa.select(StepDone).where(StepDone.session_id == self.session_id)):
                done[row.key] = _Done(row.shown_at, row.done_at)
            for row in session.scalars(sa.select(Answer).where(Answer.session_id == self.session_id)):
                done[f"trial/{index_of[row.trial_id]}/{row.scale}/{row.item}"] = _Done(row.shown_at, row.answered_at)
            for row in session.scalars(sa.select(SsqAnswer).where(SsqAnswer.session_id == self.session_id)):
                done[f"ssq/{row.phase}/{row.item}"] = _Done(row.shown_at, row.answered_at)
        return done

    # -- the step sequence --------------------------------------------------------------------------------

    def _steps(self):
        """Every step of the session in order; minute-rule breaks are decided from stored times."""
        protocol = self.protocol
        yield Step("instructions", "instructions", text=protocol.instructions)
        if protocol.ssq.before:
            yield from self._fixed_ssq_steps["pre"]
        training = [t for t in self.trials if t.training]
        if training:
            yield Step("instructions", "training/instructions", text=protocol.training.instructions)
        for trial in training:
            yield from self._fixed_trial_steps[trial.index]
        tests = [t for t in self.trials if not t.training]
        for position, trial in enumerate(tests):
            if trial.break_before or (position > 0 and self._minutes_break_due(tests, position)):
                rule = protocol.breaks
                yield Step(
                    "break", f"break/{trial.index}", text=rule.text, trial_index=trial.index, min_duration_s=rule.min_duration_s
                )
            yield from self._fixed_trial_steps[trial.index]
        if protocol.ssq.after:
            yield from self._fixed_ssq_steps["post"]
        yield Step("done", "done")

    def _ssq_steps(self, phase: str):
        ssq = self.protocol.ssq
        for number, symptom in enumerate(ssq.items, start=1):
            yield Step(
                "ssq", f"ssq/{phase}/{number}", text=f"{ssq.question}\n{symptom}", labels=ssq.labels,
                min_value=min(ssq.labels), max_value=max(ssq.labels),
            )

    def _trial_steps(self, trial: PlannedTrialRow):
        common = dict(trial_index=trial.index, stimulus_path=trial.stimulus_path, scene=trial.scene, training=trial.training)
        yield Step("stimulus", f"trial/{trial.index}/show", exposure_s=self.protocol.exposure_s, **common)
        for scale_id in trial.scale_order:
            scale = self.protocol.scale(scale_id)
            for item in scale.items:
                yield Step(
                    "rating", f"trial/{trial.index}/{scale.id}/{item.id}", text=item.question, labels=item.labels,
                    min_value=scale.min, max_value=scale.max, **common,
                )

    def _minutes_break_due(self, tests: Sequence[PlannedTrialRow], position: int) -> bool:
        """Whether ``every_minutes`` passed between the last break (or the first test trial) and the end of
        the previous trial. Only stored times enter, so the answer is the same after a resume."""
        minutes = self.protocol.breaks.every_minutes
        if minutes is None:
            return False
        # A trial ends with its last step; it is finished when the engine reaches the next boundary.
        last_step = self._fixed_trial_steps[tests[position - 1].index][-1]
        ended = self._done.get(last_step.key)
        if ended is None:
            return False
        since = None
        for earlier in reversed(tests[1:position]):
            taken = self._done.get(f"break/{earlier.index}")
            if taken is not None:
                since = taken.done_at
                break
        if since is None:
            first = self._done.get(f"trial/{tests[0].index}/show")
            if first is None:
                return False
            since = first.shown_at
        return ended.done_at - since >= timedelta(minutes=minutes)

    def current(self) -> Step:
        """The first step not yet finished (``kind == "done"`` once the session is complete)."""
        # The sequence ends with "done", which is never stored, so the loop always stops at a step.
        for step in self._steps():
            if step.key not in self._done:
                break
        return step

    def progress(self) -> tuple[int, int]:
        """(finished steps, steps in the session) — the total counts minute-rule breaks decided so far."""
        steps = [s for s in self._steps() if s.kind != "done"]
        return sum(s.key in self._done for s in steps), len(steps)

    def upcoming_stimuli(self, n: int = 1) -> list[str]:
        """Paths of the next ``n`` stimuli not yet shown, after the current step (for background preload)."""
        current = self.current()
        after = [
            t.stimulus_path for t in self.trials
            if f"trial/{t.index}/show" not in self._done and f"trial/{t.index}/show" != current.key
        ]
        return after[:n]

    def last_activity(self) -> datetime | None:
        """The latest stored ``answered_at`` / ``done_at`` of the session, or None before the first step."""
        return max((d.done_at for d in self._done.values()), default=None)

    # -- recording ---------------------------------------------------------------------------------------

    def submit(self, key: str, value: int | None = None, *, shown_at: datetime, answered_at: datetime) -> Step:
        """Records the current step's answer in its own committed transaction and returns the next step.

        Parameters
        ----------
        key : str
            The current step's key; anything else is refused.
        value : int or None
            The rating / SSQ value, within the step's ``min_value``..``max_value``; None for instructions,
            stimulus and break steps.
        shown_at, answered_at : datetime
            Timezone-aware times the step appeared and was answered (stored as UTC).

        Raises
        ------
        SessionError
            If the session is over, ``key`` is not the current step, the value is missing or out of range,
            the times are naive or reversed, or a break was shorter than the protocol's minimum.
        """
        if self.status in ("withdrawn", "completed"):
            raise SessionError(f"session of {self.participant_code!r} is {self.status}; nothing more can be recorded")
        step = self.current()
        if key != step.key:
            raise SessionError(f"step '{key}' is not the current one; answer the current step '{step.key}' first")
        _require_aware("shown_at", shown_at)
        _require_aware("answered_at", answered_at)
        if answered_at < shown_at:
            raise SessionError(f"step '{key}': answered_at {answered_at.isoformat()} is before shown_at {shown_at.isoformat()}")
        self._check_value(step, value)
        if step.kind == "break" and (answered_at - shown_at).total_seconds() < step.min_duration_s:
            raise SessionError(
                f"step '{key}': the break lasted {(answered_at - shown_at).total_seconds():.1f} s, "
                f"the protocol asks for at least {step.min_duration_s:g} s"
            )
        done = _Done(shown_at, answered_at)
        following = self._next_after(step, done)
        try:
            with self.db.Session.begin() as session:
                # A Core insert of the one row: no unit-of-work bookkeeping on the participant's critical path.
                model, row = self._record_for(step, value, shown_at, answered_at)
                session.execute(sa.insert(model), [row])
                new_status = self.status
                if self.status == "planned":
                    new_status = "running"
                    session.execute(
                        sa.update(StudySession).where(StudySession.id == self.session_id)
                        .values(status=new_status, started_at=shown_at)
                    )
                if following.kind == "done":
                    new_status = "completed"
                    session.execute(
                        sa.update(StudySession).where(StudySession.id == self.session_id)
                        .values(status=new_status, ended_at=answered_at)
                    )
        except sa.exc.IntegrityError:
            raise SessionError(
                f"step '{key}' is already recorded (another process is running this session?); resume it instead"
            ) from None
        self._done[key] = done
        self.status = new_status
        return following

    def _check_value(self, step: Step, value: int | None) -> None:
        if step.kind == "done":
            raise SessionError(f"session of {self.participant_code!r} is complete; nothing more to answer")
        if step.kind in ("rating", "ssq"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise SessionError(f"step '{step.key}': value {value!r} is not an integer {step.min_value}..{step.max_value}")
            if not step.min_value <= value <= step.max_value:
                raise SessionError(
                    f"step '{step.key}': value {value} is out of the scale's range {step.min_value}..{step.max_value}"
                )
        elif value is not None:
            raise SessionError(f"step '{step.key}' ({step.kind}) takes no value, got {value!r}")

    def _next_after(self, step: Step, done: _Done) -> Step:
        # Decided on a copy, so nothing changes in memory unless the transaction commits.
        saved = self._done
        self._done = {**saved, step.key: done}
        try:
            return self.current()
        finally:
            self._done = saved

    def _record_for(self, step: Step, value: int | None, shown_at: datetime, answered_at: datetime) -> tuple[type, dict]:
        """(model, row) that records a finished step."""
        times = dict(session_id=self.session_id, shown_at=shown_at)
        response_time_s = (answered_at - shown_at).total_seconds()
        if step.kind == "rating":
            _, _, scale, item = step.key.split("/", 3)
            trial_id = self._trial_by_index[step.trial_index].id
            return Answer, dict(
                times, trial_id=trial_id, scale=scale, item=item, value=value, response_time_s=response_time_s,
                answered_at=answered_at,
            )
        if step.kind == "ssq":
            _, phase, number = step.key.split("/")
            return SsqAnswer, dict(
                times, phase=phase, item=int(number), value=value, response_time_s=response_time_s, answered_at=answered_at
            )
        return StepDone, dict(times, key=step.key, done_at=answered_at)

    def record_poses(self, trial_index: int, samples: Sequence[tuple[float, ...]]) -> None:
        """Stores head orientation samples ``(t_s since shown, yaw_deg, pitch_deg, roll_deg)`` in one batch;
        a fifth element, where given, is the tracker's own time stamp (integer ns, or None).

        Raises
        ------
        SessionError
            If the trial does not exist, a sample is not four finite numbers, or its time stamp is not an
            integer.
        """
        trial = self._trial_by_index.get(trial_index)
        if trial is None:
            raise SessionError(f"trial_index {trial_index} is not a trial of this session (0..{len(self.trials) - 1})")
        rows = []
        for sample in samples:
            if len(sample) not in (4, 5) or not all(math.isfinite(v) for v in sample[:4]):
                raise SessionError(f"pose sample {sample!r}: expected four finite numbers (t_s, yaw_deg, pitch_deg, roll_deg)")
            stamp = sample[4] if len(sample) == 5 else None
            if stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, numbers.Integral)):
                raise SessionError(f"pose sample {sample!r}: the runtime time stamp must be an integer (ns) or None")
            t, yaw, pitch, roll = sample[:4]
            rows.append(dict(session_id=self.session_id, trial_id=trial.id, t=t, yaw_deg=yaw, pitch_deg=pitch, roll_deg=roll,
                             runtime_time_ns=None if stamp is None else int(stamp)))
        if rows:
            with self.db.Session.begin() as session:
                session.execute(sa.insert(PoseSample), rows)

    def record_event(self, kind: str, detail: Mapping[str, object]) -> None:
        """Stores a JSON-serialisable event (frame-timing statistics of a trial, a backend change, ...)."""
        with self.db.Session.begin() as session:
            session.add(Event(session_id=self.session_id, kind=kind, detail=dict(detail)))

    def withdraw(self, reason: str) -> None:
        """Marks the session withdrawn; everything recorded so far is kept.

        Raises
        ------
        SessionError
            If the session is already completed or withdrawn.
        """
        if self.status in ("withdrawn", "completed"):
            raise SessionError(f"session of {self.participant_code!r} is already {self.status}; it cannot be withdrawn")
        now = utc_now()
        with self.db.Session.begin() as session:
            row = session.get(StudySession, self.session_id)
            row.status, row.ended_at, row.withdraw_reason = "withdrawn", now, reason
            session.add(Event(session_id=self.session_id, kind="withdrawn", detail={"reason": reason, "at_step": self.current().key}))
        self.status = "withdrawn"

