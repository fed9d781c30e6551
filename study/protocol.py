"""Study protocols: a TOML file that defines a whole subjective study, validated into frozen dataclasses.

A protocol holds everything a lab may want to change without touching code: scenes, rating scales with
every item's wording and anchor labels, exposure time, pose sampling rate, instructions, training stimuli,
break rule and the simulator sickness questionnaire (SSQ). ``protocols/README.md`` documents the format;
``protocols/dong2025.toml`` reproduces the study of Dong et al.

Every problem is reported as one :class:`~study.errors.ProtocolError` line of the form
``<file>: <key.path>: <what is wrong>; <how to fix it>``.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from study.errors import ProtocolError
from study.validation_targets import (
    DEFAULT_DISCARD_S,
    DEFAULT_SPREAD_DEG,
    DEFAULT_TARGET_S,
    MAX_TARGET_DEG,
    check_targets,
    grid_targets,
)

SCHEMA_VERSION = 1
"""The newest protocol ``schema_version`` this code reads."""

DEFAULT_PROTOCOL: Path = Path(__file__).resolve().parent.parent / "protocols" / "dong2025.toml"
"""The shipped protocol that reproduces the study of Dong et al."""

MAX_POSE_RATE_HZ = 90.0
"""Headsets such as the HTC VIVE Pro Eye refresh at 90 Hz; sampling poses faster only repeats frames."""

MAX_SEED = 2**63 - 1
"""Seeds are stored as 64-bit signed integers (SQLite INTEGER, PostgreSQL BIGINT)."""

MAX_EXPOSURE_S = 600.0
"""Ten minutes; ITU-T P.919 asks for 10-30 s, and longer exposures only make sickness more likely."""

MAX_PARTICIPANTS = 100_000
MAX_SCALE_VALUE = 1000
"""Scale values stay within -1000..1000: any rating scale fits, and every store keeps them exactly."""

MAX_BREAK_S = 3600.0
MAX_BREAK_EVERY_MINUTES = 600.0
MAX_BREAK_EVERY = 10_000

SSQ_ITEM_COUNT = 16
"""Kennedy et al. (1993) scoring weights index the 16 items by position, so the count is fixed."""

MAX_SCALE_POINTS = 11
"""The in-headset panel lays out one button per value in a row; at 11 each is still about 3° wide at
1.5 m, enough to aim a controller's laser at."""

SSQ_VALUES = (0, 1, 2, 3)
"""SSQ answers are zero-based (0 None ... 3 Severe); the scoring formulas assume it."""

#: Every caption the participant reads that is not part of a question, with its English default. A
#: protocol's ``[captions]`` table replaces any of them; the ``{fields}`` each may use are listed in
#: :data:`CAPTION_FIELDS`.
DEFAULT_CAPTIONS: dict[str, str] = {
    "confirm": "Confirm",
    "continue": "Continue",
    "continue_in": "Continue in {seconds} s",
    "question_progress": "Question {number} of {count}",
    "page": "{page}/{pages}",
    "paused": "The session is paused. Please wait: the experimenter will continue it shortly.",
    "ready": "Ready to go on? Select Continue when you are.",
    "agree": "I agree",
    "decline": "I do not agree",
    "finish": "Finish",
    "declined": "Thank you. You chose not to take part, and nothing more will be asked. The experimenter will help "
                "you take off the headset.",
    "stop_question": "Stop the session now? You can continue it later.",
    "stop": "Stop",
    "go_on": "Go on",
    "validation_wait": "Please keep still and keep the headset on: the experimenter is checking the eye tracker.",
}
CAPTION_FIELDS: dict[str, tuple[str, ...]] = {
    "continue_in": ("seconds",),
    "question_progress": ("number", "count"),
    "page": ("page", "pages"),
}
#: The default participant-code pattern (the whole code must match): 1-8 capital letters, up to 4 digits,
#: an optional '-', then 1-6 digits. It takes P07, S1, LAB2-013 and VR-0001, and refuses what looks like a
#: person (JohnSmith, Maria_Garcia, john-doe-1985) or an address (jane.doe@example.org).
DEFAULT_CODE_PATTERN = "[A-Z]{1,8}[0-9]{0,4}-?[0-9]{1,6}"
DEFAULT_CODE_EXAMPLES = ("P07", "LAB2-013")
#: Choices of the optional demographic fields where a protocol names none.
DEFAULT_GENDERS = ("female", "male", "non-binary", "prefer not to say")
DEFAULT_VISION_CORRECTIONS = ("none", "glasses", "contact lenses")
DEFAULT_AGE_RANGE = (1, 120)
MAX_AGE = 150
#: A demographic value typed as free text (where the protocol allows it) is at most this long.
MAX_FREE_TEXT = 40
DEFAULT_VALIDATION_INSTRUCTIONS = (
    "Next we check the eye tracker. Dots will appear one after another on a grey background. Look at the "
    "centre of each dot as soon as it appears, and keep looking at it until the next one appears. Try to "
    "keep your head still."
)
#: Bounds of the validation step's timing and its recalibration threshold.
MAX_VALIDATION_TARGETS = 50
VALIDATION_TARGET_S = (0.5, 10.0)
MAX_VALIDATION_THRESHOLD_DEG = 30.0
DEFAULT_THANK_YOU = "Thank you for taking part. The session is over: the experimenter will help you take off the headset."

