"""The session state machine: what to show next, and the answers that move a session on.

A session runs consent (where the protocol asks for it) → instructions → SSQ before → the eye-tracker
validation (where the protocol has one) → training trials →
test trials (each: the stimulus, then every item of every scale in the participant's scale order) with
breaks → SSQ after → done (the thank-you text). A participant may have several sessions (the protocol's
``[[sessions]]``); each is planned and stored when it starts. The engine knows nothing about rendering;
the viewer and the scripted driver drive it through :meth:`SessionEngine.current` and
:meth:`SessionEngine.submit`.

Crash safety: every submit is one committed transaction before the engine moves on, and the position is
always derived from what is stored (answers, SSQ answers and finished steps), so a session opened again
after a crash — even a ``kill -9`` between two answers — continues at its first unfinished step.
"""

from __future__ import annotations

import math
import numbers
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import sqlalchemy as sa
import sqlalchemy.orm as so

from study.errors import SessionError
from study.gaze_validation import ValidationResult, validation_metrics
from study.models import (
    Answer,
    Event,
    GazeSample,
    Participant,
    PoseSample,
    SsqAnswer,
    StepDone,
    Stimulus,
    StudySession,
    Trial,
    ValidationRun,
    ValidationSample,
    ValidationTarget,
    utc_now,
)
from study.planner import StimulusRef, assign_sessions, plan_session
from study.protocol import Protocol, SessionSpec
from study.store import StudyDB, check_station, get_participant, retry_conflicts

StepKind = Literal["consent", "instructions", "ssq", "validation", "stimulus", "rating", "break", "done"]

#: Values of the consent step: the participant agrees, or declines (which ends the session).
AGREE, DECLINE = 1, 0
#: Sessions in these states take no more steps.
ENDED = ("completed", "withdrawn", "declined")


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
    item_number: int | None = None       # rating: position among the trial's questions; SSQ: among its items
    item_count: int | None = None
    start_yaw_deg: float = 0.0           # stimulus: the direction straight ahead when it appears


@dataclass(frozen=True)
class PoseRecord:
    """One head pose sample as :meth:`SessionEngine.record_poses` stores it (a plain 4-tuple
    ``(t_s, yaw_deg, pitch_deg, roll_deg)`` works too)."""

    t: float
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    fov_h_deg: float | None = None
    fov_v_deg: float | None = None
    position: tuple[float, float, float] | None = None
    runtime_time_ns: int | None = None


