"""Trial planner: the order in which one participant sees the stimuli and answers the scales.

Pure functions; every random choice comes from a local :class:`numpy.random.Generator` seeded from the study
seed and the participant code, so the same inputs always give the same plan. The store writes the plan
before the first trial, which also keeps a session's order fixed should a later numpy change its streams.

Design (ITU-R BT.500 / ITU-T P.910 practice, see ``study-standards.md`` §1.5):

* a protocol may split the study over several sessions (days): each test stimulus is shown in exactly
  one of a participant's sessions, among those that list its scene, drawn from (seed, participant);
* each session's plan comes from (seed, participant, session number), so it is the same whenever the
  session is planned;
* training trials first, flagged so that analysis leaves them out;
* test trials in a different random order per participant, never the same scene twice in a row;
* a count-based break before every ``breaks.every_trials``-th test trial (time-based breaks are the
  engine's job, since only it knows the clock);
* the order of the rating scales counterbalanced with a balanced Latin square: participant ``p`` takes
  row ``p + s - 1`` in session ``s``, so each session on its own, and the study as a whole, use every row
  equally often over a multiple of the square's participants.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence, TypeVar

import numpy as np

from study.errors import PanostudyError, ProtocolError
from study.protocol import Protocol

T = TypeVar("T")


@dataclass(frozen=True)
class StimulusRef:
    """A stimulus as the planner needs it: its database id and its scene."""

    id: int
    scene: str


@dataclass(frozen=True)
class PlannedTrial:
    """One trial of a session's plan.

    Attributes
    ----------
    index : int
        0-based position in the session; training trials come first.
    stimulus_id : int
        Database id of the stimulus shown.
    scene : str
        Scene of the stimulus.
    training : bool
        True for a training trial, whose answers are excluded from analysis.
    scale_order : tuple of str
        Scale ids in the order they are asked after the stimulus; the same for the whole session.
    break_before : bool
        A count-based break is shown before this trial.
    """

    index: int
    stimulus_id: int
    scene: str
    training: bool
    scale_order: tuple[str, ...]
    break_before: bool


def participant_rng(study_seed: int, participant_code: str) -> np.random.Generator:
    """Random generator of one participant, derived from the study seed and the participant's code.

    Parameters
    ----------
    study_seed : int
        The protocol's ``seed`` (>= 0).
    participant_code : str
        Pseudonymous participant code.

    Returns
    -------
    numpy.random.Generator
        A PCG64 generator.

    Notes
    -----
    The code is hashed with SHA-256 rather than :func:`hash`, whose value for strings changes between
    interpreter runs (``PYTHONHASHSEED``); the digest seeds a :class:`numpy.random.SeedSequence`, so the
    stream is the same on every run and platform.
    """
    if study_seed < 0:
        raise PanostudyError(f"study seed: {study_seed} is negative; use an integer >= 0")
    digest = hashlib.sha256(f"{study_seed}\x1f{participant_code}".encode("utf-8")).digest()
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int.from_bytes(digest, "big"))))


def session_rng(study_seed: int, participant_code: str, session_number: int) -> np.random.Generator:
    """Random generator of one session of a participant: :func:`participant_rng` of the code and the number."""
    if session_number < 1:
        raise PanostudyError(f"session number {session_number}: sessions are numbered from 1")
    return participant_rng(study_seed, f"{participant_code}\x1fsession {session_number}")


def assign_sessions(protocol: Protocol, stimuli: Sequence[StimulusRef], participant_code: str) -> dict[int, list[StimulusRef]]:
    """Which of a participant's sessions shows each test stimulus.

    Returns
    -------
    dict
        Session number → its test stimuli (in id order). A scene listed by ``k`` sessions has its stimuli
        dealt to them in a seeded random order, round-robin from a seeded random session, so each of them
        gets ``n // k`` or ``n // k + 1`` of the scene's ``n`` stimuli.

    Notes
    -----
    Depends on (seed, participant code, the stimuli) only, so every session of the participant finds
    the same split whenever it is planned.
    """
    rng = participant_rng(protocol.seed, f"{participant_code}\x1fsessions")
    assigned: dict[int, list[StimulusRef]] = {spec.number: [] for spec in protocol.sessions}
    for scene in protocol.scenes:
        holders = [spec.number for spec in protocol.sessions if scene in spec.scenes]
        of_scene = sorted((ref for ref in stimuli if ref.scene == scene), key=lambda ref: ref.id)
        order = rng.permutation(len(of_scene))
        start = int(rng.integers(len(holders)))
        for position, index in enumerate(order):
            assigned[holders[(start + position) % len(holders)]].append(of_scene[index])
    return {number: sorted(refs, key=lambda ref: ref.id) for number, refs in assigned.items()}


def balanced_latin_square(n: int) -> list[list[int]]:
    """Orders of ``n`` conditions balanced for position and for first-order carry-over.

    Parameters
    ----------
    n : int
        Number of conditions (>= 1).

    Returns
    -------
    list of list of int
        Rows are orders (permutations of ``0..n-1``): ``n`` rows for even ``n``, ``2n`` for odd ``n``.
        Over all rows each condition takes each position equally often, and each ordered pair of distinct
        conditions is adjacent equally often (once for even ``n``, twice for odd ``n``).

    Notes
    -----
    Williams (1949) design. The first row is ``0, 1, n-1, 2, n-2, 3, ...`` and row ``r`` adds ``r`` modulo
    ``n`` to it; for even ``n`` this is the balanced Latin square of Bradley (1958). For odd ``n`` no single
    square balances carry-over, so the square is followed by its rows reversed (the doubled square).

    References
    ----------
    E. J. Williams, "Experimental designs balanced for the estimation of residual effects of treatments,"
    Australian Journal of Scientific Research A 2(2):149-168, 1949.
    J. V. Bradley, "Complete counterbalancing of immediate sequential effects in a Latin square design,"
    Journal of the American Statistical Association 53(282):525-528, 1958.
    """
    if n < 1:
        raise PanostudyError(f"balanced_latin_square: n = {n}; it needs at least one condition")
    first = [0]
    low, high = 1, n - 1
    while low <= high:
        first.append(low)
        low += 1
        if low <= high:
            first.append(high)
            high -= 1
    square = [[(value + row) % n for value in first] for row in range(n)]
    if n % 2:
        square += [row[::-1] for row in square]
    return square


def shuffle_no_repeat(items: Sequence[T], key: Callable[[T], Hashable], rng: np.random.Generator,
                      max_tries: int = 1000) -> list[T]:
    """Random order of ``items`` in which no two neighbours share the same ``key``.

    Parameters
    ----------
    items : sequence
        Items to order.
    key : callable
        Maps an item to the value neighbours must not share (e.g. its scene).
    rng : numpy.random.Generator
        Source of randomness.
    max_tries : int
        Whole-sequence shuffles to try before switching to the sequential sampler.

    Returns
    -------
    list
        A permutation of ``items``.

    Raises
    ------
    PanostudyError
        If no such order exists: some key covers more than half of the items (``count > ceil(len/2)``).

    Notes
    -----
    First plain shuffles are tried, as MIRO360 does; an accepted shuffle is uniform over all valid orders.
    When valid orders are rare (long lists: with 4 equal scenes and 100 items fewer than 1 in 10^10
    shuffles qualifies) a sequential sampler takes over: it draws each next key among those that keep the
    rest arrangeable, with probability proportional to the items left, so it never fails when an order exists.
    """
    items = list(items)
    keys = [key(item) for item in items]
    counts = Counter(keys)
    if counts:
        top, top_count = counts.most_common(1)[0]
        if top_count > (len(items) + 1) // 2:
            raise PanostudyError(
                f"cannot order {len(items)} stimuli without repeating a scene: {top_count} of them have "
                f"scene '{top}', at most {(len(items) + 1) // 2} can; add stimuli of other scenes"
            )
    for _ in range(max_tries):
        order = rng.permutation(len(items))
        if all(keys[a] != keys[b] for a, b in zip(order[:-1], order[1:])):
            return [items[i] for i in order]
    return _sequential_no_repeat(items, keys, rng)


def _sequential_no_repeat(items: list[T], keys: list[Hashable], rng: np.random.Generator) -> list[T]:
    """Build a no-repeat order item by item; the caller has checked that one exists."""
    groups: dict[Hashable, list[T]] = {}
    for item, k in zip(items, keys):
        groups.setdefault(k, []).append(item)
    for k in groups:
        groups[k] = [groups[k][i] for i in rng.permutation(len(groups[k]))]
    order: list[T] = []
    previous: Hashable | None = None
    left = len(items)
    while left:
        # After placing key c, the rest (left - 1 items, not starting with c) can be arranged iff c keeps at
        # most floor(rest/2) and every other key at most ceil(rest/2). The first half holds by induction
        # (every key has at most ceil(left/2) now), so only the other keys need checking.
        rest = left - 1
        candidates = [
            c for c, group in groups.items()
            if group and c != previous
            and all(len(g) <= (rest + 1) // 2 for d, g in groups.items() if d != c)
        ]
        weights = np.array([len(groups[c]) for c in candidates], dtype=float)
        chosen = candidates[rng.choice(len(candidates), p=weights / weights.sum())]
        order.append(groups[chosen].pop())
        previous = chosen
        left -= 1
    return order


def plan_session(protocol: Protocol, stimuli: Sequence[StimulusRef], training_stimuli: Sequence[StimulusRef],
                 participant_code: str, participant_number: int, session_number: int = 1) -> tuple[PlannedTrial, ...]:
    """Plan one session of a participant.

    Parameters
    ----------
    protocol : Protocol
        The study protocol (seed, scenes, scales, break rule).
    stimuli : sequence of StimulusRef
        This session's test stimuli (see :func:`assign_sessions`); each is shown once.
    training_stimuli : sequence of StimulusRef
        Training stimuli, shown first in the given order (the lab arranges them to span the quality range);
        empty for a session without training.
    participant_code : str
        Pseudonymous code; with the protocol seed and the session number it seeds the random order.
    participant_number : int
        0-based enrolment order; with the session number it picks the row of the balanced Latin square
        for the scale order.
    session_number : int
        1-based number of the session among the participant's sessions.

    Returns
    -------
    tuple of PlannedTrial
        Training trials, then test trials, indexed from 0.

    Raises
    ------
    PanostudyError
        For no test stimuli, duplicate ids, a scene the protocol does not list (:class:`ProtocolError`),
        a negative participant number, or scenes that cannot be ordered without a repeat.
    """
    if not stimuli:
        raise PanostudyError("stimuli: none to plan; import test stimuli before starting a session")
    if participant_number < 0:
        raise PanostudyError(f"participant_number: {participant_number} is negative; number participants from 0")
    seen: set[int] = set()
    for ref in [*training_stimuli, *stimuli]:
        if ref.id in seen:
            raise PanostudyError(f"stimulus id {ref.id}: planned twice (as test and/or training stimulus); "
                                 "list each stimulus once")
        seen.add(ref.id)
    for ref in stimuli:
        if ref.scene not in protocol.scenes:
            raise ProtocolError(f"stimulus id {ref.id}: scene '{ref.scene}' is not in protocol "
                                f"'{protocol.name}'; use one of {', '.join(protocol.scenes)}")

    rng = session_rng(protocol.seed, participant_code, session_number)
    square = balanced_latin_square(len(protocol.scales))
    row = square[(participant_number + session_number - 1) % len(square)]
    scale_order = tuple(protocol.scales[i].id for i in row)
    test_order = shuffle_no_repeat(stimuli, lambda ref: ref.scene, rng)

    every = protocol.breaks.every_trials
    trials = [
        PlannedTrial(index=i, stimulus_id=ref.id, scene=ref.scene, training=True, scale_order=scale_order,
                     break_before=False)
        for i, ref in enumerate(training_stimuli)
    ]
    for n, ref in enumerate(test_order):
        trials.append(PlannedTrial(index=len(trials), stimulus_id=ref.id, scene=ref.scene, training=False,
                                   scale_order=scale_order,
                                   break_before=every is not None and n > 0 and n % every == 0))
    return tuple(trials)
