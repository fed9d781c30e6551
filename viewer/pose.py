"""Head poses at exactly the protocol's rate, whatever the frame rate.

A stimulus's exposure has its sample times fixed in advance: ``onset + k / rate_hz`` on the monotonic
clock, for every ``k`` with ``k / rate_hz < exposure``. :class:`PoseSampler` wakes for each in a thread
of its own and asks the backend for the head *at that time* (:meth:`viewer.backends.base.Backend.head_at`):
a headset's runtime predicts or looks up the pose for the given time, and the desktop answers from the
history of its view state, so a sample is the pose at its due time even when the thread wakes late. A
slow frame never delays, drops or shifts a sample. The samples stay in memory until the exposure ends
and are stored in one batch, so no database write happens while a stimulus is on screen.

With a simulated clock (the headless backend and a scripted participant) no thread runs:
:func:`due_times` gives the same grid and the runner evaluates its script there.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from study.errors import ProtocolError

#: Highest sampling rate: the headset's display rate; more samples would only repeat poses.
MAX_POSE_RATE_HZ = 90.0
#: Share of the protocol's rate below which a trial is flagged ``pose_rate_low``.
LOW_RATE_SHARE = 0.95
#: The sampler thread asks the OS for this real-time priority (Linux ``SCHED_FIFO``) where it may: it
#: sleeps nearly all the time, and wakes ahead of the renderer's threads on a busy machine.
REALTIME_PRIORITY = 10
#: While sampling, Python hands the interpreter lock over this often (the default 5 ms would let the
#: render thread's Python work delay a sample by up to 5 ms).
SWITCH_INTERVAL_S = 0.0005


def check_rate(rate_hz: float) -> float:
    if not (isinstance(rate_hz, (int, float)) and 0 < rate_hz <= MAX_POSE_RATE_HZ):
        raise ProtocolError(f"pose_rate_hz={rate_hz!r}: must be a number in (0, {MAX_POSE_RATE_HZ:g}] Hz; 30 is usual")
    return float(rate_hz)


def due_times(rate_hz: float, exposure_s: float) -> np.ndarray:
    """Seconds after onset of every sample of an exposure: ``k / rate_hz`` for ``k / rate_hz < exposure_s``."""
    count = math.ceil(exposure_s * rate_hz - 1e-9)
    return np.arange(count) / rate_hz


@dataclass(frozen=True)
class TimedSample:
    """A sample: seconds after onset (its due time), what the backend said, and how late it asked."""

    t: float
    head: np.ndarray
    position: np.ndarray | None
    fov_deg: tuple[float, float] | None
    runtime_time_ns: int | None
    late_ns: int


@dataclass(frozen=True)
class RateReport:
    """What a trial's sampling achieved (stored as its ``pose_rate`` event)."""

    expected: int
    stored: int
    achieved_hz: float
    largest_gap_s: float
    late_p99_ms: float
    late_max_ms: float

    def low(self, rate_hz: float) -> bool:
        return self.achieved_hz < LOW_RATE_SHARE * rate_hz

    def as_detail(self) -> dict[str, float]:
        return {"expected": self.expected, "stored": self.stored, "achieved_hz": round(self.achieved_hz, 3),
                "largest_gap_s": round(self.largest_gap_s, 4), "late_p99_ms": round(self.late_p99_ms, 3),
                "late_max_ms": round(self.late_max_ms, 3)}


def rate_report(times_s: list[float] | np.ndarray, rate_hz: float, exposure_s: float,
                late_ns: list[int] | np.ndarray = ()) -> RateReport:
    """Achieved rate and largest gap of an exposure's sample times (the gaps to onset and to the end
    count too, so missing first or last samples show)."""
    times = np.sort(np.asarray(times_s, dtype=np.float64))
    edges = np.concatenate([[0.0], times, [exposure_s]]) if times.size else np.array([0.0, exposure_s])
    gaps = np.diff(edges)
    # the first sample is due at onset and the end lies one period after the last one
    gaps[0] += 1.0 / rate_hz if times.size else 0.0
    late = np.asarray(late_ns, dtype=np.float64) / 1e6
    return RateReport(
        expected=len(due_times(rate_hz, exposure_s)), stored=int(times.size), achieved_hz=times.size / exposure_s,
        largest_gap_s=float(gaps.max()), late_p99_ms=float(np.percentile(late, 99)) if late.size else 0.0,
        late_max_ms=float(late.max()) if late.size else 0.0,
    )


_fast_switch = {"users": 0, "saved": None}
_fast_switch_lock = threading.Lock()


def _fast_switching(on: bool) -> None:
    """Shortens Python's switch interval while any sampler runs (pose and gaze samplers overlap), and
    restores it when the last one stops."""
    with _fast_switch_lock:
        if on:
            if _fast_switch["users"] == 0:
                _fast_switch["saved"] = sys.getswitchinterval()
                sys.setswitchinterval(min(_fast_switch["saved"], SWITCH_INTERVAL_S))
            _fast_switch["users"] += 1
        else:
            _fast_switch["users"] -= 1
            if _fast_switch["users"] == 0:
                sys.setswitchinterval(_fast_switch["saved"])