@dataclass(frozen=True)
class GazeRecord:
    """One eye-gaze sample as :meth:`SessionEngine.record_gaze` stores it: seconds since the stimulus (or the
    validation target) appeared at the tracker's own sample time, the direction in the stimulus (or
    validation) frame, None where the sample is invalid, and the runtime's time stamp where there is one."""

    t: float
    yaw_deg: float | None
    pitch_deg: float | None
    valid: bool
    runtime_time_ns: int | None = None
    target: int | None = None    # validation samples: which target was shown


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
            self.number: int = row.number
            self.station: str | None = row.station
            self._requested_breaks = {
                int(detail["before_trial"]) for detail in session.scalars(
                    sa.select(Event.detail).where(Event.session_id == session_id, Event.kind == "break_requested"))
            }
            self.trials: tuple[PlannedTrialRow, ...] = tuple(
                PlannedTrialRow(t.id, t.index, t.stimulus.path, t.stimulus.scene, t.training, tuple(t.scale_order), t.break_before)
                for t in session.scalars(
                    sa.select(Trial).where(Trial.session_id == session_id).order_by(Trial.index)
                    .options(so.joinedload(Trial.stimulus))
                )
            )
        self.spec: SessionSpec = self.protocol.session(self.number)
        self._trial_by_index = {t.index: t for t in self.trials}
        # The fixed parts of the step sequence, built once; only minute-rule breaks depend on stored times.
        self._fixed_trial_steps = {t.index: tuple(self._trial_steps(t)) for t in self.trials}
        self._fixed_ssq_steps = {phase: tuple(self._ssq_steps(phase)) for phase in ("pre", "post")}
        self._done = self._load_done()

    # -- opening -----------------------------------------------------------------------------------------

    @classmethod
    def start(cls, db: StudyDB, participant_code: str, *, station: str | None = None,
              number: int | None = None) -> SessionEngine:
        """Plans the participant's next due session (or session ``number``) and stores its whole trial
        order in one transaction.

        Parameters
        ----------
        station : str, optional
            Name of the machine the session runs on (letters, digits, ``.``, ``_``, ``-``).
        number : int, optional
            The session to start (1-based); default: the first one the participant has not had.

        Raises
        ------
        StoreError
            If the participant is not enrolled or the station name is not a safe name.
        SessionError
            If a session of theirs is still open, they withdrew or declined, every session is done,
            ``number`` is not one of the protocol's or already taken, or no test stimuli are there.
        ProtocolError
            If ``number`` is not one of the protocol's sessions.
        """
        if station is not None:
            check_station(station)
        # Concurrent starts of one participant race for the session number: the unique key decides, and the
        # loser plans again and finds the winner's session open.
        return cls(db, retry_conflicts(lambda: cls._plan(db, participant_code, station, number)), participant_code)

    @classmethod
    def _plan(cls, db: StudyDB, participant_code: str, station: str | None, number: int | None) -> int:
        """One try of :meth:`start`: plans the session and stores it in one transaction; returns its id."""
        with db.Session.begin() as session:
            participant = get_participant(session, db, participant_code)
            # Starts of one participant queue on their row (a no-op update: a row lock on PostgreSQL, the write
            # lock on SQLite), so each reads the sessions and trials the one before it stored, never half of them.
            session.execute(sa.update(Participant).where(Participant.id == participant.id)
                            .values(number=Participant.number))
            existing = {row.number: row for row in session.scalars(
                sa.select(StudySession).where(StudySession.participant_id == participant.id))}
            _refuse_if_over(participant_code, existing.values())
            open_rows = [row for row in existing.values() if row.status not in ENDED]
            if open_rows:
                row = open_rows[0]
                raise SessionError(
                    f"participant {participant_code!r} has session {row.number} open ({row.status}); continue it "
                    f"with 'panostudy session resume --db {shlex.quote(db.shown_url)} --participant {participant_code}'"
                    " and the --backend of this station"
                )
            if number is None:
                free = [spec.number for spec in db.protocol.sessions if spec.number not in existing]
                if not free:
                    raise SessionError(
                        f"participant {participant_code!r} has done all {len(db.protocol.sessions)} session(s) of the "
                        f"protocol; nothing more to run"
                    )
                number = free[0]
            spec = db.protocol.session(number)
            if number in existing:
                raise SessionError(
                    f"participant {participant_code!r} already has session {number} ({existing[number].status}); "
                    "choose another --session"
                )
            stimuli = session.scalars(
                sa.select(Stimulus).where(Stimulus.study_id == db.study_id).order_by(Stimulus.id)
            ).all()
            for key in db.protocol.view.start_yaw:
                wanted = Path(key).parts
                if not any(Path(s.path).parts[-len(wanted):] == wanted for s in stimuli):
                    raise SessionError(
                        f"protocol view.start_yaw.\"{key}\": no imported stimulus has a path ending in it; fix the "
                        "key (e.g. \"street/0.png\") or import that stimulus"
                    )
            tests = [StimulusRef(s.id, s.scene) for s in stimuli if not s.training]
            training = [StimulusRef(s.id, s.scene) for s in stimuli if s.training] if spec.training else []
            if not tests:
                raise SessionError("the study has no test stimuli; import some with 'panostudy study import-stimuli'")
            # A stimulus imported since an earlier session was planned may land in that session's share:
            # it is shown in this one instead, never twice and never left out.
            shown_before = set(session.scalars(
                sa.select(Trial.stimulus_id).join(StudySession).where(StudySession.participant_id == participant.id)))
            share = assign_sessions(db.protocol, tests, participant_code)
            mine = [ref for ref in share[number] if ref.id not in shown_before]
            mine += [ref for n, refs in share.items() if n != number and n in existing for ref in refs
                     if ref.id not in shown_before and ref.scene in spec.scenes]
            if not mine:
                raise SessionError(
                    f"session {number} ({spec.name}) of participant {participant_code!r} has no test stimuli; import "
                    f"stimuli of its scenes ({', '.join(spec.scenes)}) with 'panostudy study import-stimuli'"
                )
            plan = plan_session(db.protocol, mine, training, participant_code, participant.number, number)
            row = StudySession(participant_id=participant.id, number=number, station=station, seed=db.protocol.seed,
                               protocol_sha256=db.protocol.sha256)
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
            session.add(Event(session_id=row.id, kind="planned",
                              detail={"trials": len(plan), "session_number": number, "station": station}))
            session_id = row.id
        return session_id

    @classmethod
    def load(cls, db: StudyDB, participant_code: str, number: int | None = None) -> SessionEngine:
        """Opens one of the participant's sessions whatever its state: session ``number``, or else the
        open one, or else their latest.

        Raises
        ------
        SessionError
            If the participant has no session yet, or none numbered ``number``.
        ProtocolError
            If ``number`` is not one of the protocol's sessions.
        """
        if number is not None:
            db.protocol.session(number)
        with db.Session() as session:
            participant = get_participant(session, db, participant_code)
            rows = session.execute(
                sa.select(StudySession.id, StudySession.number, StudySession.status)
                .where(StudySession.participant_id == participant.id).order_by(StudySession.number)
            ).all()
        if not rows:
            raise SessionError(
                f"participant {participant_code!r} has no session yet; start one with 'panostudy session run'"
            )
        if number is not None:
            chosen = [r for r in rows if r.number == number]
            if not chosen:
                raise SessionError(
                    f"participant {participant_code!r} has no session {number} yet (sessions: "
                    f"{', '.join(str(r.number) for r in rows)}); start it with 'panostudy session run'"
                )
        else:
            chosen = [r for r in rows if r.status not in ENDED] or rows[-1:]
        return cls(db, chosen[0].id, participant_code)

    @classmethod
    def resume(cls, db: StudyDB, participant_code: str, number: int | None = None, *,
               station: str | None = None) -> SessionEngine:
        """Reopens the participant's open session at its first unfinished step, e.g. after a crash or a stop.

        Pose and gaze samples of a stimulus whose exposure ended but was not recorded (a crash between the
        two) are discarded, because the stimulus is shown again from the start; samples of an exposure that was
        interrupted (pause, stop) are kept, flagged as interrupted.

        Raises
        ------
        SessionError
            If there is no session, it is over (completed, withdrawn, declined).
        """
        if station is not None:
            check_station(station)
        engine = cls.load(db, participant_code, number)
        if engine.status in ENDED:
            what = {"completed": "is complete", "withdrawn": "was withdrawn", "declined": "was declined"}[engine.status]
            hint = ("start the next one with 'panostudy session run'" if engine.status == "completed"
                    and engine.number < len(db.protocol.sessions) else "nothing more can be recorded")
            raise SessionError(f"session {engine.number} of participant {participant_code!r} {what}; {hint}")
        step = engine.current()
        with db.Session.begin() as session:
            discarded = discarded_gaze = 0
            if step.kind == "stimulus":
                trial_id = engine._trial_by_index[step.trial_index].id
                discarded = session.execute(
                    sa.delete(PoseSample).where(PoseSample.session_id == engine.session_id, PoseSample.trial_id == trial_id,
                                                PoseSample.interrupted.is_(False))
                ).rowcount
                discarded_gaze = session.execute(
                    sa.delete(GazeSample).where(GazeSample.session_id == engine.session_id, GazeSample.trial_id == trial_id,
                                                GazeSample.interrupted.is_(False))
                ).rowcount
            session.add(Event(session_id=engine.session_id, kind="resumed",
                              detail={"at_step": step.key, "discarded_poses": discarded,
                                      "discarded_gaze": discarded_gaze, "station": station}))
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
        if protocol.consent is not None:
            yield Step("consent", "consent", text=protocol.consent, min_value=DECLINE, max_value=AGREE)
        yield Step("instructions", "instructions", text=protocol.instructions)
        if protocol.ssq.before and self.spec.ssq:
            yield from self._fixed_ssq_steps["pre"]
        if protocol.validation is not None:
            yield Step("validation", "validation", text=protocol.validation.instructions)
        training = [t for t in self.trials if t.training]
        if training:
            yield Step("instructions", "training/instructions", text=protocol.training.instructions)
        for trial in training:
            if trial.index in self._requested_breaks:
                yield self._break_step(trial)
            yield from self._fixed_trial_steps[trial.index]
        tests = [t for t in self.trials if not t.training]
        for position, trial in enumerate(tests):
            if (trial.break_before or trial.index in self._requested_breaks
                    or (position > 0 and self._minutes_break_due(tests, position))):
                yield self._break_step(trial)
            yield from self._fixed_trial_steps[trial.index]
        if protocol.ssq.after and self.spec.ssq:
            yield from self._fixed_ssq_steps["post"]
        yield Step("done", "done", text=protocol.thank_you)

    def _break_step(self, trial: PlannedTrialRow) -> Step:
        rule = self.protocol.breaks
        return Step("break", f"break/{trial.index}", text=rule.text, trial_index=trial.index,
                    min_duration_s=rule.min_duration_s)

    def _ssq_steps(self, phase: str):
        ssq = self.protocol.ssq
        for number, symptom in enumerate(ssq.items, start=1):
            yield Step(
                "ssq", f"ssq/{phase}/{number}", text=f"{ssq.question}\n\n{symptom}", labels=ssq.labels,
                min_value=min(ssq.labels), max_value=max(ssq.labels), item_number=number, item_count=len(ssq.items),
            )

    def _trial_steps(self, trial: PlannedTrialRow):
        common = dict(trial_index=trial.index, stimulus_path=trial.stimulus_path, scene=trial.scene, training=trial.training)
        yield Step("stimulus", f"trial/{trial.index}/show", exposure_s=self.protocol.exposure_s,
                   start_yaw_deg=self.protocol.view.yaw_for(trial.stimulus_path), **common)
        items = [(scale, item) for scale_id in trial.scale_order
                 for scale in (self.protocol.scale(scale_id),) for item in scale.items]
        for number, (scale, item) in enumerate(items, start=1):
            yield Step(
                "rating", f"trial/{trial.index}/{scale.id}/{item.id}", text=item.question, labels=item.labels,
                min_value=scale.min, max_value=scale.max, item_number=number, item_count=len(items), **common,
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
        """The first step not yet finished (``kind == "done"`` once the session is complete or declined)."""
        if self.status == "declined":
            return Step("done", "done")
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

    def sessions_in_protocol(self) -> int:
        """How many sessions the protocol defines (this one is :attr:`number` of them)."""
        return len(self.protocol.sessions)

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
        if self.status in ENDED:
            raise SessionError(f"session of {self.participant_code!r} is {self.status}; nothing more can be recorded")
        step = self.current()
        if key != step.key:
            raise SessionError(f"step '{key}' is not the current one; answer the current step '{step.key}' first")
        _require_aware("shown_at", shown_at)
        _require_aware("answered_at", answered_at)
        if answered_at < shown_at:
            raise SessionError(f"step '{key}': answered_at {answered_at.isoformat()} is before shown_at {shown_at.isoformat()}")
        self._check_value(step, value)
        if step.kind == "consent" and value == DECLINE:
            return self._decline(shown_at, answered_at)
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

    def _decline(self, shown_at: datetime, answered_at: datetime) -> Step:
        """The participant did not consent: the session ends and keeps nothing but that fact and its time.

        The planned trials and the events go; so do the participant's optional demographics unless another
        session of theirs holds consented data.
        """
        with self.db.Session.begin() as session:
            row = session.get(StudySession, self.session_id)
            session.execute(sa.delete(Trial).where(Trial.session_id == self.session_id))
            session.execute(sa.delete(Event).where(Event.session_id == self.session_id))
            row.status, row.started_at, row.ended_at = "declined", shown_at, answered_at
            session.add(Event(session_id=self.session_id, kind="consent_declined",
                              detail={"shown_at": shown_at.isoformat(), "declined_at": answered_at.isoformat()}))
            others = session.scalar(
                sa.select(sa.func.count()).select_from(StudySession)
                .where(StudySession.participant_id == row.participant_id, StudySession.id != row.id,
                       StudySession.status != "declined"))
            if not others:
                session.execute(sa.update(Participant).where(Participant.id == row.participant_id)
                                .values(age=None, gender=None, vision_correction=None))
        self.status = "declined"
        self.trials, self._trial_by_index, self._fixed_trial_steps = (), {}, {}
        return self.current()

    def _check_value(self, step: Step, value: int | None) -> None:
        if step.kind == "done":
            raise SessionError(f"session of {self.participant_code!r} is complete; nothing more to answer")
        if step.kind == "consent":
            if value not in (AGREE, DECLINE) or isinstance(value, bool):
                raise SessionError(f"step 'consent': value {value!r} is neither {AGREE} (agree) nor {DECLINE} (decline)")
            return
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

    def record_poses(self, trial_index: int, samples: Sequence[PoseRecord | tuple[float, ...]], *,
                     presentation: int = 0, interrupted: bool = False) -> None:
        """Stores head pose samples of one showing of a trial's stimulus in one batch.

        Parameters
        ----------
        samples : sequence
            :class:`PoseRecord` objects, or ``(t_s since shown, yaw_deg, pitch_deg, roll_deg)`` tuples with
            an optional fifth element, the runtime's own time stamp (integer ns, or None).
        presentation : int
            Which showing of the stimulus they belong to (0 first; see :meth:`next_presentation`).
        interrupted : bool
            The showing was interrupted (pause, stop) and the stimulus is shown again.

        Raises
        ------
        SessionError
            If the trial does not exist, a sample's numbers are not finite, or its runtime time stamp is not
            an integer.
        """
        trial = self._trial_by_index.get(trial_index)
        if trial is None:
            raise SessionError(f"trial_index {trial_index} is not a trial of this session (0..{len(self.trials) - 1})")
        rows = []
        for sample in samples:
            if not isinstance(sample, PoseRecord):
                if len(sample) not in (4, 5):
                    raise SessionError(f"pose sample {sample!r}: expected four numbers (t_s, yaw_deg, pitch_deg, roll_deg)"
                                       " and optionally the runtime time stamp")
                t, yaw, pitch, roll, *stamp = sample
                sample = PoseRecord(t, yaw, pitch, roll, runtime_time_ns=stamp[0] if stamp else None)
            values = [sample.t, sample.yaw_deg, sample.pitch_deg, sample.roll_deg]
            values += [v for v in (sample.fov_h_deg, sample.fov_v_deg, *(sample.position or ())) if v is not None]
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise SessionError(f"pose sample {sample!r}: every number must be finite")
            stamp = sample.runtime_time_ns
            if stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, numbers.Integral)):
                raise SessionError(f"pose sample {sample!r}: the runtime time stamp must be an integer (ns) or None")
            x, y, z = sample.position if sample.position is not None else (None, None, None)
            rows.append(dict(session_id=self.session_id, trial_id=trial.id, t=sample.t, yaw_deg=sample.yaw_deg,
                             pitch_deg=sample.pitch_deg, roll_deg=sample.roll_deg, presentation=presentation,
                             interrupted=interrupted, fov_h_deg=sample.fov_h_deg, fov_v_deg=sample.fov_v_deg,
                             x_m=x, y_m=y, z_m=z, runtime_time_ns=None if stamp is None else int(stamp)))
        if rows:
            with self.db.Session.begin() as session:
                session.execute(sa.insert(PoseSample), rows)

    def record_gaze(self, trial_index: int, samples: Sequence[GazeRecord], *, presentation: int = 0,
                    interrupted: bool = False) -> None:
        """Stores the eye-gaze samples of one showing of a trial's stimulus in one batch (see :meth:`record_poses`).

        Raises
        ------
        SessionError
            If the trial does not exist, or a sample's time or direction is not finite (a valid sample needs
            both angles, within ±180° yaw and ±90° pitch).
        """
        trial = self._trial_by_index.get(trial_index)
        if trial is None:
            raise SessionError(f"trial_index {trial_index} is not a trial of this session (0..{len(self.trials) - 1})")
        rows = [dict(session_id=self.session_id, trial_id=trial.id, presentation=presentation, interrupted=interrupted,
                     **_gaze_row(sample)) for sample in samples]
        if rows:
            with self.db.Session.begin() as session:
                session.execute(sa.insert(GazeSample), rows)

    def next_validation_attempt(self) -> int:
        """The number of the session's next validation attempt (1 for the first)."""
        with self.db.Session() as session:
            last = session.scalar(sa.select(sa.func.max(ValidationRun.attempt)).where(
                ValidationRun.session_id == self.session_id))
        return 1 if last is None else last + 1

    def record_validation(self, attempt: int, samples: Sequence[GazeRecord], *, gaze_source: str,
                          started_at: datetime, ended_at: datetime) -> ValidationResult:
        """Measures one validation attempt against the protocol's targets and stores it with its samples.

        Accuracy, precision and data loss per target and overall come from
        :func:`study.gaze_validation.validation_metrics`; the attempt says ``recalibrate`` when the protocol's
        ``threshold_deg`` is exceeded. Run, targets and samples are one transaction.

        Raises
        ------
        SessionError
            If the protocol has no validation step, a sample names no target of it, or its numbers are not finite.
        """
        spec = self.protocol.validation
        if spec is None:
            raise SessionError("the protocol has no [validation] step; add one to validate the eye tracker")
        _require_aware("started_at", started_at)
        _require_aware("ended_at", ended_at)
        rows = []
        for sample in samples:
            if sample.target is None or not 0 <= sample.target < len(spec.targets):
                raise SessionError(f"validation sample {sample!r}: target must be 0..{len(spec.targets) - 1}")
            rows.append(dict(target=sample.target, **_gaze_row(sample)))
        frame = pd.DataFrame({"target": [r["target"] for r in rows], "t": [r["t"] for r in rows],
                              "yaw_deg": [np.nan if r["yaw_deg"] is None else r["yaw_deg"] for r in rows],
                              "pitch_deg": [np.nan if r["pitch_deg"] is None else r["pitch_deg"] for r in rows],
                              "valid": [r["valid"] for r in rows]})
        result = validation_metrics(frame, spec.targets, discard_s=spec.discard_s)
        recalibrate = spec.threshold_deg is not None and result.needs_recalibration(spec.threshold_deg)
        with self.db.Session.begin() as session:
            run = ValidationRun(session_id=self.session_id, attempt=attempt, gaze_source=gaze_source,
                                target_s=spec.target_s, discard_s=spec.discard_s, threshold_deg=spec.threshold_deg,
                                recalibrate=recalibrate, started_at=started_at, ended_at=ended_at,
                                **{k: _finite(v) for k, v in result.overall().items()})
            session.add(run)
            session.flush()
            session.execute(sa.insert(ValidationTarget), [
                dict(run_id=run.id, target=int(r.target), yaw_deg=float(r.target_yaw_deg), pitch_deg=float(r.target_pitch_deg),
                     n_samples=int(r.n_samples), n_valid=int(r.n_valid), accuracy_deg=_finite(r.accuracy_deg),
                     precision_rms_s2s_deg=_finite(r.precision_rms_s2s_deg), precision_sd_deg=_finite(r.precision_sd_deg),
                     data_loss_pct=_finite(r.data_loss_pct))
                for r in result.per_target.itertuples()])
            if rows:
                session.execute(sa.insert(ValidationSample), [dict(run_id=run.id, **row) for row in rows])
        return result

    def next_presentation(self, trial_index: int) -> int:
        """The number of the next showing of a trial's stimulus: how many showings were interrupted before."""
        trial = self._trial_by_index[trial_index]
        with self.db.Session() as session:
            last = session.scalar(sa.select(sa.func.max(PoseSample.presentation)).where(
                PoseSample.trial_id == trial.id, PoseSample.interrupted.is_(True)))
            interrupted = session.scalars(sa.select(Event.detail).where(
                Event.session_id == self.session_id, Event.kind == "trial_flag")).all()
        flagged = [d.get("presentation", 0) for d in interrupted
                   if d.get("flag") == "stimulus_interrupted" and d.get("trial_index") == trial_index]
        return max([-1 if last is None else last, *flagged]) + 1

    def flag_trial(self, trial_index: int, flag: str, detail: str, **extra: object) -> None:
        """Records a flag on a trial (``pose_rate_low``, ``stimulus_interrupted``) as a ``trial_flag`` event;
        :func:`study.export.load_flagged_trials` lists them."""
        self.record_event("trial_flag", {"trial_index": trial_index, "flag": flag, "detail": detail, **extra})

    def request_break(self) -> int | None:
        """The experimenter asks for a break: it comes before the current trial if its stimulus is the
        current step, else before the next trial not yet begun. Returns that trial's index, or None when
        no trial is left (nothing is recorded then).
        """
        step = self.current()
        candidates = [t for t in self.trials if f"trial/{t.index}/show" not in self._done]
        if step.kind == "break" or not candidates:
            return None
        before = candidates[0].index
        self.record_event("break_requested", {"before_trial": before, "at_step": step.key})
        self._requested_breaks.add(before)
        return before

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
        if self.status in ENDED:
            raise SessionError(f"session of {self.participant_code!r} is already {self.status}; it cannot be withdrawn")
        now = utc_now()
        with self.db.Session.begin() as session:
            row = session.get(StudySession, self.session_id)
            row.status, row.ended_at, row.withdraw_reason = "withdrawn", now, reason
            session.add(Event(session_id=self.session_id, kind="withdrawn", detail={"reason": reason, "at_step": self.current().key}))
        self.status = "withdrawn"



