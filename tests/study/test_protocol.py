"""Protocol TOML: the shipped dong2025 study, and one precise error line for each kind of mistake."""

import re
from pathlib import Path

import pytest

from study.errors import ProtocolError
from study.protocol import DEFAULT_PROTOCOL, Protocol, load_protocol, parse_protocol

SHIPPED_TRAINING = 'stimuli = ["../data/training/training_front.png", "../data/training/training_grid.png"]'


@pytest.fixture()
def protocol_file(tmp_path: Path) -> Path:
    """A copy of dong2025.toml whose training stimuli are files of this test, so cases do not depend on data/."""
    (tmp_path / "train").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "train" / name).write_bytes(b"not read by the protocol loader")
    text = DEFAULT_PROTOCOL.read_text(encoding="utf-8")
    assert text.count(SHIPPED_TRAINING) == 1
    path = tmp_path / "study.toml"
    path.write_text(text.replace(SHIPPED_TRAINING, 'stimuli = ["train/a.png", "train/b.png"]'), encoding="utf-8")
    return path


def test_shipped_protocol_reproduces_the_paper_study():
    protocol = load_protocol(DEFAULT_PROTOCOL)
    assert protocol.schema_version == 1
    assert protocol.participants == 32
    assert protocol.scenes == ("vehicle", "street", "indoor", "mountainous")
    assert [s.id for s in protocol.scales] == ["ACR", "VAR", "SSDS", "PCR"]
    assert all((s.min, s.max) == (1, 5) for s in protocol.scales)

    acr = protocol.scale("ACR")
    assert [item.id for item in acr.items] == ["overall"]
    assert acr.items[0].labels == {1: "Bad", 2: "Poor", 3: "Fair", 4: "Good", 5: "Excellent"}
    assert [item.id for item in protocol.scale("VAR").items] == ["clarity", "colour_reproduction", "detail_rendering"]
    ssds = protocol.scale("SSDS").items
    assert len(ssds) >= 3
    assert {"distorted_natural", "flat_spatial", "incoherent_coherent"} <= {item.id for item in ssds}
    assert all({1, 3, 5} <= set(item.labels) for item in ssds)
    assert ssds[0].labels[1] == "Distorted" and ssds[0].labels[5] == "Natural"
    assert len(protocol.scale("PCR").items) == 2
    for scale in protocol.scales:
        for item in scale.items:
            assert item.question.strip() and min(item.labels) == 1 and max(item.labels) == 5

    assert 10 <= protocol.exposure_s <= 30  # ITU-T P.919 range
    assert protocol.pose_rate_hz == 30
    assert protocol.breaks.every_trials == 8 and protocol.breaks.min_duration_s >= 60
    assert protocol.ssq.before and protocol.ssq.after
    assert len(protocol.ssq.items) == 16
    assert protocol.ssq.items[0] == "General discomfort" and protocol.ssq.items[-1] == "Burping"
    assert protocol.ssq.labels == {0: "None", 1: "Slight", 2: "Moderate", 3: "Severe"}
    assert [Path(p).name for p in protocol.training.stimuli] == ["training_front.png", "training_grid.png"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in protocol.training.stimuli)


def test_hash_and_text_are_those_of_the_file(protocol_file: Path):
    import hashlib

    protocol = load_protocol(protocol_file)
    text = protocol_file.read_text(encoding="utf-8")
    assert protocol.source_text == text
    assert protocol.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert protocol.training.stimuli == tuple(str(protocol_file.parent / "train" / n) for n in ("a.png", "b.png"))
    # parse_protocol resolves relative paths against base_dir and gives the same protocol
    assert parse_protocol(text, str(protocol_file), base_dir=protocol_file.parent) == protocol


def test_stored_protocol_can_be_reread_without_its_training_files(protocol_file: Path):
    text = protocol_file.read_text(encoding="utf-8")
    (protocol_file.parent / "train" / "a.png").unlink()
    with pytest.raises(ProtocolError, match=r"training\.stimuli\[0\]: .* does not exist"):
        parse_protocol(text, "db", base_dir=protocol_file.parent)
    protocol = parse_protocol(text, "db", base_dir=protocol_file.parent, check_files=False)
    assert protocol.training.stimuli[0] == str(protocol_file.parent / "train" / "a.png")