# Ids end up in step keys such as "trial/12/VAR/clarity" and in CSV columns, so keep them plain.
_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")


@dataclass(frozen=True)
class ScaleItem:
    """One rated item of a scale.

    Attributes
    ----------
    id : str
        Identifier within its scale, e.g. ``"overall"``, ``"clarity"``, ``"distorted_natural"``.
    question : str
        Wording shown to the participant.
    labels : Mapping[int, str]
        Anchor labels by value, ascending; always includes the scale's minimum and maximum.
    """

    id: str
    question: str
    labels: Mapping[int, str]


@dataclass(frozen=True)
class Scale:
    """A rating scale: integer values ``min..max`` and the items rated on it."""

    id: str
    name: str
    min: int
    max: int
    items: tuple[ScaleItem, ...]


@dataclass(frozen=True)
class SsqSpec:
    """The Simulator Sickness Questionnaire (Kennedy et al., 1993) as asked before and/or after a session."""

    items: tuple[str, ...]
    labels: Mapping[int, str]
    question: str
    before: bool
    after: bool


@dataclass(frozen=True)
class BreakRule:
    """When to pause: after every ``every_trials`` test trials and/or after ``every_minutes`` since the last
    break (the engine checks the time at trial boundaries). ``None`` switches that criterion off."""

    every_trials: int | None
    every_minutes: float | None
    min_duration_s: float
    text: str


@dataclass(frozen=True)
class Training:
    """Training trials shown before the test trials; their answers are flagged and left out of analysis."""

    stimuli: tuple[str, ...]
    instructions: str


@dataclass(frozen=True)
class PanelSpec:
    """How panels are presented: the optional "question k of n" line and extra fonts tried first."""

    question_progress: bool = False
    fonts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ViewSpec:
    """How every stimulus starts: its start yaw (``start_yaw`` by stimulus path suffix, else
    ``start_yaw_deg``), and on the desktop the horizontal field of view and the window size."""

    start_yaw_deg: float = 0.0
    start_yaw: Mapping[str, float] = field(default_factory=dict)
    fov_deg: float = 90.0
    window: tuple[int, int] = (1280, 720)

    def yaw_for(self, stimulus_path: str) -> float:
        """The start yaw of a stimulus: the entry whose key ends its path (as whole path parts), or the default."""
        parts = Path(stimulus_path).parts
        for key, yaw in self.start_yaw.items():
            wanted = Path(key).parts
            if tuple(parts[-len(wanted):]) == wanted:
                return yaw
        return self.start_yaw_deg


@dataclass(frozen=True)
class DemographicField:
    """An optional demographic field: the values it takes, and whether free text is allowed besides them."""

    choices: tuple[str, ...]
    free_text: bool = False


@dataclass(frozen=True)
class EnrolmentSpec:
    """What ``add-participant`` accepts: the participant-code pattern (matched whole), examples of it, the
    age range, and the choices of gender and vision correction."""

    code_pattern: str = DEFAULT_CODE_PATTERN
    code_examples: tuple[str, ...] = DEFAULT_CODE_EXAMPLES
    age_min: int = DEFAULT_AGE_RANGE[0]
    age_max: int = DEFAULT_AGE_RANGE[1]
    gender: DemographicField = DemographicField(DEFAULT_GENDERS)
    vision_correction: DemographicField = DemographicField(DEFAULT_VISION_CORRECTIONS)


@dataclass(frozen=True)
class ValidationSpec:
    """The eye-tracker validation step: targets at known directions shown one after another on neutral grey.

    Attributes
    ----------
    targets : tuple of (yaw_deg, pitch_deg)
        Directions relative to straight ahead when the step begins, each within ±90°; the default is the
        3 × 3 grid at ±15° (:func:`study.validation_targets.grid_targets`).
    target_s : float
        Seconds each target is shown.
    discard_s : float
        Leading seconds of each target left out of the measures (the eye finding it).
    threshold_deg : float or None
        Overall accuracy worse than this makes the console say "recalibrate" and wait for the experimenter
        (repeat or go on); None never asks.
    instructions : str
        The panel the participant reads before the targets.
    """

    targets: tuple[tuple[float, float], ...] = field(default_factory=grid_targets)
    target_s: float = DEFAULT_TARGET_S
    discard_s: float = DEFAULT_DISCARD_S
    threshold_deg: float | None = None
    instructions: str = DEFAULT_VALIDATION_INSTRUCTIONS


@dataclass(frozen=True)
class SessionSpec:
    """One of the sessions a participant comes for (e.g. one per day).

    Attributes
    ----------
    number : int
        1-based position in the protocol's ``[[sessions]]`` list.
    name : str
        Shown to the experimenter, e.g. ``"Day 1"``.
    scenes : tuple of str
        Scenes whose test stimuli this session shows; a scene in several sessions has its stimuli split
        between them.
    training : bool
        Whether the training trials open this session.
    ssq : bool
        Whether the SSQ is asked in this session (before/after as ``[ssq]`` says).
    """

    number: int
    name: str
    scenes: tuple[str, ...]
    training: bool = True
    ssq: bool = True