def _finite(value) -> float | None:
    """A measure as stored: None where it could not be measured (NaN)."""
    return float(value) if value is not None and math.isfinite(value) else None


def _gaze_row(sample: GazeRecord) -> dict:
    """The stored columns of one gaze sample, checked."""
    stamp = sample.runtime_time_ns
    if stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, numbers.Integral)):
        raise SessionError(f"gaze sample {sample!r}: the runtime time stamp must be an integer (ns) or None")
    if not (isinstance(sample.t, (int, float)) and math.isfinite(sample.t)):
        raise SessionError(f"gaze sample {sample!r}: its time must be a finite number of seconds")
    valid = bool(sample.valid)
    yaw, pitch = (sample.yaw_deg, sample.pitch_deg) if valid else (None, None)
    if valid and not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (yaw, pitch)):
        raise SessionError(f"gaze sample {sample!r}: a valid sample needs a finite yaw and pitch")
    if valid and not (-180.0 <= yaw <= 180.0 and -90.0 <= pitch <= 90.0):
        raise SessionError(f"gaze sample {sample!r}: yaw must lie in ±180° and pitch in ±90°")
    return dict(t=float(sample.t), yaw_deg=None if yaw is None else float(yaw),
                pitch_deg=None if pitch is None else float(pitch), valid=valid,
                runtime_time_ns=None if stamp is None else int(stamp))


def _refuse_if_over(participant_code: str, rows) -> None:
    """A participant who withdrew or declined takes part no more."""
    for row in rows:
        if row.status == "withdrawn":
            raise SessionError(
                f"participant {participant_code!r} withdrew in session {row.number}; nothing more can be recorded"
            )
        if row.status == "declined":
            raise SessionError(
                f"participant {participant_code!r} declined consent in session {row.number}; enrol them under a new "
                "code if they change their mind"
            )