def test_unknown_scale_names_the_known_ones():
    protocol = load_protocol(DEFAULT_PROTOCOL)
    with pytest.raises(ProtocolError, match=r"unknown scale 'MOS'; use one of ACR, VAR, SSDS, PCR"):
        protocol.scale("MOS")


# (case id, text to replace, replacement, key path in the message, phrase in the message)
BROKEN = [
    ("toml-syntax", "seed = 20250401", "seed = ", r"line \d+, column \d+", "invalid TOML"),
    ("newer-schema", "schema_version = 1", "schema_version = 2", "schema_version", "upgrade panostudy"),
    ("missing-key", "participants = 32\n", "", "participants", "missing"),
    ("wrong-type", "participants = 32", 'participants = "32"', "participants", "expected an integer"),
    ("bool-for-number", "seed = 20250401", "seed = true", "seed", "got a boolean"),
    ("typo-top-level", "exposure_s = 20.0", "exposur_s = 20.0", "exposur_s", "did you mean 'exposure_s'"),
    ("typo-in-item", 'question = "How clear', 'questoin = "How clear', "scales[1].items[0].questoin",
     "did you mean 'question'"),
    ("item-without-labels", 'labels = { 5 = "Excellent", 4 = "Good", 3 = "Fair", 2 = "Poor", 1 = "Bad" }\n', "",
     "scales[0].items[0].labels", "item has no labels"),
    ("label-out-of-range", '5 = "Excellent"', '6 = "Excellent"', "scales[0].items[0].labels.6",
     "outside 1..5"),
    ("label-key-not-int", '5 = "Excellent"', 'five = "Excellent"', "scales[0].items[0].labels.five",
     "not an integer"),
    ("bipolar-end-missing", '{ 1 = "Distorted", 3 = "Neither", 5 = "Natural" }', '{ 1 = "Distorted", 3 = "Neither" }',
     "scales[2].items[0].labels", "no label for the end value 5"),
    ("min-not-below-max", 'id = "ACR"\nname = "Absolute Category Rating"\nmin = 1',
     'id = "ACR"\nname = "Absolute Category Rating"\nmin = 5', "scales[0].min", "min 5 is not below max 5"),
    ("scale-too-wide", 'id = "ACR"\nname = "Absolute Category Rating"\nmin = 1',
     'id = "ACR"\nname = "Absolute Category Rating"\nmin = -10', "scales[0].max",
     "-10..5 has 16 points; the rating panel shows at most 11"),
    ("duplicate-scale", 'id = "PCR"', 'id = "VAR"', "scales[3].id", "defined twice"),
    ("scenes-empty", 'scenes = ["vehicle", "street", "indoor", "mountainous"]', "scenes = []", "scenes", "is empty"),
    ("scene-duplicated", '"indoor", "mountainous"]', '"indoor", "street"]', "scenes[3]", "listed twice"),
    ("training-file-missing", "train/b.png", "train/c.png", "training.stimuli[1]", "does not exist"),
    ("pose-rate-too-high", "pose_rate_hz = 30.0", "pose_rate_hz = 120.0", "pose_rate_hz", "outside (0, 90]"),
    ("pose-rate-zero", "pose_rate_hz = 30.0", "pose_rate_hz = 0", "pose_rate_hz", "outside (0, 90]"),
    ("exposure-zero", "exposure_s = 20.0", "exposure_s = 0", "exposure_s", "not a positive time"),
    ("exposure-infinite", "exposure_s = 20.0", "exposure_s = inf", "exposure_s", "not a finite number"),
    ("ssq-15-items", '    "Burping",\n', "", "ssq.items", "has 15 items"),
    ("ssq-labels-not-0-3", '{ 0 = "None", 1 = "Slight"', '{ 1 = "Slight"', "ssq.labels", "needs 0, 1, 2, 3"),
    ("ssq-label-above-3", '3 = "Severe" }', '3 = "Severe", 4 = "Very severe" }', "ssq.labels.4", "outside 0..3"),
    ("break-every-zero", "every_trials = 8", "every_trials = 0", "breaks.every_trials", "not a trial count"),
    ("breaks-table-missing", "[breaks]", "[pauses]", "pauses", "unknown key"),
    ("bad-item-id", 'id = "overall"', 'id = "over all"', "scales[0].items[0].id", "not a valid id"),
    ("code-pattern-not-regex", 'code_pattern = "[A-Z]{1,8}[0-9]{0,4}-?[0-9]{1,6}"', 'code_pattern = "[A-Z"',
     "enrolment.code_pattern", "is not a regular expression"),
    ("code-pattern-empty", 'code_pattern = "[A-Z]{1,8}[0-9]{0,4}-?[0-9]{1,6}"', 'code_pattern = "[A-Z]*"',
     "enrolment.code_pattern", "matches an empty code"),
    ("code-example-off-pattern", 'code_examples = ["P07", "LAB2-013"]', 'code_examples = ["P07", "JohnSmith"]',
     "enrolment.code_examples[1]", "does not match the code pattern"),
    ("age-range-reversed", "age_max = 99", "age_max = 10", "enrolment.age_max", "from age_min 18 on"),
    ("age-negative", "age_min = 18", "age_min = -1", "enrolment.age_min", "-1 is not an age"),
    ("age-float", "age_min = 18", "age_min = 18.5", "enrolment.age_min", "expected an integer"),
    ("gender-twice", '"non-binary", "prefer not to say"]', '"non-binary", "male"]', "enrolment.gender[3]",
     "listed twice"),
    ("gender-not-a-list", 'gender = ["female", "male", "non-binary", "prefer not to say"]', 'gender = "female"',
     "enrolment.gender", "expected a list"),
    ("vision-no-choices", 'vision_correction = ["none", "glasses", "contact lenses"]', "vision_correction = []",
     "enrolment.vision_correction", "no choices and no free text"),
    ("enrolment-typo", "age_min = 18", "agemin = 18", "enrolment.agemin", "did you mean 'age_min'"),
]


