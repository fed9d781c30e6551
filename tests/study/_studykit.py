"""Shared helpers and fixtures of the store / engine / export tests: a tiny protocol and tiny panoramas.

Test modules import the fixtures they use from here (``from _studykit import study_db``), which keeps
``conftest.py`` free for the protocol tests.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from study.store import add_participant, create_study, import_stimuli

SSQ_ITEMS = [
    "General discomfort", "Fatigue", "Headache", "Eyestrain", "Difficulty focusing", "Increased salivation",
    "Sweating", "Nausea", "Difficulty concentrating", "Fullness of head", "Blurred vision",
    "Dizziness (eyes open)", "Dizziness (eyes closed)", "Vertigo", "Stomach awareness", "Burping",
]


def protocol_toml(*, breaks: str = "every_trials = 2", exposure_s: float = 5.0, pose_rate_hz: float = 10.0,
                  ssq: bool = True, min_break_s: float = 30.0, enrolment: str = "") -> str:
    """A small protocol: two scenes, ACR (1 item) and VAR (2 items), one training panorama ``train.png``;
    ``enrolment`` holds the keys of an ``[enrolment]`` table (none: the defaults)."""
    ssq_items = ", ".join(f'"{name}"' for name in SSQ_ITEMS)
    return f"""
schema_version = 1
name = "tiny"
version = "test"
seed = 11
participants = 4
scenes = ["street", "indoor"]
exposure_s = {exposure_s}
pose_rate_hz = {pose_rate_hz}
instructions = "Look around, then rate."

[training]
stimuli = ["train.png"]
instructions = "Practice first."

[breaks]
{breaks}
min_duration_s = {min_break_s}
text = "Rest a moment."

[ssq]
before = {str(ssq).lower()}
after = {str(ssq).lower()}
question = "How much does each symptom affect you now?"
items = [{ssq_items}]
labels = {{ 0 = "None", 1 = "Slight", 2 = "Moderate", 3 = "Severe" }}

[[scales]]
id = "ACR"
name = "Absolute Category Rating"
min = 1
max = 5
[[scales.items]]
id = "overall"
question = "Overall quality?"
labels = {{ 1 = "Bad", 2 = "Poor", 3 = "Fair", 4 = "Good", 5 = "Excellent" }}

[[scales]]
id = "VAR"
name = "Visual attributes"
min = 1
max = 5
[[scales.items]]
id = "clarity"
question = "How clear is the image?"
labels = {{ 1 = "Very blurry", 5 = "Very clear" }}
[[scales.items]]
id = "detail"
question = "How detailed is the image?"
labels = {{ 1 = "No detail", 5 = "Rich detail" }}
""" + (f"\n[enrolment]\n{enrolment}\n" if enrolment else "")


def write_panorama(path: Path, width: int = 64, height: int = 32, seed: int = 0) -> Path:
    """A random RGB uint8 image of ``width`` × ``height``, saved as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_protocol(folder: Path, **options) -> Path:
    """Writes the tiny protocol and its training panorama into ``folder``."""
    write_panorama(folder / "train.png", seed=99)
    path = folder / "tiny.toml"
    path.write_text(protocol_toml(**options), encoding="utf-8")
    return path


def write_stimuli(folder: Path, per_scene: int = 2, scenes=("street", "indoor")) -> Path:
    """``folder/<scene>/<n>.png`` panoramas, distinct per scene and number."""
    for s, scene in enumerate(scenes):
        for n in range(per_scene):
            write_panorama(folder / scene / f"{n}.png", seed=10 * s + n)
    return folder


def at(seconds: float) -> datetime:
    """A fixed aware UTC time, ``seconds`` after a reference instant."""
    return datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc) + timedelta(seconds=seconds)


def make_study(folder: Path, *, participants=("P01", "P02"), per_scene: int = 2, db=None, **protocol_options):
    """A study database (``db``, default ``folder/study.sqlite``) with stimuli imported and participants
    enrolled, files in ``folder`` (open; close it)."""
    db = create_study(db if db is not None else folder / "study.sqlite", write_protocol(folder, **protocol_options))
    import_stimuli(db, write_stimuli(folder / "stimuli", per_scene=per_scene))
    for code in participants:
        add_participant(db, code)
    return db


@pytest.fixture
def study_db(tmp_path, db_target):
    """A small study on each store: SQLite and PostgreSQL (``db_target`` is in tests/conftest.py)."""
    db = make_study(tmp_path, db=db_target(tmp_path))
    yield db
    db.close()


def write_consent_protocol(folder: Path) -> Path:
    """The test protocol with a consent step first (its training panorama written beside it)."""
    write_panorama(folder / "train.png", seed=99)
    protocol = folder / "consent.toml"
    protocol.write_text(protocol_toml().replace('instructions = "Look around',
                                                'consent = "Do you agree?"\ninstructions = "Look around'), encoding="utf-8")
    return protocol
