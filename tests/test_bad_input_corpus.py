"""A corpus of bad inputs at every door of the ``panostudy`` command.

Each case runs one command line against a fresh copy of a small study (a protocol, stimuli, a study
database with one finished and one enrolled participant). Every case must end with exit code 2 and
exactly one stderr line that holds the case's fragments, no traceback, and nothing written or changed:
every file under the case's folder is hashed before and after, and every row of every SQLite database
in it is read (read-only, ``immutable``) and compared.

To add a case, add a row to :data:`CASES`: an id, the command line (``{db}``, ``{tmp}``, ``{protocol}`` and
``{stimuli}`` are filled in), the fragments the error line must contain, and optionally a ``setup(tmp)``
that writes the bad input first.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from panostudy.cli import app

STUDY_KIT = Path(__file__).resolve().parent / "study"


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    fragments: tuple[str, ...]
    setup: Callable[[Path], None] | None = None


# -- inputs the cases write ---------------------------------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` × ``height`` but that holds no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def panorama(path: Path, width: int = 64, height: int = 32, seed: int = 500) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)).save(path)


def write(relative: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")

    return setup


def image(relative: str, **options) -> Callable[[Path], None]:
    return lambda tmp: panorama(tmp / relative, **options)


def float_tiff(relative: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((32, 64), np.float32)).save(tmp / relative)

    return setup


def header(relative: str, width: int, height: int) -> Callable[[Path], None]:
    return write(relative, png_header(width, height))


def protocol_with(old: str, new: str) -> Callable[[Path], None]:
    """A copy of the study's protocol as bad.toml, with one line changed."""

    def setup(tmp: Path) -> None:
        text = (tmp / "tiny.toml").read_text(encoding="utf-8")
        assert old in text, old
        (tmp / "bad.toml").write_text(text.replace(old, new, 1), encoding="utf-8")

    return setup


def protocol_plus(extra: str) -> Callable[[Path], None]:
    """A copy of the study's protocol as bad.toml, with ``extra`` added at its end."""

    def setup(tmp: Path) -> None:
        (tmp / "bad.toml").write_text((tmp / "tiny.toml").read_text(encoding="utf-8") + extra, encoding="utf-8")

    return setup


def jsonl(relative: str, *entries: object) -> Callable[[Path], None]:
    return write(relative, "".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in entries))


def symlink(relative: str, target: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        link = tmp / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)

    return setup


def both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for step in setups:
            step(tmp)

    return setup


def foreign_db(tmp: Path) -> None:
    connection = sqlite3.connect(tmp / "theirs.db")
    connection.execute("CREATE TABLE contacts (name TEXT)")
    connection.commit()
    connection.close()