class DueTimeSampler:
    """Asks ``source`` for a sample at each due time ``onset + k / rate_hz``, in a thread of its own.

    What the source returns is kept (None: no sample then) by :meth:`_record`, which subclasses shape:
    :class:`PoseSampler` for head poses, ``viewer.gaze.GazeSampler`` for the eye tracker.

    Parameters
    ----------
    rate_hz : float
        Samples per second (checked by :meth:`_check_rate`).
    source : callable
        ``source(monotonic_ns)``: the sample at that time, or None.
    clock_ns : callable
        The clock the due times are on (``time.monotonic_ns``).
    raise_priority : bool
        Ask the OS for a real-time (else a higher) priority for the sampling thread where allowed.
    """

    thread_name = "sampler"

    def __init__(self, rate_hz: float, source: Callable[[int], object], *, clock_ns: Callable[[], int] = time.monotonic_ns,
                 raise_priority: bool = True):
        self.rate_hz = self._check_rate(rate_hz)
        self.period_ns = round(1e9 / self.rate_hz)
        self._source = source
        self._clock = clock_ns
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._samples: list = []
        self._next = 0
        self._count = 0
        self._onset_ns = 0
        self._end_ns: int | None = None
        self._error: BaseException | None = None
        self.priority = "normal"
        self._wants_priority = raise_priority

    @staticmethod
    def _check_rate(rate_hz: float) -> float:
        return check_rate(rate_hz)

    def _record(self, k: int, sample, late_ns: int):
        """What is kept of the source's answer for due time ``k`` (never called with None)."""
        return sample

    def start(self, onset_ns: int, exposure_s: float) -> None:
        """Starts sampling an exposure that began (or begins) at ``onset_ns`` and lasts ``exposure_s``."""
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__}.start: already sampling; stop() first")
        self._onset_ns, self._samples, self._next, self._error, self._end_ns = onset_ns, [], 0, None, None
        self._count = len(due_times(self.rate_hz, exposure_s))
        self._wake.clear()
        _fast_switching(True)
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def _due_ns(self, k: int) -> int:
        return self._onset_ns + round(k * 1e9 / self.rate_hz)

    def _take(self, k: int) -> None:
        due = self._due_ns(k)
        sample = self._source(due)
        late = self._clock() - due
        if sample is not None:
            record = self._record(k, sample, late)
            with self._lock:
                self._samples.append(record)

    def _raise_priority(self) -> str:
        """Gives the sampling thread a real-time (else a higher) OS priority where the system allows it
        (root, ``CAP_SYS_NICE`` or a ``rtprio``/``nice`` limit in /etc/security/limits.conf); returns which."""
        tid = threading.get_native_id()
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
            return "realtime"
        except (AttributeError, OSError):
            pass
        try:
            os.setpriority(os.PRIO_PROCESS, tid, -10)
            return "nice -10"
        except (AttributeError, OSError):
            return "normal"

    def _run(self) -> None:
        if self._wants_priority:
            self.priority = self._raise_priority()
        try:
            while True:
                with self._lock:
                    k, end = self._next, self._end_ns
                if k >= self._count:
                    return
                due = self._due_ns(k)
                if end is not None and due >= end:
                    return
                wait = due - self._clock()
                if wait > 0:
                    if self._wake.wait(wait / 1e9):
                        self._wake.clear()
                    continue
                self._take(k)
                with self._lock:
                    self._next = k + 1
        except BaseException as error:  # noqa: BLE001 - handed to the render thread in stop()
            self._error = error

    def stop(self, at_ns: int | None = None) -> list:
        """Ends the exposure at ``at_ns`` (default: now) and returns its samples, every one due before then.

        A sample due before the end that the thread has not taken yet is taken now (at its due time), so
        a thread that woke late never loses one.

        Raises
        ------
        BaseException
            Whatever the source raised in the sampling thread.
        """
        if self._thread is None:
            return []
        end = self._clock() if at_ns is None else at_ns
        with self._lock:
            self._end_ns = end
        self._wake.set()
        self._thread.join()
        self._thread = None
        _fast_switching(False)
        if self._error is not None:
            raise self._error
        while self._next < self._count and self._due_ns(self._next) < end:
            self._take(self._next)
            self._next += 1
        samples, self._samples = self._samples, []
        return samples


class PoseSampler(DueTimeSampler):
    """Samples the head at ``rate_hz`` (0 < rate ≤ 90) from a given onset, in a thread of its own.

    ``source(monotonic_ns) -> HeadSample | None`` gives the head at that time; :meth:`stop` returns
    :class:`TimedSample` records.
    """

    thread_name = "pose-sampler"

    def _record(self, k: int, sample, late_ns: int) -> TimedSample:
        return TimedSample(k / self.rate_hz, sample.head, sample.position, sample.fov_deg, sample.runtime_time_ns, late_ns)