@pytest.mark.parametrize(("old", "new", "key", "phrase"), [case[1:] for case in BROKEN],
                         ids=[case[0] for case in BROKEN])
def test_each_mistake_gives_one_line_naming_file_and_key(protocol_file: Path, old, new, key, phrase):
    text = protocol_file.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"test case does not fit the shipped file: {old!r}"
    protocol_file.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(ProtocolError) as raised:
        load_protocol(protocol_file)
    message = str(raised.value)
    assert "\n" not in message
    key_pattern = key if key.startswith("line") else re.escape(key)  # TOML syntax errors give a position
    assert re.match(rf"{re.escape(str(protocol_file))}: {key_pattern}: ", message), message
    assert phrase in message
    assert ";" in message.split(": ", 2)[2]  # what is wrong; how to fix it


def test_missing_file_and_string_source():
    with pytest.raises(ProtocolError, match=r"^nowhere/x\.toml: file not found; "):
        load_protocol("nowhere/x.toml")
    with pytest.raises(ProtocolError, match=r"^<string>: schema_version: missing; "):
        parse_protocol('name = "x"')


def test_protocol_is_frozen():
    protocol = load_protocol(DEFAULT_PROTOCOL)
    assert isinstance(protocol, Protocol)
    with pytest.raises(AttributeError):
        protocol.seed = 1  # type: ignore[misc]


def test_enrolment_has_defaults_and_takes_the_protocol_choices(protocol_file: Path):
    from study.protocol import DEFAULT_CODE_PATTERN, DemographicField, EnrolmentSpec

    shipped = load_protocol(DEFAULT_PROTOCOL).enrolment
    assert shipped.code_pattern == DEFAULT_CODE_PATTERN and shipped.code_examples == ("P07", "LAB2-013")
    assert (shipped.age_min, shipped.age_max) == (18, 99)
    assert shipped.gender == DemographicField(("female", "male", "non-binary", "prefer not to say"))
    text = protocol_file.read_text(encoding="utf-8")
    start, end = text.index("[enrolment]"), text.index("[training]")
    without = text[:start] + text[end:]
    assert parse_protocol(without, base_dir=protocol_file.parent).enrolment == EnrolmentSpec()   # older protocols
    own = text[:start] + """[enrolment]
code_pattern = "S[0-9]{3}"
gender = ["w", "m"]
gender_free_text = true
vision_correction = []
vision_correction_free_text = true

""" + text[end:]
    enrolment = parse_protocol(own, base_dir=protocol_file.parent).enrolment
    assert enrolment.code_pattern == "S[0-9]{3}" and enrolment.code_examples == ()   # the defaults' examples do not fit
    assert enrolment.gender == DemographicField(("w", "m"), free_text=True)
    assert enrolment.vision_correction == DemographicField((), free_text=True)
    assert (enrolment.age_min, enrolment.age_max) == (1, 120)