def study_change(sql: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        connection = sqlite3.connect(tmp / "study.sqlite")
        connection.execute(sql)
        connection.commit()
        connection.close()

    return setup


def truncated_copy(tmp: Path) -> None:
    data = (tmp / "study.sqlite").read_bytes()
    (tmp / "cut.sqlite").write_bytes(data[: len(data) // 2 + 100])


def answers_csv(transform: Callable[[str], str]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        text = (tmp / "answers.csv").read_text(encoding="utf-8")
        (tmp / "bad.csv").write_text(transform(text), encoding="utf-8")

    return setup


def replace_cell(column: str, value: str) -> Callable[[str], str]:
    def transform(text: str) -> str:
        lines = text.splitlines()
        names = lines[0].split(",")
        cells = lines[1].split(",")
        cells[names.index(column)] = value
        return "\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n"

    return transform


def driver(name: str, content: str) -> Callable[[Path], None]:
    return write(name, content)


DEEP_TOML = "a = " + "[" * 1200 + "]" * 1200 + "\n"
DEEP_TABLES = "a = " + "{ b = " * 600 + "1" + " }" * 600 + "\n"
RUN = ("session", "run", "--db", "{db}", "--backend", "none")
P02 = ("--participant", "P02")
INIT = ("study", "init", "--db", "{tmp}/new.sqlite", "--protocol")
IMPORT = ("study", "import-stimuli", "--db", "{db}")
INFO = ("study", "info", "--db")
EXPORT = ("study", "export", "--db", "{db}")
ANALYZE = ("analyze", "--out", "{tmp}/report", "--answers")
REPLAY = ("replay", "--db", "{db}", "--participant", "P01", "--out", "{tmp}/r.gif")
VIEW = ("view", "{stimuli}/street/0.png", "--backend", "headless", "--out", "{tmp}/v.png")

CASES = [
    # -- command-line usage: click/Typer errors are one line too ---------------------------------------------
    Case("age-not-a-number", ("study", "add-participant", "--db", "{db}", "--code", "P09", "--age", "abc"),
         ("add-participant", "'--age'", "valid integer", "--help")),
    Case("code-missing", ("study", "add-participant", "--db", "{db}"), ("Missing option '--code'",)),
    Case("unknown-option", ("study", "add-participant", "--db", "{db}", "--code", "P09", "--bogus", "1"),
         ("No such option", "--bogus")),
    Case("screening-unknown", ("analyze", "--db", "{db}", "--screening", "bogus"), ("'--screening'", "'bogus'")),
    Case("db-missing-init", ("study", "init",), ("Missing option '--db'",)),
    Case("unknown-command", ("studdy",), ("No such command 'studdy'",)),
    Case("unknown-subcommand", ("study", "frobnicate"), ("No such command 'frobnicate'",)),
    Case("simulate-not-a-number", (*RUN, *P02, "--simulate", "abc"), ("'--simulate'", "valid integer")),
    Case("pace-negative", (*RUN, *P02, "--simulate", "1", "--pace", "-1"), ("--pace -1", "0..60")),
    Case("pace-nan", (*RUN, *P02, "--simulate", "1", "--pace", "nan"), ("--pace nan",)),
    Case("pace-inf", (*RUN, *P02, "--simulate", "1", "--pace", "inf"), ("--pace inf",)),
    Case("pace-text", (*RUN, *P02, "--simulate", "1", "--pace", "soon"), ("'--pace'", "valid number")),
    Case("export-out-missing", EXPORT, ("Missing option '--out'",)),
    Case("view-width-text", (*VIEW, "--width", "wide"), ("'--width'", "valid integer")),
    Case("view-yaw-nan", (*VIEW, "--yaw", "nan"), ("--yaw nan", "finite")),
    Case("view-yaw-inf", (*VIEW, "--yaw", "inf"), ("--yaw inf",)),
    Case("view-fov-zero", (*VIEW, "--fov", "0"), ("--fov 0", "1..179")),
    Case("view-pitch-high", (*VIEW, "--pitch", "100"), ("--pitch 100",)),
    Case("view-pitch-nan", (*VIEW, "--pitch", "nan"), ("--pitch nan",)),
    Case("view-backend-unknown", ("view", "{stimuli}/street/0.png", "--backend", "holodeck"), ("--backend 'holodeck'",)),
    Case("age-zero", ("study", "add-participant", "--db", "{db}", "--code", "P09", "--age", "0"), ("--age 0",)),
    Case("age-200", ("study", "add-participant", "--db", "{db}", "--code", "P09", "--age", "200"), ("--age 200",)),
    Case("backend-unknown", ("session", "run", "--db", "{db}", *P02, "--backend", "holodeck", "--simulate", "1"),
         ("--backend 'holodeck' is unknown",)),
    Case("driver-and-simulate", (*RUN, *P02, "--simulate", "1", "--driver", "{tmp}/a.csv"),
         ("--driver and --simulate exclude each other",), driver("a.csv", "key,value\nssq/pre/1,0\n")),
    Case("nobody-answers", (*RUN, *P02), ("--backend none has nobody to answer",)),
    Case("delete-without-yes", ("study", "delete-participant", "--db", "{db}", "--code", "P02"), ("--yes",)),
    Case("analyze-db-and-answers", ("analyze", "--db", "{db}", "--answers", "{tmp}/answers.csv"), ("exactly one of --db",)),
    Case("analyze-neither", ("analyze",), ("exactly one of --db",)),
    Case("analyze-db-with-ssq", ("analyze", "--db", "{db}", "--ssq", "{tmp}/ssq.csv"), ("--ssq, --poses and --protocol go with --answers",)),
    # -- participants and sessions ---------------------------------------------------------------------------
    Case("code-email", ("study", "add-participant", "--db", "{db}", "--code", "jane.doe@example.org"), ("is invalid", "pseudonym")),
    Case("code-empty", ("study", "add-participant", "--db", "{db}", "--code", ""), ("is invalid",)),
    Case("code-too-long", ("study", "add-participant", "--db", "{db}", "--code", "P" * 40), ("is invalid",)),
    Case("code-taken", ("study", "add-participant", "--db", "{db}", "--code", "P01"), ("'P01' is already enrolled",)),
    Case("participant-unknown", (*RUN, "--participant", "NOPE1", "--simulate", "1"), ("'NOPE1' is not enrolled",)),
    Case("resume-without-session", ("session", "resume", "--db", "{db}", *P02, "--backend", "none", "--simulate", "1"),
         ("'P02' has no session yet",)),
    Case("withdraw-completed", ("session", "withdraw", "--db", "{db}", "--participant", "P01"), ("already completed",)),
    Case("run-twice", (*RUN, "--participant", "P01", "--simulate", "1"), ("'P01' has done all 1 session(s)", "nothing more to run")),
    Case("session-unknown", (*RUN, "--participant", "P02", "--simulate", "1", "--session", "3"),
         ("--session 3", "defines session(s) 1..1")),
    Case("station-unsafe", (*RUN, "--participant", "P02", "--simulate", "1", "--station", "lab pc/1"),
         ("--station 'lab pc/1' is not a station name",)),
    Case("delete-unknown", ("study", "delete-participant", "--db", "{db}", "--code", "NOPE1", "--yes"), ("'NOPE1' is not enrolled",)),
    # -- protocol TOML -----------------------------------------------------------------------------------------
    Case("toml-deep-arrays", (*INIT, "{tmp}/bad.toml"), ("bad.toml", "nested too deeply"), write("bad.toml", DEEP_TOML)),
    Case("toml-deep-tables", (*INIT, "{tmp}/bad.toml"), ("bad.toml", "nested too deeply"), write("bad.toml", DEEP_TABLES)),
    Case("seed-2-64", (*INIT, "{tmp}/bad.toml"), ("bad.toml: seed:", "2**63"), protocol_with("seed = 11", "seed = 18446744073709551616")),
    Case("seed-negative", (*INIT, "{tmp}/bad.toml"), ("bad.toml: seed:",), protocol_with("seed = 11", "seed = -1")),
    Case("seed-text", (*INIT, "{tmp}/bad.toml"), ("bad.toml: seed:", "expected an integer"), protocol_with("seed = 11", 'seed = "eleven"')),
    Case("scale-min-float", (*INIT, "{tmp}/bad.toml"), ("scales[0].min", "expected an integer"), protocol_with("min = 1", "min = 1e20")),
    Case("scale-min-huge", (*INIT, "{tmp}/bad.toml"), ("scales[0].min", "-1000..1000"),
         protocol_with("min = 1", "min = -100000000000000000000")),
    Case("scale-max-huge", (*INIT, "{tmp}/bad.toml"), ("scales[0].max", "-1000..1000"), protocol_with("max = 5", "max = 99999999999")),
    Case("scale-reversed", (*INIT, "{tmp}/bad.toml"), ("scales[0].min", "not below max"), protocol_with("min = 1", "min = 7")),
    Case("exposure-1e300", (*INIT, "{tmp}/bad.toml"), ("bad.toml: exposure_s:", "at most 10 minutes"),
         protocol_with("exposure_s = 5.0", "exposure_s = 1e300")),
    Case("exposure-inf", (*INIT, "{tmp}/bad.toml"), ("exposure_s", "finite"), protocol_with("exposure_s = 5.0", "exposure_s = inf")),
    Case("exposure-nan", (*INIT, "{tmp}/bad.toml"), ("exposure_s", "finite"), protocol_with("exposure_s = 5.0", "exposure_s = nan")),
    Case("exposure-negative", (*INIT, "{tmp}/bad.toml"), ("exposure_s", "not a positive time"),
         protocol_with("exposure_s = 5.0", "exposure_s = -5")),
    Case("pose-rate-zero", (*INIT, "{tmp}/bad.toml"), ("pose_rate_hz", "outside (0, 90]"),
         protocol_with("pose_rate_hz = 10.0", "pose_rate_hz = 0")),
    Case("pose-rate-1000", (*INIT, "{tmp}/bad.toml"), ("pose_rate_hz", "outside (0, 90]"),
         protocol_with("pose_rate_hz = 10.0", "pose_rate_hz = 1000")),
    Case("participants-zero", (*INIT, "{tmp}/bad.toml"), ("participants",), protocol_with("participants = 4", "participants = 0")),
    Case("participants-billion", (*INIT, "{tmp}/bad.toml"), ("participants", "1..100000"),
         protocol_with("participants = 4", "participants = 1000000000")),
    Case("break-min-huge", (*INIT, "{tmp}/bad.toml"), ("breaks.min_duration_s",),
         protocol_with("min_duration_s = 30.0", "min_duration_s = 1e9")),
    Case("break-minutes-negative", (*INIT, "{tmp}/bad.toml"), ("breaks.every_minutes",),
         protocol_with("every_trials = 2", "every_minutes = -1")),
    Case("break-trials-zero", (*INIT, "{tmp}/bad.toml"), ("breaks.every_trials",), protocol_with("every_trials = 2", "every_trials = 0")),
    Case("toml-syntax", (*INIT, "{tmp}/bad.toml"), ("bad.toml", "invalid TOML"), write("bad.toml", "name = [\n")),
    Case("toml-typo", (*INIT, "{tmp}/bad.toml"), ("scales[0].items[0].questoin", "did you mean 'question'"),
         protocol_with('question = "Overall quality?"', 'questoin = "Overall quality?"')),
    Case("protocol-missing", (*INIT, "{tmp}/nothing.toml"), ("nothing.toml: file not found",)),
    Case("protocol-is-folder", (*INIT, "{stimuli}"), ("stimuli", "cannot be read"),),
    Case("protocol-binary", (*INIT, "{tmp}/bad.toml"), ("bad.toml", "UTF-8"), write("bad.toml", b"\xff\xfe\x00bad")),
    Case("protocol-empty", (*INIT, "{tmp}/bad.toml"), ("bad.toml: schema_version: missing",), write("bad.toml", "")),
    Case("label-outside-scale", (*INIT, "{tmp}/bad.toml"), ("labels.9", "outside 1..5"),
         protocol_with('5 = "Excellent"', '9 = "Excellent"')),
    Case("scene-twice", (*INIT, "{tmp}/bad.toml"), ("scenes[1]", "listed twice"),
         protocol_with('scenes = ["street", "indoor"]', 'scenes = ["street", "street"]')),
    Case("training-missing", (*INIT, "{tmp}/bad.toml"), ("training.stimuli[0]", "does not exist"),
         protocol_with('stimuli = ["train.png"]', 'stimuli = ["gone.png"]')),
    # -- images ------------------------------------------------------------------------------------------------
    Case("png-30000", (*IMPORT, "{tmp}/big"), ("huge.png", "30000x15000 is too large to decode"), header("big/street/huge.png", 30000, 15000)),
    Case("png-16000", (*IMPORT, "{tmp}/big"), ("huge.png", "16000x8000 exceeds 8192x4096", "--downscale-into"),
         header("big/street/huge.png", 16000, 8000)),
    Case("png-16000-downscaled-header-only", (*IMPORT, "{tmp}/big", "--downscale-into", "{tmp}/small"),
         ("huge.png", "unreadable image"), header("big/street/huge.png", 16000, 8000)),
    Case("not-2-to-1", (*IMPORT, "{tmp}/odd"), ("wide.png", "96x32 is not 2:1"), image("odd/street/wide.png", width=96)),
    Case("png-garbage", (*IMPORT, "{tmp}/odd"), ("x.png", "unreadable image"), write("odd/street/x.png", b"\x89PNG broken")),
    Case("png-truncated", (*IMPORT, "{tmp}/odd"), ("cut.png", "unreadable image"),
         both(image("odd/street/cut.png"), lambda tmp: (tmp / "odd/street/cut.png").write_bytes(
             (tmp / "odd/street/cut.png").read_bytes()[:300]))),
    Case("image-too-small", (*IMPORT, "{tmp}/odd"), ("small.png", "too small"), image("odd/street/small.png", width=16, height=8)),
    Case("scene-unknown", (*IMPORT, "{tmp}/beach"), ("scene 'beach'", "--scene"), image("beach/beach/a.png")),
    Case("image-loose", (*IMPORT, "{tmp}/loose"), ("a.png", "outside a scene sub-folder"), image("loose/a.png")),
    Case("folder-empty", (*IMPORT, "{tmp}/empty"), ("empty", "no images"), write("empty/street/readme.txt", "nothing")),
    Case("image-float", (*IMPORT, "{tmp}/odd"), ("f.tif", "image mode F"), float_tiff("odd/street/f.tif")),
    Case("image-two-scenes-manifest", (*IMPORT, "{tmp}/m.jsonl"), ("m.jsonl:2", "under scene 'indoor' here and under 'street'"),
         both(image("gen/a.png"), jsonl("m.jsonl", {"path": "gen/a.png", "scene": "street"}, {"path": "gen/a.png", "scene": "indoor"}))),
    Case("image-two-scenes-copy", (*IMPORT, "{tmp}/twins"), ("same image (identical content)", "under scene"),
         both(image("twins/street/a.png", seed=7), image("twins/indoor/a.png", seed=7))),
    Case("image-already-other-scene", (*IMPORT, "{stimuli}", "--scene", "indoor"), ("is in the study under scene 'street' already",)),
    Case("image-changed", (*IMPORT, "{stimuli}"), ("0.png", "changed since it was imported"), image("stimuli/street/0.png", seed=77)),
    Case("source-missing", (*IMPORT, "{tmp}/nowhere"), ("nowhere: no such folder",)),
    Case("source-not-jsonl", (*IMPORT, "{tmp}/list.txt"), ("list.txt", "not a folder or a .jsonl manifest"), write("list.txt", "a.png\n")),
    Case("symlink-loop-folder", (*IMPORT, "{tmp}/links"), ("loop.png", "symbolic link loop"), symlink("links/street/loop.png", "loop.png")),
    Case("symlink-dangling", (*IMPORT, "{tmp}/links"), ("gone.png", "symbolic link to a missing file"),
         symlink("links/street/gone.png", "nowhere.png")),
    # -- manifests ---------------------------------------------------------------------------------------------
    Case("manifest-nul", (*IMPORT, "{tmp}/m.jsonl"), ("m.jsonl:1", "NUL byte"), jsonl("m.jsonl", {"path": "a\u0000.png", "scene": "street"})),
    Case("manifest-symlink-loop", (*IMPORT, "{tmp}/m.jsonl"), ("m.jsonl:1", "symbolic link loop"),
         both(symlink("loop.png", "loop.png"), jsonl("m.jsonl", {"path": "loop.png", "scene": "street"}))),
    Case("manifest-bad-json", (*IMPORT, "{tmp}/m.jsonl"), ("m.jsonl:1", "invalid JSON"), write("m.jsonl", "{path: a.png}\n")),
    Case("manifest-not-object", (*IMPORT, "{tmp}/m.jsonl"), ("m.jsonl:1", "expected a JSON object"), jsonl("m.jsonl", ["a.png", "street"])),
    Case("manifest-no-scene", (*IMPORT, "{tmp}/m.jsonl"), ("m.jsonl:1", "'scene' is missing"), jsonl("m.jsonl", {"path": "a.png"})),
    Case("manifest-deep", (*IMPORT, "{tmp}/m.jsonl"), ("m.jsonl:1", "nested too deeply"), write("m.jsonl", "[" * 100000 + "\n")),
    Case("manifest-empty", (*IMPORT, "{tmp}/m.jsonl"), ("m.jsonl", "names no images"), write("m.jsonl", "\n\n")),
    Case("manifest-file-missing", (*IMPORT, "{tmp}/m.jsonl"), ("gone.png", "m.jsonl:1", "not found"),
         jsonl("m.jsonl", {"path": "gone.png", "scene": "street"})),
    Case("manifest-not-utf8", (*IMPORT, "{tmp}/m.jsonl"), ("m.jsonl", "cannot read the manifest"), write("m.jsonl", b"\xff\xfe{}")),
    # -- databases ---------------------------------------------------------------------------------------------
    Case("db-absent", (*INFO, "{tmp}/none.sqlite"), ("none.sqlite", "study init")),
    Case("db-empty-file", (*INFO, "{tmp}/zero.sqlite"), ("zero.sqlite", "the file is empty"), write("zero.sqlite", b"")),
    Case("db-foreign", (*INFO, "{tmp}/theirs.db"), ("theirs.db", "not a panostudy study database"), foreign_db),
    Case("db-text", (*INFO, "{tmp}/notes.sqlite"), ("notes.sqlite", "not a SQLite database"), write("notes.sqlite", "P01,3\n" * 30)),
    Case("db-truncated", (*INFO, "{tmp}/cut.sqlite"), ("cut.sqlite", "truncated or damaged"), truncated_copy),
    Case("db-missing-table", (*INFO, "{db}"), ("table 'event' is missing",), study_change("DROP TABLE event")),
    Case("db-newer-version", (*INFO, "{db}"), ("schema_info.version is 99", "upgrade panostudy"),
         study_change("UPDATE schema_info SET version = 99")),
    Case("db-no-study-row", (*INFO, "{db}"), ("holds no study",), study_change("DELETE FROM study")),
    Case("db-unknown-kind", (*INFO, "nosuchdb://x/y"), ("unknown database kind 'nosuchdb'",)),
    Case("db-driver-missing", (*INFO, "postgresql+psycopg2://lab:hunter2@127.0.0.1/x"),
         ("not installed (psycopg2)", "panostudy[postgres]", "lab:***@")),
    Case("db-url-garbage", (*INFO, "://x"), ("not a database URL",)),
    Case("db-server-down", (*INFO, "postgresql://lab:hunter2@127.0.0.1:1/x"), ("cannot reach the database server", "lab:***@")),
    Case("db-is-folder", (*INFO, "{stimuli}"), ("stimuli: not a file",)),
    Case("init-over-existing", (*INIT[:3], "{db}", "--protocol", "{protocol}"), ("a file already exists there",)),
    Case("init-missing-folder", ("study", "init", "--db", "{tmp}/no/such/study.sqlite", "--protocol", "{protocol}"),
         ("does not exist or is not a folder",)),
    Case("init-db-nul", ("study", "init", "--db", "{tmp}/a\u0000b.sqlite", "--protocol", "{protocol}"), ("NUL byte",)),
    # -- outputs -----------------------------------------------------------------------------------------------
    Case("export-to-folder", (*EXPORT, "--out", "{stimuli}"), ("--out", "is not an earlier panostudy export")),
    Case("export-to-dev-full", (*EXPORT, "--out", "/dev/full"), ("--out /dev/full", "is not an earlier panostudy export")),
    Case("export-json", (*EXPORT, "--out", "{tmp}/a.json"), ("a.json", ".csv or .parquet or .sav or .xlsx")),
    Case("export-same-file-twice", (*EXPORT, "--out", "{tmp}/a.csv", "--ssq", "{tmp}/a.csv"), ("--ssq", "the same file as --out")),
    Case("export-parent-is-file", (*EXPORT, "--out", "{protocol}/answers.csv"), ("tiny.toml is a file, not a folder",)),
    Case("export-ssq-to-folder", (*EXPORT, "--out", "{tmp}/a.csv", "--ssq", "{stimuli}"), ("--ssq", "is a folder")),
    # -- gaze ------------------------------------------------------------------------------------------------
    Case("export-gaze-without-gaze", (*EXPORT, "--out", "{tmp}/a.csv", "--gaze", "{tmp}/g.csv"),
         ("--gaze", "no session of study tiny recorded eye gaze", "leave --gaze out")),
    Case("replay-trial-missing", (*REPLAY, "--trial", "99"), ("P01 has no recorded trial 99", "their recorded trials are")),
    Case("replay-session-missing", (*REPLAY, "--trial", "1", "--session", "4"), ("P01 has no session 4", "--session")),
    Case("validation-target-outside", (*INIT, "{tmp}/bad.toml"), ("validation.targets[1]", "pitch 95° is outside ±90°"),
         protocol_plus("\n[validation]\ntargets = [[0, 0], [0, 95]]\n")),
    Case("validation-threshold-zero", (*INIT, "{tmp}/bad.toml"), ("validation.threshold_deg", "outside (0, 30]"),
         protocol_plus("\n[validation]\nthreshold_deg = 0\n")),
    Case("view-out-not-png", ("view", "{stimuli}/street/0.png", "--backend", "headless", "--out", "{tmp}/v.jpg"), ("write a .png",)),
    # -- driver files ------------------------------------------------------------------------------------------
    Case("driver-header-only", (*RUN, *P02, "--driver", "{tmp}/d.csv"), ("d.csv", "holds no answers"), driver("d.csv", "key,value\n")),
    Case("driver-value-9", (*RUN, *P02, "--driver", "{tmp}/d.csv"), ("d.csv: row 2 (ssq/pre/2)", "value 9 is out of the scale's range 0..3"),
         driver("d.csv", "key,value\nssq/pre/1,0\nssq/pre/2,9\n")),
    Case("driver-rating-9", (*RUN, *P02, "--driver", "{tmp}/d.csv"), ("d.csv: row 1 (trial/1/ACR/overall)", "range 1..5"),
         driver("d.csv", "key,value\ntrial/1/ACR/overall,9\n")),
    Case("driver-negative-time", (*RUN, *P02, "--driver", "{tmp}/d.csv"), ("d.csv: row 1", "response_time_s '-2'"),
         driver("d.csv", "key,value,response_time_s\nssq/pre/1,0,-2\n")),
    Case("driver-time-infinity", (*RUN, *P02, "--driver", "{tmp}/d.csv"), ("d.csv: row 1", "response_time_s 'Infinity'"),
         driver("d.csv", "key,value,response_time_s\nssq/pre/1,0,Infinity\n")),
    Case("driver-json-infinity", (*RUN, *P02, "--driver", "{tmp}/d.json"), ("d.json: row 1 (ssq/pre/1)", "value inf is not an integer"),
         driver("d.json", '{"ssq/pre/1": Infinity}')),
    Case("driver-json-nan", (*RUN, *P02, "--driver", "{tmp}/d.json"), ("d.json: row 1", "value nan is not an integer"),
         driver("d.json", '{"ssq/pre/1": NaN}')),
    Case("driver-fraction", (*RUN, *P02, "--driver", "{tmp}/d.csv"), ("d.csv: row 1", "'3.5' is not an integer"),
         driver("d.csv", "key,value\nssq/pre/1,3.5\n")),
    Case("driver-json-float", (*RUN, *P02, "--driver", "{tmp}/d.json"), ("d.json: row 1", "value 2.0 is not an integer"),
         driver("d.json", '{"ssq/pre/1": 2.0}')),
    Case("driver-json-bool", (*RUN, *P02, "--driver", "{tmp}/d.json"), ("d.json: row 1", "value True is not an integer"),
         driver("d.json", '{"ssq/pre/1": true}')),
    Case("driver-unknown-key", (*RUN, *P02, "--driver", "{tmp}/d.csv"), ("d.csv: row 1 (instructionz)", "not the key of a rating or SSQ step"),
         driver("d.csv", "key,value\ninstructionz,1\n")),
    Case("driver-duplicate-key", (*RUN, *P02, "--driver", "{tmp}/d.csv"), ("d.csv: row 2", "given in row 1 already"),
         driver("d.csv", "key,value\nssq/pre/1,0\nssq/pre/1,1\n")),
    Case("driver-unknown-item", (*RUN, *P02, "--driver", "{tmp}/d.csv"), ("d.csv: row 1", "no scale item 'ACR/sharpness'"),
         driver("d.csv", "key,value\ntrial/1/ACR/sharpness,3\n")),
    Case("driver-ssq-17", (*RUN, *P02, "--driver", "{tmp}/d.csv"), ("d.csv: row 1", "items 1..16"), driver("d.csv", "key,value\nssq/post/17,1\n")),
    Case("driver-txt", (*RUN, *P02, "--driver", "{tmp}/d.txt"), ("d.txt", ".csv or .json"), driver("d.txt", "ssq/pre/1 0\n")),
    Case("driver-missing", (*RUN, *P02, "--driver", "{tmp}/none.csv"), ("none.csv", "cannot read the answer file")),
    Case("driver-bad-json", (*RUN, *P02, "--driver", "{tmp}/d.json"), ("d.json", "invalid JSON"), driver("d.json", "{ssq: 1")),
    Case("driver-deep-json", (*RUN, *P02, "--driver", "{tmp}/d.json"), ("d.json", "nested too deeply"), driver("d.json", "[" * 100000)),
    Case("driver-no-value-column", (*RUN, *P02, "--driver", "{tmp}/d.csv"), ("d.csv: row 1 needs 'key' and 'value'",),
         driver("d.csv", "key,answer\nssq/pre/1,0\n")),
    # -- analysis input ----------------------------------------------------------------------------------------
    Case("analysis-scale-max-text", (*ANALYZE, "{tmp}/bad.csv"), ("bad.csv", "column 'scale_max'", "'five'", "line 2"),
         answers_csv(replace_cell("scale_max", "five"))),
    Case("analysis-value-text", (*ANALYZE, "{tmp}/bad.csv"), ("bad.csv", "column 'value'", "'x'"), answers_csv(replace_cell("value", "x"))),
    Case("analysis-value-fraction", (*ANALYZE, "{tmp}/bad.csv"), ("bad.csv", "column 'value'", "an integer"),
         answers_csv(replace_cell("value", "2.5"))),
    Case("analysis-time-text", (*ANALYZE, "{tmp}/bad.csv"), ("bad.csv", "column 'response_time_s'", "finite number"),
         answers_csv(replace_cell("response_time_s", "slow"))),
    Case("analysis-time-inf", (*ANALYZE, "{tmp}/bad.csv"), ("bad.csv", "column 'response_time_s'", "inf"),
         answers_csv(replace_cell("response_time_s", "inf"))),
    Case("analysis-columns-missing", (*ANALYZE, "{tmp}/bad.csv"), ("lack the column(s)", "scale_max"),
         answers_csv(lambda text: "\n".join(",".join(line.split(",")[:12]) for line in text.splitlines()) + "\n")),
    Case("analysis-file-missing", (*ANALYZE, "{tmp}/none.csv"), ("--answers", "none.csv: no such file")),
    Case("analysis-format", (*ANALYZE, "{tmp}/a.txt"), ("a.txt", "unknown format"), write("a.txt", "x")),
    Case("analysis-ssq-item-text", (*ANALYZE, "{tmp}/answers.csv", "--ssq", "{tmp}/bad_ssq.csv"), ("--ssq", "column 'item'", "'one'"),
         lambda tmp: (tmp / "bad_ssq.csv").write_text(
             (tmp / "ssq.csv").read_text().replace(",pre,1,", ",pre,one,", 1), encoding="utf-8")),
    Case("analysis-not-csv", (*ANALYZE, "{tmp}/bad.csv"), ("bad.csv", "cannot be read"), write("bad.csv", b"\x00\x01\x02\xff" * 10)),
]


# -- the doors added since: sessions and stations, consent, migration, flags, power, export package options,
# -- replay, generator options, enrolment ------------------------------------------------------------------
SCENE = str(Path(__file__).resolve().parents[1] / "data" / "scenes" / "vehicle.toml")
IMAGE = ("generate", "image", "--scene", SCENE, "--out", "{tmp}/g.png")
PANORAMA = ("generate", "panorama", "{stimuli}/street/0.png", "--out", "{tmp}/p.png")
SETS = ("generate", "sets", "--scenes", str(Path(SCENE).parent), "--out", "{tmp}/sets")
POWER = ("power", "--delta", "0.5", "--sd", "1")
REPLAY = ("replay", "--db", "{db}", "--participant", "P01", "--trial", "1", "--out", "{tmp}/r.gif")
ADD = ("study", "add-participant", "--db", "{db}", "--code")
MIGRATE = ("study", "migrate", "--db")
SCHEMA1 = STUDY_KIT / "data" / "schema1_study.sql"


def schema1(relative: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        connection = sqlite3.connect(tmp / relative)
        connection.executescript(SCHEMA1.read_text(encoding="utf-8"))
        connection.close()

    return setup


def protocol_add(text: str) -> Callable[[Path], None]:
    """A copy of the study's protocol as bad.toml, with ``text`` added at the top (top-level keys) or the end."""

    def setup(tmp: Path) -> None:
        old = (tmp / "tiny.toml").read_text(encoding="utf-8")
        new = old + "\n" + text + "\n" if text.lstrip().startswith("[") else old.replace("schema_version = 1", f"schema_version = 1\n{text}", 1)
        (tmp / "bad.toml").write_text(new, encoding="utf-8")

    return setup


CASES += [
    # -- enrolment: pseudonymous codes, demographics from the protocol's choices -----------------------------
    Case("code-name", (*ADD, "JohnSmith"), ("'JohnSmith' is invalid", "[A-Z]{{1,8}}[0-9]{{0,4}}-?[0-9]{{1,6}}", "e.g. P07, LAB2-013")),
    Case("code-name-underscore", (*ADD, "Maria_Garcia"), ("'Maria_Garcia' is invalid", "enrolment.code_pattern")),
    Case("code-name-and-year", (*ADD, "john-doe-1985"), ("'john-doe-1985' is invalid", "never a name")),
    Case("code-lower-case", (*ADD, "p09"), ("'p09' is invalid", "did you mean 'P09'?")),
    Case("gender-email", (*ADD, "P09", "--gender", "jane.doe@example.org"), ("--gender 'jane.doe@example.org'", "'female', 'male'")),
    Case("gender-not-a-choice", (*ADD, "P09", "--gender", "f"), ("--gender 'f' is not one of the protocol's choices",)),
    Case("vision-not-a-choice", (*ADD, "P09", "--vision-correction", "yes"), ("--vision-correction 'yes'", "'glasses'")),
    Case("age-negative", (*ADD, "P09", "--age", "-5"), ("--age -5", "1..120")),
    Case("age-fraction", (*ADD, "P09", "--age", "30.5"), ("'--age'", "valid integer")),
    Case("enrolment-pattern-broken", (*INIT, "{tmp}/bad.toml"), ("enrolment.code_pattern", "not a regular expression"),
         protocol_add('[enrolment]\ncode_pattern = "[A-Z"')),
    Case("enrolment-pattern-empty", (*INIT, "{tmp}/bad.toml"), ("enrolment.code_pattern", "matches an empty code"),
         protocol_add('[enrolment]\ncode_pattern = ".*"')),
    Case("enrolment-example-off", (*INIT, "{tmp}/bad.toml"), ("enrolment.code_examples[0]", "does not match"),
         protocol_add('[enrolment]\ncode_examples = ["John"]')),
    Case("enrolment-age-reversed", (*INIT, "{tmp}/bad.toml"), ("enrolment.age_max", "from age_min 30 on"),
         protocol_add("[enrolment]\nage_min = 30\nage_max = 20")),
    Case("enrolment-gender-number", (*INIT, "{tmp}/bad.toml"), ("enrolment.gender[0]", "expected a choice, got an integer"),
         protocol_add("[enrolment]\ngender = [1, 2]")),
    Case("enrolment-unknown-key", (*INIT, "{tmp}/bad.toml"), ("enrolment.email", "unknown key"),
         protocol_add("[enrolment]\nemail = true")),
    # -- sessions, stations, consent (issue 12) ----------------------------------------------------------------
    Case("station-empty", (*RUN, *P02, "--simulate", "1", "--station", ""), ("--station '' is not a station name",)),
    Case("station-too-long", (*RUN, *P02, "--simulate", "1", "--station", "s" * 65), ("is not a station name", "1-64")),
    Case("station-dot-first", (*RUN, *P02, "--simulate", "1", "--station", ".hidden"), ("--station '.hidden'",)),
    Case("session-headless-nobody", ("session", "run", "--db", "{db}", *P02, "--backend", "headless"),
         ("--backend headless has nobody to answer", "--simulate SEED")),
    Case("session-fullscreen-headless", ("session", "run", "--db", "{db}", *P02, "--backend", "headless", "--simulate", "1",
                                         "--fullscreen"), ("--fullscreen", "leave --fullscreen out")),
    Case("session-zero", (*RUN, *P02, "--simulate", "1", "--session", "0"), ("--session 0", "1..1")),
    Case("session-negative", (*RUN, *P02, "--simulate", "1", "--session", "-2"), ("--session -2", "1..1")),
    Case("session-text", (*RUN, *P02, "--simulate", "1", "--session", "two"), ("'--session'", "valid integer")),
    Case("resume-session-unknown", ("session", "resume", "--db", "{db}", "--participant", "P01", "--backend", "none",
                                    "--simulate", "1", "--session", "4"), ("--session 4", "1..1")),
    Case("resume-completed", ("session", "resume", "--db", "{db}", "--participant", "P01", "--backend", "none",
                              "--simulate", "1"), ("session 1 of participant 'P01' is complete",)),
    Case("withdraw-session-unknown", ("session", "withdraw", "--db", "{db}", "--participant", "P01", "--session", "9"),
         ("--session 9", "1..1")),
    Case("withdraw-unknown", ("session", "withdraw", "--db", "{db}", "--participant", "NOPE1"), ("'NOPE1' is not enrolled",)),
    Case("withdraw-no-session", ("session", "withdraw", "--db", "{db}", "--participant", "P02"), ("'P02' has no session yet",)),
    Case("fullscreen-without-window", (*RUN, *P02, "--simulate", "1", "--fullscreen"), ("--fullscreen", "--backend none")),
    Case("consent-empty", (*INIT, "{tmp}/bad.toml"), ("bad.toml: consent:", "is empty"), protocol_add('consent = ""')),
    Case("consent-number", (*INIT, "{tmp}/bad.toml"), ("bad.toml: consent:", "expected a string"), protocol_add("consent = 1")),
    Case("thank-you-empty", (*INIT, "{tmp}/bad.toml"), ("thank_you", "is empty"), protocol_add('thank_you = "  "')),
    Case("caption-field-unknown", (*INIT, "{tmp}/bad.toml"), ("captions.continue_in", "unknown field {{minutes}}"),
         protocol_add('[captions]\ncontinue_in = "in {minutes}"')),
    Case("caption-unknown", (*INIT, "{tmp}/bad.toml"), ("captions.okay", "unknown key"), protocol_add('[captions]\nokay = "OK"')),
    Case("caption-braces", (*INIT, "{tmp}/bad.toml"), ("captions.page", "braces do not pair up"), protocol_add('[captions]\npage = "{page"')),
    Case("glyph-no-font", (*INIT, "{tmp}/bad.toml"), ("bad.toml", "thank_you"), protocol_add('thank_you = "Danke \ue000"')),
    Case("panel-progress-text", (*INIT, "{tmp}/bad.toml"), ("panel.question_progress", "true or false"),
         protocol_add('[panel]\nquestion_progress = "yes"')),
    Case("panel-font-missing", (*INIT, "{tmp}/bad.toml"), ("panel.fonts[0]", "does not exist"), protocol_add('[panel]\nfonts = ["none.ttf"]')),
    Case("view-fov-200", (*INIT, "{tmp}/bad.toml"), ("view.fov_deg", "outside 30..120"), protocol_add("[view]\nfov_deg = 200")),
    Case("view-window-tiny", (*INIT, "{tmp}/bad.toml"), ("view.window", "not a window size"), protocol_add("[view]\nwindow = [10, 10]")),
    Case("view-yaw-500", (*INIT, "{tmp}/bad.toml"), ("view.start_yaw_deg", "outside -180..180"), protocol_add("[view]\nstart_yaw_deg = 500")),
    Case("view-yaw-empty-key", (*INIT, "{tmp}/bad.toml"), ("view.start_yaw", "an empty stimulus path"),
         protocol_add('[view]\nstart_yaw = { "" = 10 }')),
    Case("sessions-scene-unknown", (*INIT, "{tmp}/bad.toml"), ("sessions[0].scenes[0]", "not one of the protocol's scenes"),
         protocol_add('[[sessions]]\nscenes = ["beach"]')),
    Case("sessions-scene-left-out", (*INIT, "{tmp}/bad.toml"), ("sessions", "no session shows scene 'indoor'"),
         protocol_add('[[sessions]]\nscenes = ["street"]')),
    Case("sessions-empty", (*INIT, "{tmp}/bad.toml"), ("sessions", "is empty"), protocol_add("sessions = []")),
    # -- study migrate ------------------------------------------------------------------------------------------
    Case("migrate-foreign", (*MIGRATE, "{tmp}/theirs.db"), ("theirs.db", "not a panostudy study database"), foreign_db),
    Case("migrate-absent", (*MIGRATE, "{tmp}/none.sqlite"), ("none.sqlite", "no study database there")),
    Case("migrate-newer", (*MIGRATE, "{db}"), ("schema_info.version is 99", "migrates versions 1, 2 to 3 only"),
         study_change("UPDATE schema_info SET version = 99")),
    Case("migrate-backup-in-the-way", (*MIGRATE, "{tmp}/old.sqlite"), ("old.sqlite.schema1.bak", "move it away first"),
         both(schema1("old.sqlite"), write("old.sqlite.schema1.bak", b"an earlier backup"))),
    Case("migrate-truncated", (*MIGRATE, "{tmp}/cut.sqlite"), ("cut.sqlite", "truncated or damaged"), truncated_copy),
    Case("schema1-needs-migrate", (*RUN, "--participant", "P03", "--simulate", "1") , ("schema_info.version is 1", "study migrate"),
         both(schema1("old.sqlite"), lambda tmp: (tmp / "old.sqlite").replace(tmp / "study.sqlite"))),
    # -- export and analysis options ------------------------------------------------------------------------------
    Case("export-flags-to-folder", (*EXPORT, "--out", "{tmp}/a.csv", "--flags", "{stimuli}"), ("--flags", "is a folder")),
    Case("export-flags-with-package", (*EXPORT, "--out", "{tmp}/package", "--flags", "{tmp}/f.csv"),
         ("--ssq, --poses, --flags and --gaze name files for a single-file export",)),
    Case("export-flags-same-as-out", (*EXPORT, "--out", "{tmp}/a.csv", "--flags", "{tmp}/a.csv"), ("--flags", "the same file as --out")),
    Case("export-spss-with-file", (*EXPORT, "--out", "{tmp}/a.csv", "--spss"), ("--parquet, --spss, --xlsx, --no-poses and --no-gaze go with a package",)),
    Case("export-xlsx-with-file", (*EXPORT, "--out", "{tmp}/a.csv", "--xlsx"), ("go with a package folder",)),
    Case("export-parquet-with-file", (*EXPORT, "--out", "{tmp}/a.csv", "--parquet"), ("go with a package folder",)),
    Case("export-no-poses-with-file", (*EXPORT, "--out", "{tmp}/a.csv", "--no-poses"), ("go with a package folder",)),
    Case("export-stimulus-root-missing", (*EXPORT, "--out", "{tmp}/package", "--stimulus-root", "{tmp}/nowhere"),
         ("--stimulus-root", "nowhere: not a folder")),
    Case("export-stimulus-root-file", (*EXPORT, "--out", "{tmp}/package", "--stimulus-root", "{protocol}"),
         ("--stimulus-root", "tiny.toml: not a folder")),
    Case("analyze-exclude-flagged-answers", (*ANALYZE, "{tmp}/answers.csv", "--exclude-flagged"), ("--exclude-flagged needs the flagged trials",)),
    Case("analyze-export-not-a-package", ("analyze", "--export", "{stimuli}", "--out", "{tmp}/report"), ("--export", "datapackage.json")),
    # -- power (issue 16) ---------------------------------------------------------------------------------------
    Case("power-delta-negative", ("power", "--delta", "-1", "--sd", "1"), ("--delta",)),
    Case("power-delta-zero", ("power", "--delta", "0", "--sd", "1"), ("--delta",)),
    Case("power-delta-nan", ("power", "--delta", "nan", "--sd", "1"), ("--delta",)),
    Case("power-delta-inf", ("power", "--delta", "inf", "--sd", "1"), ("--delta",)),
    Case("power-sd-zero", ("power", "--delta", "0.5", "--sd", "0"), ("--sd",)),
    Case("power-sd-nan", ("power", "--delta", "0.5", "--sd", "nan"), ("--sd",)),
    Case("power-power-1.5", (*POWER, "--power", "1.5"), ("--power",)),
    Case("power-power-zero", (*POWER, "--power", "0"), ("--power",)),
    Case("power-power-nan", (*POWER, "--power", "nan"), ("--power",)),
    Case("power-alpha-zero", (*POWER, "--alpha", "0"), ("--alpha",)),
    Case("power-alpha-1.5", (*POWER, "--alpha", "1.5"), ("--alpha",)),
    Case("power-alpha-nan", (*POWER, "--alpha", "nan"), ("--alpha",)),
    Case("power-comparisons-zero", (*POWER, "--comparisons", "0"), ("--comparisons",)),
    Case("power-comparisons-text", (*POWER, "--comparisons", "six"), ("'--comparisons'", "valid integer")),
    Case("power-delta-missing", ("power", "--sd", "1"), ("Missing option '--delta'",)),
    Case("power-tiny-effect", ("power", "--delta", "0.0001", "--sd", "10"), ("participants would be needed",)),
    # -- replay (issue 14) --------------------------------------------------------------------------------------
    Case("replay-trial-negative", (*REPLAY[:5], "--trial", "-1", "--out", "{tmp}/r.gif"), ("no recorded trial -1",)),
    Case("replay-trial-unknown", (*REPLAY[:5], "--trial", "999", "--out", "{tmp}/r.gif"), ("999",)),
    Case("replay-participant-unknown", ("replay", "--db", "{db}", "--participant", "NOPE1", "--trial", "1", "--out", "{tmp}/r.gif"),
         ("NOPE1",)),
    Case("replay-every-zero", (*REPLAY[:7], "--out", "{tmp}/r.png", "--every", "0"), ("--every 0",)),
    Case("replay-every-nan", (*REPLAY[:7], "--out", "{tmp}/r.png", "--every", "nan"), ("--every nan",)),
    Case("replay-every-inf", (*REPLAY[:7], "--out", "{tmp}/r.png", "--every", "inf"), ("--every inf",)),
    Case("replay-fps-zero", (*REPLAY, "--fps", "0"), ("--fps 0",)),
    Case("replay-fps-nan", (*REPLAY, "--fps", "nan"), ("--fps nan",)),
    Case("replay-width-odd", (*REPLAY, "--width", "1000"), ("--width 1000", "multiple of 32")),
    Case("replay-fov-nan", (*REPLAY, "--fov", "nan"), ("--fov nan",)),
    Case("replay-fov-zero", (*REPLAY, "--fov", "0"), ("--fov 0",)),
    Case("replay-format", (*REPLAY[:7], "--out", "{tmp}/r.txt"), ("r.txt", "unknown replay format")),
    Case("replay-folder-missing", (*REPLAY[:7], "--out", "{tmp}/no/r.gif"), ("does not exist", "create it first")),
    Case("replay-gaze-missing", (*REPLAY, "--gaze", "{tmp}/none.csv"), ("--gaze", "none.csv")),
    Case("replay-gaze-bad", (*REPLAY, "--gaze", "{tmp}/g.csv"), ("--gaze", "g.csv"), write("g.csv", "participant,t\nP01,x\n")),
    Case("replay-session-unknown", (*REPLAY, "--session", "99"), ("99",)),
    # -- generator options (issue 17) ---------------------------------------------------------------------------
    Case("image-guide-tokens", (*IMAGE, "--guide-tokens", "all"), ("--guide-tokens all", "phrase")),
    Case("image-mask-fit", (*IMAGE, "--mask-fit", "stretch"), ("--mask-fit stretch", "crop")),
    Case("image-out-jpg", ("generate", "image", "--scene", SCENE, "--out", "{tmp}/g.jpg"), ("write a .png",)),
    Case("image-steps-zero", (*IMAGE, "--steps", "0"), ("'--steps'",)),
    Case("image-seed-negative", (*IMAGE, "--seed", "-1"), ("'--seed'",)),
    Case("image-guided-over-steps", (*IMAGE, "--steps", "4", "--guided-steps", "9"), ("--guided-steps 9", "at most --steps")),
    Case("image-size-odd", (*IMAGE, "--size", "100"), ("--size 100", "multiple of 8")),
    Case("image-layout-unknown", (*IMAGE, "--layout", "vehicle_z"), ("vehicle_z",)),
    Case("image-scene-missing", ("generate", "image", "--scene", "{tmp}/none.toml", "--out", "{tmp}/g.png"), ("none.toml",)),
    Case("image-model-missing", (*IMAGE, "--model", "{tmp}/none.safetensors"), ("none.safetensors",)),
    Case("image-model-config-unknown", (*IMAGE, "--model", "{tmp}/w.safetensors", "--model-config", "sd99"), ("w.safetensors",),
         write("w.safetensors", b"not a checkpoint")),
    Case("panorama-guidance-nan", (*PANORAMA, "--guidance", "nan"), ("--guidance nan",)),
    Case("panorama-guidance-inf", (*PANORAMA, "--guidance", "inf"), ("--guidance inf",)),
    Case("panorama-guidance-negative", (*PANORAMA, "--guidance", "-2"), ("--guidance -2",)),
    Case("panorama-refine-strength", (*PANORAMA, "--refine-strength", "1.5"), ("--refine-strength 1.5",)),
    Case("panorama-refine-strength-nan", (*PANORAMA, "--refine-strength", "nan"), ("--refine-strength nan",)),
    Case("panorama-sr-tile-zero", (*PANORAMA, "--sr-tile", "0"), ("--sr-tile 0",)),
    Case("panorama-steps-zero", (*PANORAMA, "--steps", "0"), ("'--steps'",)),
    Case("panorama-preset", (*PANORAMA, "--preset", "fancy"), ("fancy", "diffusion360")),
    Case("panorama-size-not-2-1", (*PANORAMA, "--size", "1000x1000"), ("1000x1000",)),
    Case("panorama-size-text", (*PANORAMA, "--size", "big"), ("big",)),
    Case("panorama-canvas-not-2-1", (*PANORAMA, "--panorama-size", "512x512"), ("512x512",)),
    Case("panorama-out-gif", ("generate", "panorama", "{stimuli}/street/0.png", "--out", "{tmp}/p.gif"), ("must end in .png",)),
    Case("panorama-image-missing", ("generate", "panorama", "{tmp}/none.png", "--out", "{tmp}/p.png"), ("none.png", "no such image")),
    Case("panorama-sr-base-alone", (*PANORAMA, "--sr-base", "{tmp}/base"), ("--sr-base and --sr-control",)),
    Case("panorama-diffusion360-missing", (*PANORAMA, "--diffusion360", "{tmp}/d360"), ("d360",)),
    Case("panorama-not-an-image", ("generate", "panorama", "{tmp}/x.png", "--out", "{tmp}/p.png"), ("x.png", "cannot read the image"),
         write("x.png", b"\x89PNG broken")),
    Case("sets-per-scene-zero", (*SETS, "--per-scene", "0"), ("--per-scene",)),
    Case("sets-format", (*SETS, "--per-scene", "1", "--format", "gif"), ("gif",)),
    Case("sets-rank-outside", (*SETS, "--per-scene", "1", "--rank", "3", "--world-size", "2"), ("--rank 3",)),
    Case("sets-world-size-zero", (*SETS, "--per-scene", "1", "--world-size", "0"), ("--world-size 0",)),
    Case("sets-guidance-nan", (*SETS, "--per-scene", "1", "--guidance", "nan"), ("--guidance nan",)),
    Case("sets-mask-fit", (*SETS, "--per-scene", "1", "--mask-fit", "stretch"), ("--mask-fit stretch",)),
    Case("sets-scenes-missing", ("generate", "sets", "--scenes", "{tmp}/noscenes", "--out", "{tmp}/sets", "--per-scene", "1"),
         ("noscenes",)),
    Case("sets-stage1-size-odd", (*SETS, "--per-scene", "1", "--stage1-size", "100"), ("--stage1-size 100",)),
    Case("sets-stage1-steps-zero", (*SETS, "--per-scene", "1", "--stage1-steps", "0"), ("--stage1-steps 0",)),
    Case("sets-refine-strength-negative", (*SETS, "--per-scene", "1", "--refine-strength", "-0.1"), ("--refine-strength -0.1",)),
]


# -- the study every case starts from -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A study with stimuli, P01 finished (its answers exported as answers.csv / ssq.csv) and P02 enrolled."""
    import sys

    sys.path.insert(0, str(STUDY_KIT))
    from _studykit import make_study

    from study.driver import RaterModel, ScriptedDriver
    from study.engine import SessionEngine
    from study.export import load_answers, load_ssq, write_frames

    folder = tmp_path_factory.mktemp("template")
    db = make_study(folder)
    ScriptedDriver(RaterModel(2)).run(SessionEngine.start(db, "P01"))
    write_frames([(load_answers(db), folder / "answers.csv"), (load_ssq(db), folder / "ssq.csv")])
    db.close()
    return folder


def state(folder: Path) -> dict:
    """Every file's SHA-256 (and every link's target), and every row of every SQLite database, under ``folder``."""
    files = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            files[key] = f"-> {path.readlink()}"
        elif path.is_file():
            files[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            files[key] = "folder"
    rows = {}
    for path in sorted(folder.glob("*.sqlite")):
        if path.stat().st_size == 0:
            continue
        try:
            connection = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
            tables = [t for (t,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            rows[path.name] = {t: connection.execute(f'SELECT * FROM "{t}"').fetchall() for t in tables}
            connection.close()
        except sqlite3.DatabaseError:
            rows[path.name] = "not readable"
    return {"files": files, "rows": rows}


def relocate(db: Path, old: Path, new: Path) -> None:
    """Points a copied study's stored paths (stimuli, protocol folder) at the copy's files."""
    connection = sqlite3.connect(db)
    connection.execute("UPDATE stimulus SET path = replace(path, ?, ?)", (str(old), str(new)))
    connection.execute("UPDATE study SET protocol_base_dir = replace(protocol_base_dir, ?, ?)", (str(old), str(new)))
    connection.commit()
    connection.close()


def fill(text: str, tmp: Path) -> str:
    return text.format(tmp=tmp, db=tmp / "study.sqlite", protocol=tmp / "tiny.toml", stimuli=tmp / "stimuli")


def test_the_corpus_is_large_and_its_ids_unique():
    assert len(CASES) >= 120
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, template, tmp_path, monkeypatch):
    work = tmp_path / "case"
    shutil.copytree(template, work, symlinks=True)
    relocate(work / "study.sqlite", template, work)
    if case.setup is not None:
        case.setup(work)
    monkeypatch.chdir(work)
    before = state(work)
    result = CliRunner().invoke(app, [fill(arg, work) for arg in case.args])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in case.fragments:
        assert fill(fragment, work) in lines[0], lines[0]
    assert state(work) == before