@dataclass(frozen=True)
class Protocol:
    """A validated study protocol; build it with :func:`load_protocol` or :func:`parse_protocol`."""

    schema_version: int
    name: str
    version: str
    seed: int
    participants: int
    scenes: tuple[str, ...]
    scales: tuple[Scale, ...]
    exposure_s: float
    pose_rate_hz: float
    instructions: str
    training: Training
    breaks: BreakRule
    ssq: SsqSpec
    source_text: str
    sha256: str
    sessions: tuple[SessionSpec, ...] = ()
    consent: str | None = None
    thank_you: str = DEFAULT_THANK_YOU
    captions: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_CAPTIONS))
    panel: PanelSpec = PanelSpec()
    view: ViewSpec = ViewSpec()
    enrolment: EnrolmentSpec = EnrolmentSpec()
    validation: ValidationSpec | None = None

    def session(self, number: int) -> SessionSpec:
        """The session numbered ``number`` (from 1).

        Raises
        ------
        ProtocolError
            If the protocol defines no such session; the message gives the range.
        """
        for spec in self.sessions:
            if spec.number == number:
                return spec
        raise ProtocolError(
            f"--session {number}: protocol '{self.name}' defines session(s) 1..{len(self.sessions)}; "
            f"choose one of them"
        )

    def scale(self, scale_id: str) -> Scale:
        """Return the scale with id ``scale_id``.

        Raises
        ------
        ProtocolError
            If the protocol has no such scale; the message lists the known ones.
        """
        for scale in self.scales:
            if scale.id == scale_id:
                return scale
        known = ", ".join(s.id for s in self.scales)
        raise ProtocolError(
            f"protocol '{self.name}': scales: unknown scale '{scale_id}'; use one of {known}"
        )


def participant_texts(protocol: Protocol) -> list[tuple[str, str]]:
    """Every text a participant may read, as ``(protocol key, text)``, in the order a session shows them.

    The viewer lays each out and checks that its fonts can draw every character; the key names the
    place to fix in an error message.
    """
    texts = []
    if protocol.consent is not None:
        texts.append(("consent", protocol.consent))
    texts.append(("instructions", protocol.instructions))
    texts.append(("ssq.question", protocol.ssq.question))
    texts += [(f"ssq.items[{i}]", item) for i, item in enumerate(protocol.ssq.items)]
    texts += [(f"ssq.labels.{value}", label) for value, label in protocol.ssq.labels.items()]
    if protocol.validation is not None:
        texts.append(("validation.instructions", protocol.validation.instructions))
    texts.append(("training.instructions", protocol.training.instructions))
    texts.append(("breaks.text", protocol.breaks.text))
    for i, scale in enumerate(protocol.scales):
        for j, item in enumerate(scale.items):
            texts.append((f"scales[{i}].items[{j}].question", item.question))
            texts += [(f"scales[{i}].items[{j}].labels.{value}", label) for value, label in item.labels.items()]
    texts.append(("thank_you", protocol.thank_you))
    texts += [(f"captions.{key}", text) for key, text in protocol.captions.items()]
    return texts


