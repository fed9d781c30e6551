"""Trial planner: properties of a session plan and balance of the scale orders across participants."""

import dataclasses
import itertools
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from study.errors import PanostudyError, ProtocolError
from study.planner import (
    PlannedTrial,
    StimulusRef,
    balanced_latin_square,
    participant_rng,
    plan_session,
    shuffle_no_repeat,
)
from study.protocol import DEFAULT_PROTOCOL, BreakRule, load_protocol

PROTOCOL = load_protocol(DEFAULT_PROTOCOL)
SCENES = PROTOCOL.scenes
TRAINING = (StimulusRef(1000, "training"), StimulusRef(1001, "training"))


def stimuli_of(counts: list[int]) -> list[StimulusRef]:
    """``counts[k]`` stimuli of scene k, ids 0..n-1 grouped by scene (the order a store would list them)."""
    scenes = [scene for scene, count in zip(SCENES, counts) for _ in range(count)]
    return [StimulusRef(i, scene) for i, scene in enumerate(scenes)]


def arrangeable(counts: list[int]) -> bool:
    return sum(counts) > 0 and max(counts) <= (sum(counts) + 1) // 2


scene_counts = st.lists(st.integers(0, 12), min_size=1, max_size=4).filter(arrangeable)


@settings(max_examples=50, deadline=None)
@given(counts=scene_counts, code=st.text(min_size=1, max_size=12), number=st.integers(0, 100),
       every=st.one_of(st.none(), st.integers(1, 10)), n_training=st.integers(0, 2))
def test_plan_properties(counts, code, number, every, n_training):
    protocol = dataclasses.replace(PROTOCOL, breaks=dataclasses.replace(PROTOCOL.breaks, every_trials=every))
    stimuli = stimuli_of(counts)
    training = TRAINING[:n_training]
    plan = plan_session(protocol, stimuli, training, code, number)

    assert [t.index for t in plan] == list(range(len(training) + len(stimuli)))
    assert [(t.stimulus_id, t.training) for t in plan[:n_training]] == [(s.id, True) for s in training]
    test = plan[n_training:]
    assert not any(t.training for t in test)
    assert sorted((t.stimulus_id, t.scene) for t in test) == sorted((s.id, s.scene) for s in stimuli)
    assert all(a.scene != b.scene for a, b in zip(test, test[1:]))
    assert len({t.scale_order for t in plan}) == 1
    assert sorted(plan[0].scale_order) == sorted(s.id for s in protocol.scales)
    assert not any(t.break_before for t in plan[: n_training + 1])
    breaks = [n for n, t in enumerate(test) if t.break_before]
    assert breaks == ([] if every is None else list(range(every, len(test), every)))
    assert plan_session(protocol, stimuli, training, code, number) == plan


def test_participants_get_different_orders():
    stimuli = stimuli_of([5, 5, 5, 5])
    orders = {
        tuple(t.stimulus_id for t in plan_session(PROTOCOL, stimuli, TRAINING, f"P{k:03d}", k))
        for k in range(20)
    }
    assert len(orders) >= 19  # a clash among 20 random valid orders of 20 stimuli is very unlikely


def test_the_study_seed_changes_the_order():
    stimuli = stimuli_of([5, 5, 5, 5])
    reseeded = dataclasses.replace(PROTOCOL, seed=PROTOCOL.seed + 1)
    assert plan_session(PROTOCOL, stimuli, (), "P001", 0) != plan_session(reseeded, stimuli, (), "P001", 0)


def test_participant_rng_does_not_depend_on_the_interpreter_hash_seed():
    probe = ("from study.planner import participant_rng; "
             "print(participant_rng(7, 'P001').integers(0, 2**62, 4).tolist())")
    runs = {
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    }
    assert runs == {str(participant_rng(7, "P001").integers(0, 2**62, 4).tolist()) + "\n"}
    assert not np.array_equal(participant_rng(7, "P001").random(4), participant_rng(7, "P002").random(4))


@settings(max_examples=50, deadline=None)
@given(counts=st.lists(st.integers(1, 30), min_size=2, max_size=5).filter(arrangeable), seed=st.integers(0, 2**32))
def test_sequential_sampler_orders_every_arrangeable_multiset(counts, seed):
    # max_tries=0 skips the rejection shuffles, so the fallback alone must find an order, tight cases included
    items = [(scene, i) for scene, count in enumerate(counts) for i in range(count)]
    order = shuffle_no_repeat(items, lambda item: item[0], np.random.default_rng(seed), max_tries=0)
    assert sorted(order) == sorted(items)
    assert all(a[0] != b[0] for a, b in zip(order, order[1:]))


def test_sequential_sampler_is_random():
    items = [(scene, i) for scene in range(4) for i in range(25)]
    orders = {tuple(shuffle_no_repeat(items, lambda x: x[0], np.random.default_rng(s), max_tries=0)) for s in range(10)}
    assert len(orders) == 10


def test_long_equal_scene_lists_are_ordered():
    # 4 x 25: plain shuffling practically never succeeds here, the planner must still deliver
    plan = plan_session(PROTOCOL, stimuli_of([25, 25, 25, 25]), (), "P001", 0)
    assert all(a.scene != b.scene for a, b in zip(plan, plan[1:]))


@pytest.mark.parametrize("counts", [[3], [4, 1], [0, 6, 2, 1]])
def test_impossible_orders_raise_a_clear_error(counts):
    with pytest.raises(PanostudyError, match=r"without repeating a scene: \d+ of them have scene '\w+'"):
        plan_session(PROTOCOL, stimuli_of(counts), TRAINING, "P001", 0)


def test_single_stimulus_plan():
    (trial,) = plan_session(PROTOCOL, [StimulusRef(5, "street")], (), "P001", 0)
    assert trial == PlannedTrial(0, 5, "street", False, ("ACR", "VAR", "PCR", "SSDS"), False)


@pytest.mark.parametrize(
    ("stimuli", "training", "number", "error", "phrase"),
    [
        ([], (), 0, PanostudyError, "stimuli: none to plan"),
        ([StimulusRef(1, "beach")], (), 0, ProtocolError, "stimulus id 1: scene 'beach' is not in protocol"),
        ([StimulusRef(1, "street"), StimulusRef(1, "indoor")], (), 0, PanostudyError, "stimulus id 1: planned twice"),
        ([StimulusRef(1000, "street")], TRAINING, 0, PanostudyError, "stimulus id 1000: planned twice"),
        ([StimulusRef(1, "street")], (), -1, PanostudyError, "participant_number: -1 is negative"),
    ],
)
def test_bad_plan_input(stimuli, training, number, error, phrase):
    with pytest.raises(error, match=phrase.replace("(", r"\(")):
        plan_session(PROTOCOL, stimuli, training, "P001", number)


@pytest.mark.parametrize("n", range(1, 9))
def test_balanced_latin_square(n):
    square = balanced_latin_square(n)
    assert len(square) == (n if n % 2 == 0 else 2 * n)
    assert all(sorted(row) == list(range(n)) for row in square)
    per_position = [Counter(row[p] for row in square) for p in range(n)]
    assert all(counts == {c: len(square) // n for c in range(n)} for counts in per_position)
    adjacent = Counter(pair for row in square for pair in zip(row, row[1:]))
    expected = 1 if n % 2 == 0 else 2
    assert adjacent == {pair: expected for pair in itertools.permutations(range(n), 2)}


def test_scale_orders_are_balanced_over_participants():
    stimuli = stimuli_of([2, 2, 2, 2])
    n = len(PROTOCOL.scales)
    for blocks in (1, 8):  # one Latin-square cycle, and the paper's 32 participants
        orders = [plan_session(PROTOCOL, stimuli, (), f"P{k:03d}", k)[0].scale_order for k in range(n * blocks)]
        assert all(Counter(o[p] for o in orders) == {s.id: blocks for s in PROTOCOL.scales} for p in range(n))
        adjacent = Counter(pair for o in orders for pair in zip(o, o[1:]))
        assert adjacent == {pair: blocks for pair in itertools.permutations([s.id for s in PROTOCOL.scales], 2)}


def test_odd_scale_count_uses_the_doubled_square():
    three = dataclasses.replace(PROTOCOL, scales=PROTOCOL.scales[:3])
    orders = [plan_session(three, stimuli_of([1, 1]), (), f"P{k}", k)[0].scale_order for k in range(6)]
    assert len(set(orders)) == 6  # all 3! orders, each once
    adjacent = Counter(pair for o in orders for pair in zip(o, o[1:]))
    assert set(adjacent.values()) == {2}


def test_break_rule_without_count_has_no_planned_breaks():
    protocol = dataclasses.replace(PROTOCOL, breaks=BreakRule(None, 10.0, 60.0, "rest"))
    assert not any(t.break_before for t in plan_session(protocol, stimuli_of([6, 6, 6, 6]), TRAINING, "P1", 0))