def load_protocol(path: str | Path) -> Protocol:
    """Read and validate a protocol TOML file.

    Relative training stimulus paths are resolved against the folder of ``path``.

    Raises
    ------
    ProtocolError
        If the file cannot be read or any part of it is invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProtocolError(f"{path}: file not found; check the path or use {DEFAULT_PROTOCOL}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{path}: cannot be read ({exc}); make it a readable UTF-8 text file") from None
    return parse_protocol(text, source=str(path), base_dir=path.resolve().parent)


def parse_protocol(text: str, source: str = "<string>", *, base_dir: str | Path | None = None,
                   check_files: bool = True) -> Protocol:
    """Validate protocol TOML ``text``; ``source`` names it in error messages.

    Parameters
    ----------
    text : str
        The TOML document.
    source : str
        File name (or another label) used as the first part of every error message.
    base_dir : str or Path, optional
        Folder that relative training stimulus paths are resolved against; the current directory if omitted.
    check_files : bool
        Require the training stimuli to exist. Pass False to re-read a protocol stored in a study database,
        e.g. for analysis on another machine where the image files are not present.

    Raises
    ------
    ProtocolError
        ``"<source>: <key.path>: <what is wrong>; <how to fix it>"`` for the first problem found.
    """
    try:
        doc = tomllib.loads(text)
    except RecursionError:
        raise ProtocolError(f"{source}: document: arrays or tables are nested too deeply; a protocol needs only a "
                            "few levels, check the brackets") from None
    except tomllib.TOMLDecodeError as exc:
        where = _TOML_POSITION.search(str(exc))
        reason = _TOML_POSITION.sub("", str(exc)).strip()
        at = f"line {where.group(1)}, column {where.group(2)}" if where else "document"
        raise ProtocolError(f"{source}: {at}: invalid TOML ({reason}); fix the syntax there") from None
    reader = _Reader(source, Path(base_dir) if base_dir is not None else Path.cwd(), check_files)
    return reader.protocol(doc, text)


class _Reader:
    """Walks the parsed TOML document, keeping the key path for error messages."""

    def __init__(self, source: str, base_dir: Path, check_files: bool):
        self.source = source
        self.base_dir = base_dir
        self.check_files = check_files

    def fail(self, key: str, what: str, fix: str) -> ProtocolError:
        return ProtocolError(f"{self.source}: {key}: {what}; {fix}")

    # -- generic accessors -------------------------------------------------------------------------------

    def array_of_tables(self, doc: dict, key: str, allowed: tuple[str, ...], empty_fix: str) -> list[tuple[str, dict]]:
        """``(path, table)`` of every ``[[key]]`` table, each holding only ``allowed`` keys; at least one."""
        raw = self.get(doc, key, "", list, f"an array of [[{key}]] tables")
        if not raw:
            raise self.fail(key, "is empty", empty_fix)
        found = []
        for i, entry in enumerate(raw):
            path = f"{key}[{i}]"
            if not isinstance(entry, dict):
                raise self.fail(path, f"expected a table, got {_toml_type(entry)}", f"write it as [[{key}]]")
            self.no_unknown(entry, path, allowed)
            found.append((path, entry))
        return found

    def files(self, raw: list, key: str, what: str, kind: str, fix: str) -> list[tuple[str, str]]:
        """``(entry, absolute path)`` of every file a list names, from the protocol's folder; each must exist
        where files are checked."""
        found = []
        for i, entry in enumerate(raw):
            where = f"{key}[{i}]"
            if not isinstance(entry, str) or not entry.strip():
                raise self.fail(where, f"expected {what}, got {_describe(entry)}", "write the path in quotes")
            path = (self.base_dir / entry).resolve()
            if self.check_files and not path.is_file():
                raise self.fail(where, f"{kind} {path} does not exist",
                                f"fix the path (relative paths start at the protocol's folder) or {fix}")
            found.append((entry, str(path)))
        return found

    def table(self, parent: Mapping[str, Any], key: str, path: str, allowed: tuple[str, ...]) -> dict:
        value = self.get(parent, key, path, dict, "a table")
        self.no_unknown(value, _join(path, key), allowed)
        return value

    def no_unknown(self, table: Mapping[str, Any], path: str, allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                fix = (f"did you mean '{close[0]}'?" if close
                       else f"remove it (allowed here: {', '.join(allowed)})")
                raise self.fail(_join(path, key), "unknown key", fix)

    def get(self, parent: Mapping[str, Any], key: str, path: str, kind: type | tuple, what: str,
            default: Any = ...) -> Any:
        full = _join(path, key)
        if key not in parent:
            if default is not ...:
                return default
            fix = f"add a [{full}] table" if what == "a table" else f"add {key} = <{what}>"
            raise self.fail(full, "missing", fix)
        value = parent[key]
        # bool is a subclass of int in Python; a protocol never means true when it says a number.
        if isinstance(value, bool) and bool not in _as_tuple(kind):
            raise self.fail(full, f"expected {what}, got a boolean", f"write {what}")
        if not isinstance(value, kind):
            raise self.fail(full, f"expected {what}, got {_describe(value)}", f"write {what}")
        return value

    def text(self, parent: Mapping[str, Any], key: str, path: str) -> str:
        value = self.get(parent, key, path, str, "a string")
        if not value.strip():
            raise self.fail(_join(path, key), "is empty", "write the text to show")
        # Multi-line TOML strings end with a newline that no panel should show.
        return value.strip()

    def identifier(self, parent: Mapping[str, Any], key: str, path: str) -> str:
        value = self.get(parent, key, path, str, "a string")
        if not _ID.fullmatch(value):
            raise self.fail(_join(path, key), f"'{value}' is not a valid id",
                            "use a letter followed by letters, digits, '_' or '-'")
        return value

    def number(self, parent: Mapping[str, Any], key: str, path: str, default: Any = ...) -> float | None:
        value = self.get(parent, key, path, (int, float), "a number", default)
        if value is None:
            return None
        if not math.isfinite(value):
            raise self.fail(_join(path, key), f"{value} is not a finite number", "write a finite number")
        return float(value)

    def labels(self, raw: Any, path: str, allowed: range, range_fix: str) -> dict[int, str]:
        if not isinstance(raw, dict):
            raise self.fail(path, f"expected a table of value = \"label\", got {_toml_type(raw)}",
                            "write e.g. labels = { 1 = \"Bad\", 5 = \"Excellent\" }")
        if not raw:
            raise self.fail(path, "no labels", "give at least the labels of the lowest and highest value")
        labels: dict[int, str] = {}
        for key, label in raw.items():
            full = _join(path, key)
            try:
                value = int(key)
            except ValueError:
                raise self.fail(full, f"label key '{key}' is not an integer value",
                                "use the rated value as the key, e.g. 5 = \"Excellent\"") from None
            if value not in allowed:
                raise self.fail(full, f"value {value} is outside {allowed.start}..{allowed.stop - 1}", range_fix)
            if value in labels:
                raise self.fail(full, f"value {value} is labelled twice", "keep one label per value")
            if not isinstance(label, str) or not label.strip():
                raise self.fail(full, "label must be a non-empty string", "write the anchor text in quotes")
            labels[value] = label
        return dict(sorted(labels.items()))

    # -- the sections ------------------------------------------------------------------------------------

    def protocol(self, doc: dict, text: str) -> Protocol:
        version = self.get(doc, "schema_version", "", int, "an integer")
        if version > SCHEMA_VERSION:
            raise self.fail("schema_version", f"the file needs schema_version {version}, "
                            f"this panostudy reads up to {SCHEMA_VERSION}", "upgrade panostudy")
        if version < 1:
            raise self.fail("schema_version", f"{version} is not a schema version",
                            f"set schema_version = {SCHEMA_VERSION}")
        self.no_unknown(doc, "", ("schema_version", "name", "version", "seed", "participants", "scenes",
                                  "exposure_s", "pose_rate_hz", "instructions", "training", "breaks", "ssq",
                                  "scales", "consent", "thank_you", "captions", "panel", "view", "sessions",
                                  "enrolment", "validation"))

        seed = self.get(doc, "seed", "", int, "an integer")
        if not 0 <= seed <= MAX_SEED:
            raise self.fail("seed", f"{seed} is outside 0..2**63-1", "use an integer >= 0 below 2**63")
        participants = self.get(doc, "participants", "", int, "an integer")
        if not 1 <= participants <= MAX_PARTICIPANTS:
            raise self.fail("participants", f"{participants} is not a number of participants",
                            f"plan 1..{MAX_PARTICIPANTS} participants")
        exposure = self.number(doc, "exposure_s", "")
        if not exposure > 0:
            raise self.fail("exposure_s", f"{exposure:g} s is not a positive time",
                            "show each stimulus for a positive number of seconds (P.919: 10-30 s)")
        if exposure > MAX_EXPOSURE_S:
            raise self.fail("exposure_s", f"{exposure:g} s is more than {MAX_EXPOSURE_S:g} s",
                            "show each stimulus for at most 10 minutes (P.919: 10-30 s)")
        rate = self.number(doc, "pose_rate_hz", "", 30.0)
        if not 0 < rate <= MAX_POSE_RATE_HZ:
            raise self.fail("pose_rate_hz", f"{rate:g} Hz is outside (0, {MAX_POSE_RATE_HZ:g}]",
                            "use a rate above 0 and at most the headset's 90 Hz frame rate")

        scenes = self.scenes(doc)
        return Protocol(
            schema_version=version,
            name=self.identifier(doc, "name", ""),
            version=self.text(doc, "version", ""),
            seed=seed,
            participants=participants,
            scenes=scenes,
            scales=self.scales(doc),
            exposure_s=exposure,
            pose_rate_hz=rate,
            instructions=self.text(doc, "instructions", ""),
            training=self.training(doc),
            breaks=self.breaks(doc),
            ssq=self.ssq(doc),
            source_text=text,
            sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            sessions=self.sessions(doc, scenes),
            consent=self.text(doc, "consent", "") if "consent" in doc else None,
            thank_you=self.text(doc, "thank_you", "") if "thank_you" in doc else DEFAULT_THANK_YOU,
            captions=self.captions(doc),
            panel=self.panel(doc),
            view=self.view(doc),
            enrolment=self.enrolment(doc),
            validation=self.validation(doc),
        )

    def captions(self, doc: dict) -> dict[str, str]:
        captions = dict(DEFAULT_CAPTIONS)
        if "captions" not in doc:
            return captions
        section = self.table(doc, "captions", "", tuple(DEFAULT_CAPTIONS))
        for key in section:
            text = self.text(section, key, "captions")
            allowed = CAPTION_FIELDS.get(key, ())
            try:
                used = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
            except ValueError as exc:
                raise self.fail(f"captions.{key}", f"braces do not pair up ({exc})",
                                "write {field} for a value, {{ or }} for a brace") from None
            unknown = sorted(used - set(allowed))
            if unknown:
                fix = (f"use only {', '.join('{' + a + '}' for a in allowed)}" if allowed
                       else "this caption takes no {fields}; write {{ or }} for a brace")
                raise self.fail(f"captions.{key}", f"unknown field {{{unknown[0]}}}", fix)
            captions[key] = text
        return captions

    def panel(self, doc: dict) -> PanelSpec:
        if "panel" not in doc:
            return PanelSpec()
        section = self.table(doc, "panel", "", ("question_progress", "fonts"))
        progress = self.get(section, "question_progress", "panel", bool, "true or false", False)
        raw = self.get(section, "fonts", "panel", list, "a list of font file paths", [])
        fonts = self.files(raw, "panel.fonts", "a font file path", "font file", "remove the entry")
        return PanelSpec(question_progress=progress, fonts=tuple(path for _, path in fonts))

    def view(self, doc: dict) -> ViewSpec:
        if "view" not in doc:
            return ViewSpec()
        section = self.table(doc, "view", "", ("start_yaw_deg", "start_yaw", "fov_deg", "window"))
        default_yaw = self.yaw(section, "start_yaw_deg", "view", 0.0)
        per_stimulus = {}
        if "start_yaw" in section:
            table = self.get(section, "start_yaw", "view", dict, "a table of \"stimulus path\" = yaw")
            for key in table:
                if not key.strip():
                    raise self.fail("view.start_yaw", "an empty stimulus path", "name the stimulus, e.g. \"street/0.png\"")
                per_stimulus[key] = self.yaw(table, key, "view.start_yaw", ...)
        fov = self.number(section, "fov_deg", "view", 90.0)
        if not 30.0 <= fov <= 120.0:
            raise self.fail("view.fov_deg", f"{fov:g} degrees is outside 30..120",
                            "use a horizontal field of view between 30 and 120 degrees (90 is usual)")
        window = (1280, 720)
        if "window" in section:
            raw = self.get(section, "window", "view", list, "[width, height] in pixels")
            if (len(raw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
                    or not all(200 <= v <= 16384 for v in raw)):
                raise self.fail("view.window", f"{raw!r} is not a window size",
                                "write [width, height] in pixels, each 200..16384, e.g. [1280, 720]")
            window = (raw[0], raw[1])
        return ViewSpec(start_yaw_deg=default_yaw, start_yaw=per_stimulus, fov_deg=fov, window=window)

    def enrolment(self, doc: dict) -> EnrolmentSpec:
        if "enrolment" not in doc:
            return EnrolmentSpec()
        fields = ("gender", "vision_correction")
        section = self.table(doc, "enrolment", "", ("code_pattern", "code_examples", "age_min", "age_max",
                                                    *fields, *(f"{name}_free_text" for name in fields)))
        pattern = DEFAULT_CODE_PATTERN
        examples: tuple[str, ...] = DEFAULT_CODE_EXAMPLES if "code_pattern" not in section else ()
        if "code_pattern" in section:
            pattern = self.get(section, "code_pattern", "enrolment", str, "a regular expression")
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise self.fail("enrolment.code_pattern", f"{pattern!r} is not a regular expression ({exc})",
                                f"write a Python regular expression, e.g. \"{DEFAULT_CODE_PATTERN}\"") from None
            if compiled.fullmatch("") is not None:
                raise self.fail("enrolment.code_pattern", "matches an empty code",
                                "make at least one character required, e.g. \"[A-Z]{1,8}[0-9]{1,6}\"")
        if "code_examples" in section:
            raw = self.get(section, "code_examples", "enrolment", list, "a list of example codes")
            for i, example in enumerate(raw):
                if not isinstance(example, str) or not re.fullmatch(pattern, example):
                    raise self.fail(f"enrolment.code_examples[{i}]", f"{_describe(example)} does not match the code "
                                    f"pattern {pattern}", "give codes the pattern accepts, or fix the pattern")
            examples = tuple(raw)
        low = self.get(section, "age_min", "enrolment", int, "an integer", DEFAULT_AGE_RANGE[0])
        high = self.get(section, "age_max", "enrolment", int, "an integer", DEFAULT_AGE_RANGE[1])
        if not 0 <= low <= MAX_AGE:
            raise self.fail("enrolment.age_min", f"{low} is not an age in years", f"use an age in 0..{MAX_AGE}, e.g. 18")
        if not low <= high <= MAX_AGE:
            raise self.fail("enrolment.age_max", f"{high} is not an age in years from age_min {low} on",
                            f"use an age in {low}..{MAX_AGE}, e.g. 99")
        chosen = {}
        for name, default in zip(fields, (DEFAULT_GENDERS, DEFAULT_VISION_CORRECTIONS)):
            choices = self.get(section, name, "enrolment", list, "a list of the values to choose from", list(default))
            for i, choice in enumerate(choices):
                if not isinstance(choice, str) or not choice.strip() or len(choice) > MAX_FREE_TEXT:
                    raise self.fail(f"enrolment.{name}[{i}]", f"expected a choice, got {_describe(choice)}",
                                    f"write each choice as a non-empty string of at most {MAX_FREE_TEXT} characters")
                if choices.index(choice) != i:
                    raise self.fail(f"enrolment.{name}[{i}]", f"{choice!r} is listed twice", "list each choice once")
            free = self.get(section, f"{name}_free_text", "enrolment", bool, "true or false", False)
            if not choices and not free:
                raise self.fail(f"enrolment.{name}", "no choices and no free text",
                                f"list the choices, or set {name}_free_text = true")
            chosen[name] = DemographicField(tuple(choices), free)
        return EnrolmentSpec(code_pattern=pattern, code_examples=examples, age_min=low, age_max=high, **chosen)

    def validation(self, doc: dict) -> ValidationSpec | None:
        if "validation" not in doc:
            return None
        section = self.table(doc, "validation", "", ("targets", "spread_deg", "target_s", "discard_s",
                                                     "threshold_deg", "instructions"))
        if "targets" in section and "spread_deg" in section:
            raise self.fail("validation.spread_deg", "goes with the default 3 x 3 grid, but targets are listed too",
                            "keep one of targets and spread_deg")
        if "targets" in section:
            raw = self.get(section, "targets", "validation", list, "a list of [yaw_deg, pitch_deg] pairs")
            if len(raw) > MAX_VALIDATION_TARGETS:
                raise self.fail("validation.targets", f"has {len(raw)} targets",
                                f"list at most {MAX_VALIDATION_TARGETS} (9 is usual: a 3 x 3 grid)")
            targets = check_targets(raw, where=f"{self.source}: validation.targets")
        else:
            spread = self.number(section, "spread_deg", "validation", DEFAULT_SPREAD_DEG)
            if not 0 < spread <= MAX_TARGET_DEG / 2:
                raise self.fail("validation.spread_deg", f"{spread:g} degrees is outside (0, {MAX_TARGET_DEG / 2:g}]",
                                "give the grid's half-width in degrees, e.g. 15")
            targets = grid_targets(spread)
        low, high = VALIDATION_TARGET_S
        target_s = self.number(section, "target_s", "validation", DEFAULT_TARGET_S)
        if not low <= target_s <= high:
            raise self.fail("validation.target_s", f"{target_s:g} s is outside {low:g}..{high:g} s",
                            "show each target for 0.5..10 s (1.5 is usual)")
        discard = self.number(section, "discard_s", "validation", min(DEFAULT_DISCARD_S, target_s / 2))
        if not 0 <= discard < target_s:
            raise self.fail("validation.discard_s", f"{discard:g} s is not within 0..target_s ({target_s:g} s)",
                            "discard less than the target is shown (0.5 s of 1.5 s is usual)")
        threshold = self.number(section, "threshold_deg", "validation", None)
        if threshold is not None and not 0 < threshold <= MAX_VALIDATION_THRESHOLD_DEG:
            raise self.fail("validation.threshold_deg", f"{threshold:g} degrees is outside (0, "
                            f"{MAX_VALIDATION_THRESHOLD_DEG:g}]", "give the worst acceptable accuracy, e.g. 1.5, or "
                            "leave the key out")
        instructions = (self.text(section, "instructions", "validation") if "instructions" in section
                        else DEFAULT_VALIDATION_INSTRUCTIONS)
        return ValidationSpec(targets=targets, target_s=target_s, discard_s=discard, threshold_deg=threshold,
                              instructions=instructions)

    def yaw(self, parent: Mapping[str, Any], key: str, path: str, default: Any) -> float:
        value = self.number(parent, key, path, default)
        if not -180.0 <= value <= 180.0:
            raise self.fail(_join(path, f'"{key}"' if path == "view.start_yaw" else key),
                            f"{value:g} degrees is outside -180..180", "give the yaw in degrees, -180..180 (0 = image centre)")
        return value

    def sessions(self, doc: dict, scenes: tuple[str, ...]) -> tuple[SessionSpec, ...]:
        if "sessions" not in doc:
            return (SessionSpec(number=1, name="Session 1", scenes=scenes),)
        specs: list[SessionSpec] = []
        for i, (path, entry) in enumerate(self.array_of_tables(
                doc, "sessions", ("name", "scenes", "training", "ssq"),
                "define at least one [[sessions]] table, or leave the key out for one session")):
            name = self.text(entry, "name", path) if "name" in entry else f"Session {i + 1}"
            chosen = self.get(entry, "scenes", path, list, "a list of scene names", list(scenes))
            if not chosen:
                raise self.fail(_join(path, "scenes"), "is empty", "list the scenes this session shows")
            for j, scene in enumerate(chosen):
                if scene not in scenes:
                    raise self.fail(f"{path}.scenes[{j}]", f"{_describe(scene)} is not one of the protocol's scenes",
                                    f"use one of {', '.join(scenes)}")
                if chosen.index(scene) != j:
                    raise self.fail(f"{path}.scenes[{j}]", f"scene '{scene}' is listed twice", "list each scene once")
            specs.append(SessionSpec(
                number=i + 1, name=name, scenes=tuple(chosen),
                training=self.get(entry, "training", path, bool, "true or false", True),
                ssq=self.get(entry, "ssq", path, bool, "true or false", True),
            ))
        shown = {scene for spec in specs for scene in spec.scenes}
        for scene in scenes:
            if scene not in shown:
                raise self.fail("sessions", f"no session shows scene '{scene}'",
                                "add it to the scenes of one of the [[sessions]]")
        return tuple(specs)

    def scenes(self, doc: dict) -> tuple[str, ...]:
        raw = self.get(doc, "scenes", "", list, "a list of scene names")
        if not raw:
            raise self.fail("scenes", "is empty", "list the scene names, e.g. scenes = [\"indoor\", \"street\"]")
        scenes: list[str] = []
        for i, name in enumerate(raw):
            if not isinstance(name, str) or not _ID.fullmatch(name):
                raise self.fail(f"scenes[{i}]", f"{_describe(name)} is not a valid scene name",
                                "use a letter followed by letters, digits, '_' or '-'")
            if name in scenes:
                raise self.fail(f"scenes[{i}]", f"scene '{name}' is listed twice", "list each scene once")
            scenes.append(name)
        return tuple(scenes)

    def scales(self, doc: dict) -> tuple[Scale, ...]:
        scales: list[Scale] = []
        for path, entry in self.array_of_tables(doc, "scales", ("id", "name", "min", "max", "items"),
                                                "define at least one [[scales]] table"):
            scale_id = self.identifier(entry, "id", path)
            if any(s.id == scale_id for s in scales):
                raise self.fail(_join(path, "id"), f"scale '{scale_id}' is defined twice", "give each scale its own id")
            low = self.get(entry, "min", path, int, "an integer")
            high = self.get(entry, "max", path, int, "an integer")
            for key, value in (("min", low), ("max", high)):
                if not -MAX_SCALE_VALUE <= value <= MAX_SCALE_VALUE:
                    raise self.fail(_join(path, key), f"{value} is outside -{MAX_SCALE_VALUE}..{MAX_SCALE_VALUE}",
                                    f"use scale values within -{MAX_SCALE_VALUE}..{MAX_SCALE_VALUE} (e.g. 1..5)")
            if low >= high:
                raise self.fail(_join(path, "min"), f"min {low} is not below max {high}", "make min < max")
            if high - low + 1 > MAX_SCALE_POINTS:
                raise self.fail(
                    _join(path, "max"), f"{low}..{high} has {high - low + 1} points; the rating panel shows at most "
                    f"{MAX_SCALE_POINTS} buttons", f"use at most {MAX_SCALE_POINTS} points (e.g. 0..10)"
                )
            scales.append(Scale(id=scale_id, name=self.text(entry, "name", path), min=low, max=high,
                                items=self.items(entry, path, range(low, high + 1))))
        return tuple(scales)

    def items(self, scale: dict, path: str, values: range) -> tuple[ScaleItem, ...]:
        raw = self.get(scale, "items", path, list, "an array of [[scales.items]] tables")
        if not raw:
            raise self.fail(_join(path, "items"), "is empty", "define at least one [[scales.items]] table")
        items: list[ScaleItem] = []
        for j, entry in enumerate(raw):
            item_path = f"{path}.items[{j}]"
            if not isinstance(entry, dict):
                raise self.fail(item_path, f"expected a table, got {_toml_type(entry)}",
                                "write it as [[scales.items]]")
            self.no_unknown(entry, item_path, ("id", "question", "labels"))
            item_id = self.identifier(entry, "id", item_path)
            if any(it.id == item_id for it in items):
                raise self.fail(_join(item_path, "id"), f"item '{item_id}' appears twice in this scale",
                                "give each item of a scale its own id")
            if "labels" not in entry:
                raise self.fail(_join(item_path, "labels"), "item has no labels",
                                f"add labels = {{ {values.start} = \"...\", {values.stop - 1} = \"...\" }}")
            labels = self.labels(entry["labels"], _join(item_path, "labels"), values,
                                 "label only values the scale can take, or widen its min/max")
            for end in (values.start, values.stop - 1):
                if end not in labels:
                    raise self.fail(_join(item_path, "labels"), f"no label for the end value {end}",
                                    "label at least both ends of the scale")
            items.append(ScaleItem(id=item_id, question=self.text(entry, "question", item_path), labels=labels))
        return tuple(items)

    def training(self, doc: dict) -> Training:
        section = self.table(doc, "training", "", ("stimuli", "instructions"))
        raw = self.get(section, "stimuli", "training", list, "a list of image paths")
        stimuli: list[str] = []
        for i, (entry, path) in enumerate(self.files(raw, "training.stimuli", "an image path", "training stimulus",
                                                     "add the file")):
            if path in stimuli:
                raise self.fail(f"training.stimuli[{i}]", f"{entry} is listed twice", "list each training stimulus once")
            stimuli.append(path)
        return Training(stimuli=tuple(stimuli), instructions=self.text(section, "instructions", "training"))

    def breaks(self, doc: dict) -> BreakRule:
        section = self.table(doc, "breaks", "", ("every_trials", "every_minutes", "min_duration_s", "text"))
        every_trials = self.get(section, "every_trials", "breaks", int, "an integer", None)
        if every_trials is not None and not 1 <= every_trials <= MAX_BREAK_EVERY:
            raise self.fail("breaks.every_trials", f"{every_trials} is not a trial count",
                            f"use an integer in 1..{MAX_BREAK_EVERY}, or leave the key out for no count-based breaks")
        every_minutes = self.number(section, "every_minutes", "breaks", None)
        if every_minutes is not None and not 0 < every_minutes <= MAX_BREAK_EVERY_MINUTES:
            raise self.fail("breaks.every_minutes", f"{every_minutes:g} is not a time in (0, 600] minutes",
                            "use minutes in (0, 600], or leave the key out for no time-based breaks")
        minimum = self.number(section, "min_duration_s", "breaks")
        if not 0 <= minimum <= MAX_BREAK_S:
            raise self.fail("breaks.min_duration_s", f"{minimum:g} s is outside 0..{MAX_BREAK_S:g} s",
                            "use seconds >= 0, at most an hour")
        return BreakRule(every_trials=every_trials, every_minutes=every_minutes, min_duration_s=minimum,
                         text=self.text(section, "text", "breaks"))

    def ssq(self, doc: dict) -> SsqSpec:
        section = self.table(doc, "ssq", "", ("items", "labels", "question", "before", "after"))
        raw = self.get(section, "items", "ssq", list, "a list of 16 symptom names")
        if len(raw) != SSQ_ITEM_COUNT:
            raise self.fail("ssq.items", f"has {len(raw)} items, the SSQ has {SSQ_ITEM_COUNT}",
                            "list the 16 symptoms in the order of Kennedy et al. (1993)")
        for i, symptom in enumerate(raw):
            if not isinstance(symptom, str) or not symptom.strip():
                raise self.fail(f"ssq.items[{i}]", f"expected a symptom name, got {_describe(symptom)}",
                                "write the symptom in quotes")
        if "labels" not in section:
            raise self.fail("ssq.labels", "missing", "add labels = { 0 = \"None\", 1 = \"Slight\", "
                            "2 = \"Moderate\", 3 = \"Severe\" }")
        labels = self.labels(section["labels"], "ssq.labels", range(SSQ_VALUES[0], SSQ_VALUES[-1] + 1),
                             "SSQ answers are 0..3 (zero-based, Kennedy et al. 1993)")
        if tuple(labels) != SSQ_VALUES:
            raise self.fail("ssq.labels", f"has labels for {list(labels)}, the SSQ needs 0, 1, 2, 3",
                            "label 0 None, 1 Slight, 2 Moderate, 3 Severe (zero-based)")
        return SsqSpec(items=tuple(raw), labels=labels, question=self.text(section, "question", "ssq"),
                       before=self.get(section, "before", "ssq", bool, "true or false"),
                       after=self.get(section, "after", "ssq", bool, "true or false"))


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _as_tuple(kind: type | tuple) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _describe(value: object) -> str:
    """Type and (short) value for an error line; tables and arrays by type only, to keep it one line."""
    if isinstance(value, (dict, list)):
        return _toml_type(value)
    shown = repr(value)
    return f"{_toml_type(value)} {shown if len(shown) <= 40 else shown[:37] + '...'}"


def _toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
             dict: "a table"}
    return names.get(type(value), type(value).__name__)
