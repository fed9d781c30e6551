"""The study database: opening it safely, and the writes that are not part of a session.

SQLite is the default (a path is enough); PostgreSQL (``postgresql://user@host/db``, psycopg 3) is the
second store, tested like the first. A database is checked read-only before anything is written to it
(:mod:`study.database`), a new SQLite file is created readable by its owner only, and every SQLite
connection runs with
``journal_mode=WAL`` (readers never block the session's writer), ``foreign_keys=ON`` (cascading deletes)
and ``synchronous=FULL`` (a committed answer survives a crash or power loss). Each unit of work runs in
``with db.Session.begin()``, so it commits as a whole or not at all.
"""

from __future__ import annotations

import mmap
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
import sqlalchemy.orm as so

from study.database import (
    BUSY_TIMEOUT_MS,
    check_sqlite_file,
    database_error,
    mask_secrets,
    database_url,
    make_engine,
    read_only_engine,
    shown,
    sqlite_file,
    sqlite_lock_holders,
    try_run_lock,
)
from study.errors import SessionError, StimulusError, StoreError
from study.models import (
    SCHEMA_VERSION,
    Base,
    Event,
    GazeSample,
    Participant,
    SchemaInfo,
    Stimulus,
    Study,
    StudySession,
    ValidationRun,
    ValidationSample,
    ValidationTarget,
    utc_now,
)
from study.protocol import DEFAULT_PROTOCOL, MAX_FREE_TEXT, Protocol, load_protocol, parse_protocol
from study.stimuli import Candidate, CheckedImage, check_image, collect, write_downscaled

#: Every participant code, whatever the protocol's pattern: letters, digits, ``-`` and ``_`` (codes go into
#: exports and file names; no e-mail addresses).
PARTICIPANT_CODE = re.compile(r"[A-Za-z0-9_-]{1,32}")
#: A demographic value typed as free text, where the protocol allows it: words of letters joined by spaces,
#: hyphens, apostrophes or slashes (no digits, no '@': no dates of birth, no addresses).
FREE_TEXT = re.compile(r"[^\W\d_]+(?:[ '’/-]{1,3}[^\W\d_]+)*")
#: Tries of one unit of work against concurrent ones (enrolment, session start) before the conflict is reported.
CONFLICT_ATTEMPTS = 50
#: Station names (the machine a session ran on) go into exports and file names: keep them plain.
STATION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Scene given to training panoramas whose folder is not one of the protocol's scenes.
TRAINING_SCENE = "training"

T = TypeVar("T")


@dataclass
class StudyDB:
    """An open study database: its engine, a ``sessionmaker`` and the study's protocol."""

    url: str
    engine: sa.Engine
    Session: so.sessionmaker[so.Session]
    study_id: int
    protocol: Protocol

    @property
    def shown_url(self) -> str:
        """The database as messages name it: a SQLite file's path, any other URL with its password masked."""
        return shown(self.url)

    def close(self) -> None:
        """Closes every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> StudyDB:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class ImportReport:
    """What :func:`import_stimuli` did."""

    added: int
    already_present: int
    per_scene: dict[str, int]


def _check_writable(path: Path, *, creating: bool) -> None:
    folder = path.parent
    if creating:
        if path.exists() or path.is_symlink():
            raise StoreError(f"{path}: a file already exists there; choose a new --db path or open the existing study")
        if not folder.is_dir():
            raise StoreError(f"{path}: folder {folder} does not exist or is not a folder; create it first")
    elif not path.exists():
        raise StoreError(f"{path}: no study database there; create one with 'panostudy study init --db {path}'")
    elif not path.is_file():
        raise StoreError(f"{path}: not a file (a folder or a device?); give the study file 'panostudy study init' made")
    # WAL writes <db>-wal and <db>-shm next to the file, so the folder must be writable too.
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise StoreError(f"{path}: database path is not writable; fix its permissions or choose another --db path")


def check_station(station: str) -> str:
    """``station`` itself if it is a safe station name; StoreError naming ``--station`` otherwise."""
    if not STATION_NAME.fullmatch(station):
        raise StoreError(
            f"--station {station!r} is not a station name; use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return station


def _sessionmaker(engine: sa.Engine) -> so.sessionmaker[so.Session]:
    # Objects stay readable after their transaction: the engine hands them to the viewer.
    return so.sessionmaker(engine, expire_on_commit=False)


def _create_private_file(path: Path) -> None:
    """Creates the empty database file readable by its owner only; SQLite gives its -wal and -shm files the
    database's permissions."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        raise StoreError(f"{path}: a file already exists there; choose a new --db path or open the existing study") from None


def _remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def create_study(db: str | Path, protocol: Protocol | str | Path, *, base_dir: str | Path | None = None) -> StudyDB:
    """Creates a study database for ``protocol`` and imports the protocol's training panoramas.

    A new SQLite file is created readable by its owner only (0600). If anything fails, the file is removed
    again; an existing database is never changed.

    Parameters
    ----------
    db : str or Path
        A new SQLite file path or any SQLAlchemy URL of an empty database.
    protocol : Protocol or path
        The protocol TOML file (preferred), or a validated protocol; its text and hash are stored verbatim.
    base_dir : path, optional
        Folder the protocol's relative training paths start at, when ``protocol`` is a :class:`Protocol`
        (default: the shipped ``protocols/`` folder). With a path it is that file's folder.

    Raises
    ------
    StoreError
        If the path exists, is not writable, or the database already holds a study or tables of ours.
    StimulusError
        If a training panorama fails validation (nothing is written then).
    """
    url = database_url(db)
    if isinstance(protocol, Protocol):
        source, base = "<stored protocol>", Path(base_dir) if base_dir is not None else DEFAULT_PROTOCOL.parent
    else:
        source, base = str(protocol), Path(protocol).resolve().parent
        protocol = load_protocol(protocol)
    path = sqlite_file(url)
    if path is not None:
        _check_writable(path, creating=True)
    training = [check_image(c) for c in _training_candidates(protocol)]
    if path is None:
        _check_empty_server_database(url)
    else:
        _create_private_file(path)
    engine = None
    try:
        engine = make_engine(url)
        Base.metadata.create_all(engine)
        Session = _sessionmaker(engine)
        with Session.begin() as session:
            session.add(SchemaInfo(version=SCHEMA_VERSION))
            study = Study(
                name=protocol.name,
                protocol_text=protocol.source_text,
                protocol_sha256=protocol.sha256,
                protocol_schema_version=protocol.schema_version,
                protocol_source=source,
                protocol_base_dir=str(base.resolve()),
            )
            session.add(study)
            session.flush()
            _add_stimuli(session, study.id, training, training=True)
            study_id = study.id
    except BaseException as exc:
        if engine is not None:
            engine.dispose()
        if path is not None:
            _remove_sqlite_files(path)
        if isinstance(exc, sa.exc.DBAPIError):
            raise database_error(exc, url) or exc from None
        raise
    return StudyDB(url, engine, Session, study_id, protocol)


def _check_empty_server_database(url: str) -> None:
    """Refuses a server database that already holds a study or tables with panostudy's names (read only)."""
    engine = read_only_engine(url)
    try:
        present = set(sa.inspect(engine).get_table_names()) & set(Base.metadata.tables)
    except sa.exc.DBAPIError as exc:
        raise database_error(exc, url) from None
    finally:
        engine.dispose()
    if SchemaInfo.__tablename__ in present:
        raise StoreError(f"{shown(url)}: the database already holds a study; choose a new --db")
    if present:
        raise StoreError(
            f"{shown(url)}: the database already has tables named like panostudy's ({', '.join(sorted(present))}); "
            "give an empty database"
        )


def _training_candidates(protocol: Protocol) -> list[Candidate]:
    found = []
    for raw in protocol.training.stimuli:
        path = Path(raw)
        scene = path.parent.name if path.parent.name in protocol.scenes else TRAINING_SCENE
        found.append(Candidate(path, scene, f"training.stimuli ({raw})"))
    return found


def open_study(db: str | Path) -> StudyDB:
    """Opens an existing study database after checking, read-only, that it is one of this version.

    Nothing is written to a database before it is known to be a panostudy study of this schema version with
    every table and column in place: a foreign, empty, truncated or damaged file is refused unchanged.

    Raises
    ------
    StoreError
        If there is no database, it is not writable, not a panostudy database, of another schema version,
        lacks a table or column, or cannot be reached.
    """
    url, _, checker = _probe(db)
    try:
        study_id, protocol = _read_study(checker, url)
    except sa.exc.DBAPIError as exc:
        raise database_error(exc, url) from None
    finally:
        checker.dispose()
    engine = make_engine(url)
    return StudyDB(url, engine, _sessionmaker(engine), study_id, protocol)


def _probe(db: str | Path) -> tuple[str, Path | None, sa.Engine]:
    """The URL, the SQLite file (None for a server) and a read-only engine of a study about to be written: a file
    is checked writable and whole before anything opens it."""
    url = database_url(db)
    path = sqlite_file(url)
    if path is not None:
        _check_writable(path, creating=False)
        check_sqlite_file(path)
    return url, path, read_only_engine(url)


def _read_study(engine: sa.Engine, url: str) -> tuple[int, Protocol]:
    """(study id, protocol) of a database that is a complete study of this schema version."""
    name = shown(url)
    inspector = sa.inspect(engine)
    tables = set(inspector.get_table_names())
    if SchemaInfo.__tablename__ not in tables:
        raise StoreError(f"{name}: not a panostudy study database (no schema_info table); create one with 'panostudy study init'")
    with engine.connect() as connection:
        version = connection.scalar(sa.select(sa.func.max(SchemaInfo.__table__.c.version)))
    if version is None or version != SCHEMA_VERSION:
        if version in MIGRATIONS:
            fix = f"run 'panostudy study migrate --db {name}' once (it keeps a copy of the old file)"
        elif version is not None and version > SCHEMA_VERSION:
            fix = "upgrade panostudy"
        else:
            fix = "re-create it with this panostudy"
        raise StoreError(f"{name}: schema_info.version is {version}, this panostudy reads version {SCHEMA_VERSION}; {fix}")
    for table in Base.metadata.sorted_tables:
        if table.name not in tables:
            raise StoreError(f"{name}: table '{table.name}' is missing; the database is damaged, restore it from a backup")
        present = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [column.name for column in table.columns if column.name not in present]
        if missing:
            raise StoreError(
                f"{name}: table '{table.name}' lacks column(s) {', '.join(missing)}; the database is damaged, "
                "restore it from a backup"
            )
    Session = _sessionmaker(engine)
    with Session() as session:
        study = session.scalars(sa.select(Study)).one_or_none()
        if study is None:
            raise StoreError(f"{name}: the database holds no study; create one with 'panostudy study init'")
        # The training panoramas are in the stimulus table already; they need not be where they were at init.
        protocol = parse_protocol(
            study.protocol_text, source=study.protocol_source, base_dir=study.protocol_base_dir, check_files=False
        )
        return study.id, protocol


def _add_stimuli(session: so.Session, study_id: int, images: list[CheckedImage], *, training: bool) -> None:
    session.add_all(
        Stimulus(
            study_id=study_id,
            path=str(image.candidate.path),
            sha256=image.sha256,
            scene=image.candidate.scene,
            width=image.width,
            height=image.height,
            training=training,
            generator_metadata=image.candidate.metadata,
        )
        for image in images
    )


def import_stimuli(
    db: StudyDB,
    source: str | Path,
    *,
    scene: str | None = None,
    training: bool = False,
    downscale_into: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Validates and imports panoramas from a folder or a generator manifest (``.jsonl``).

    All images are checked before anything is written. An image already imported from the same path with
    the same content is skipped, so re-running an import is harmless.

    Parameters
    ----------
    db : StudyDB
        The open study.
    source : str or Path
        A folder (one sub-folder per scene, or any layout with ``scene``) or a JSON Lines manifest.
    scene : str, optional
        The scene of every image, instead of sub-folder names / manifest entries.
    training : bool
        Import as training panoramas (shown first, flagged, excluded from analysis).
    downscale_into : path, optional
        Folder for downscaled copies of images larger than 8192×4096; without it they are refused.
    progress : callable, optional
        Called as ``progress(done, total)`` after each image is checked.

    Raises
    ------
    StimulusError
        Naming the image and what is wrong: missing, unreadable, not 2:1, too large, unknown scene, or
        changed since a previous import.
    """
    candidates = collect(source, scene)
    allowed = set(db.protocol.scenes) | ({TRAINING_SCENE} if training else set())
    for candidate in candidates:
        if candidate.scene not in allowed:
            raise StimulusError(
                f"{candidate.origin}: scene '{candidate.scene}' is not in the protocol's scenes "
                f"({', '.join(db.protocol.scenes)}); rename the folder/entry or pass --scene"
            )
    _refuse_two_scenes(candidates)
    with db.Session() as session:
        stored = session.execute(
            sa.select(Stimulus.path, Stimulus.sha256, Stimulus.scene, Stimulus.training).where(Stimulus.study_id == db.study_id)
        ).all()
    known = {path: (sha, stored_scene) for path, sha, stored_scene, _ in stored}
    # One image is one stimulus: the same content under a second path (or scene) would be counted twice.
    by_content = {sha: (stored_scene, path) for path, sha, stored_scene, flag in stored if flag == training}
    checked: dict[Path, CheckedImage] = {}
    seen: set[Path] = set()
    already = 0
    for number, candidate in enumerate(candidates, start=1):
        if candidate.path in seen:  # listed twice under the same scene: one stimulus
            continue
        seen.add(candidate.path)
        image = check_image(candidate, allow_downscale=downscale_into is not None)
        previous = known.get(str(candidate.path))
        if previous is not None:
            if previous[0] != image.sha256:
                raise StimulusError(
                    f"{candidate.origin}: {candidate.path} changed since it was imported (sha256 differs); "
                    "save the new version under a new name"
                )
            if previous[1] != candidate.scene:
                raise StimulusError(
                    f"{candidate.where}: the image is in the study under scene '{previous[1]}' already; "
                    "an image belongs to one scene, so fix the folder/entry or import a copy of another image"
                )
            already += 1
        else:
            twin = by_content.get(image.sha256)
            if twin is not None:
                raise StimulusError(
                    f"{candidate.where}: the same image (identical content) as {twin[1]} "
                    f"under scene '{twin[0]}'; list each image once, under one scene"
                )
            by_content[image.sha256] = (candidate.scene, str(candidate.path))
            checked[candidate.path] = image
        if progress is not None:
            progress(number, len(candidates))
    # Copies are written only once every image has passed, so a refused import leaves nothing behind.
    fresh = [write_downscaled(image, Path(downscale_into)) if image.needs_downscale else image for image in checked.values()]
    with db.Session.begin() as session:
        _add_stimuli(session, db.study_id, fresh, training=training)
    return ImportReport(len(fresh), already, dict(Counter(image.candidate.scene for image in fresh)))


def _refuse_two_scenes(candidates: list[Candidate]) -> None:
    first: dict[Path, Candidate] = {}
    for candidate in candidates:
        earlier = first.setdefault(candidate.path, candidate)
        if earlier.scene != candidate.scene:
            raise StimulusError(
                f"{candidate.where}: listed under scene '{candidate.scene}' here and under "
                f"'{earlier.scene}' at {earlier.origin}; list each image under one scene"
            )


def check_code(protocol: Protocol, code: str) -> str:
    """``code`` itself if it is a pseudonymous code the protocol's ``enrolment.code_pattern`` accepts (the whole
    code) and of 1-32 letters, digits, ``-`` and ``_``; StoreError with the pattern otherwise."""
    enrolment = protocol.enrolment

    def valid(text: str) -> bool:
        return bool(PARTICIPANT_CODE.fullmatch(text)) and re.fullmatch(enrolment.code_pattern, text) is not None

    if valid(code):
        return code
    if re.fullmatch(enrolment.code_pattern, code) is None:
        examples = f"; e.g. {', '.join(enrolment.code_examples)}" if enrolment.code_examples else ""
        rule = f"codes match {enrolment.code_pattern} (the protocol's enrolment.code_pattern{examples})"
    else:
        rule = "codes are 1-32 letters, digits, '-' or '_'"
    hint = f"; did you mean {code.upper()!r}?" if code != code.upper() and valid(code.upper()) else ""
    raise StoreError(f"participant code {code!r} is invalid: {rule}; use a pseudonym, never a name or an e-mail "
                     f"address{hint}")


def check_demographics(protocol: Protocol, *, age: int | None = None, gender: str | None = None,
                       vision_correction: str | None = None) -> None:
    """Refuses demographics the protocol's ``[enrolment]`` does not allow, naming the option and the choices.

    Raises
    ------
    StoreError
        If ``age`` is outside ``age_min..age_max``, or ``gender`` / ``vision_correction`` is not one of the
        field's choices (nor, where the field allows free text, a few words of letters).
    """
    enrolment = protocol.enrolment
    if age is not None and (isinstance(age, bool) or not enrolment.age_min <= age <= enrolment.age_max):
        raise StoreError(
            f"--age {age} is not an age in years within {enrolment.age_min}..{enrolment.age_max} (the protocol's "
            "enrolment.age_min/age_max); give the age in years, or leave it out if unknown"
        )
    for option, name, value in (("--gender", "gender", gender), ("--vision-correction", "vision_correction", vision_correction)):
        allowed = getattr(enrolment, name)
        if value is None or value in allowed.choices:
            continue
        if allowed.free_text and len(value) <= MAX_FREE_TEXT and FREE_TEXT.fullmatch(value):
            continue
        choices = ", ".join(repr(choice) for choice in allowed.choices) or "none"
        if allowed.free_text:
            raise StoreError(
                f"{option} {value!r} is neither one of {choices} nor a short free-text answer (words of letters, "
                f"spaces, '-', \"'\" or '/', at most {MAX_FREE_TEXT} characters); leave it out rather than record more"
            )
        raise StoreError(
            f"{option} {value!r} is not one of the protocol's choices ({choices}; enrolment.{name}); give one of them "
            "exactly, or leave it out"
        )


def retry_conflicts(work: Callable[[], T]) -> T:
    """Runs ``work`` (one transaction) until it commits, again as long as a concurrent caller won the race.

    Concurrent enrolments may pick the same next number, concurrent starts the same session number: the
    unique keys decide, and the loser tries again (and then sees the winner's row). SQLite refuses a
    transaction whose snapshot another writer has overtaken at once ("locked"), PostgreSQL may report a
    serialisation failure or a deadlock; a lock that is simply held was already waited for (busy_timeout,
    lock_timeout), so the retries stop at the same bound.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    attempt = 0
    while True:
        try:
            return work()
        except (sa.exc.IntegrityError, sa.exc.OperationalError) as exc:
            attempt += 1
            conflict = (isinstance(exc, sa.exc.IntegrityError) or "locked" in str(exc.orig).lower()
                        or getattr(exc.orig, "sqlstate", None) in ("40001", "40P01"))
            if not conflict or attempt >= CONFLICT_ATTEMPTS or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05) * attempt)


def add_participant(
    db: StudyDB,
    code: str,
    *,
    age: int | None = None,
    gender: str | None = None,
    vision_correction: str | None = None,
) -> Participant:
    """Enrols a participant under a pseudonymous code; their enrolment number is the next free one.

    The code must match the protocol's ``enrolment.code_pattern``, and the optional demographics its
    choices (:func:`check_code`, :func:`check_demographics`). Participants enrolled earlier are never checked
    again: the pattern applies at enrolment.

    Raises
    ------
    StoreError
        If the code is not a pseudonymous code of the protocol's pattern, is already enrolled, or a
        demographic value is not one the protocol allows.
    """
    check_code(db.protocol, code)
    check_demographics(db.protocol, age=age, gender=gender, vision_correction=vision_correction)
    return retry_conflicts(lambda: _enrol_once(db, code, age=age, gender=gender, vision_correction=vision_correction))


def _enrol_once(db: StudyDB, code: str, **demographics) -> Participant:
    with db.Session.begin() as session:
        exists = session.scalar(
            sa.select(Participant.id).where(Participant.study_id == db.study_id, Participant.code == code)
        )
        if exists is not None:
            raise StoreError(f"participant code {code!r} is already enrolled in this study; choose another code")
        number = session.scalar(
            sa.select(sa.func.coalesce(sa.func.max(Participant.number) + 1, 0)).where(Participant.study_id == db.study_id)
        )
        participant = Participant(study_id=db.study_id, code=code, number=number, **demographics)
        session.add(participant)
    return participant


@contextmanager
def running(db: StudyDB, code: str) -> Iterator[None]:
    """Holds the participant's run lock while the block runs: one participant's session runs on one station
    (one process) at a time, and nobody withdraws or erases them meanwhile.

    The lock is the database system's own (:func:`study.database.try_run_lock`), so a process that dies,
    even by ``kill -9``, releases it at once and ``session resume`` can follow straight away.

    Raises
    ------
    StoreError
        If the participant is not enrolled.
    SessionError
        If another process holds the participant's lock: it is running a session of theirs now.
    """
    with db.Session() as session:
        participant = get_participant(session, db, code)
        open_row = session.execute(
            sa.select(StudySession.id, StudySession.number, StudySession.station)
            .where(StudySession.participant_id == participant.id, StudySession.status.in_(("planned", "running")))
            .order_by(StudySession.number.desc())
        ).first()
        where = ""
        if open_row is not None:
            resumed = session.scalars(
                sa.select(Event.detail).where(Event.session_id == open_row.id, Event.kind == "resumed")
                .order_by(Event.id.desc())
            ).first()
            station = (resumed or {}).get("station") or open_row.station
            where = f" (session {open_row.number}" + (f", on station {station})" if station else ")")
    release = try_run_lock(db.url, db.engine, participant.id)
    if release is None:
        raise SessionError(
            f"participant {code!r} has a session running right now{where} in another panostudy process; one "
            "participant's session runs on one station at a time: let it finish, or stop it there, then run "
            "this command again"
        )
    try:
        yield
    finally:
        release()


def get_participant(session: so.Session, db: StudyDB, code: str) -> Participant:
    """The participant with ``code``; StoreError naming the code if there is none."""
    participant = session.scalars(
        sa.select(Participant).where(Participant.study_id == db.study_id, Participant.code == code)
    ).one_or_none()
    if participant is None:
        raise StoreError(f"participant {code!r} is not enrolled; add them with 'panostudy study add-participant'")
    return participant


@dataclass(frozen=True)
class ErasureReport:
    """What :func:`delete_participant` erased and verified.

    Attributes
    ----------
    deleted : bool
        The participant's rows were deleted now (False: a repeat that only finished an earlier erasure).
    verified_files : tuple of Path
        SQLite files searched for the participant's code and free-text fields afterwards, and found clean.
    remaining : str or None
        What is still physically stored elsewhere (PostgreSQL heap files and WAL) and how to complete it.
    """

    deleted: bool
    verified_files: tuple[Path, ...]
    remaining: str | None


#: Tables a participant's data lives in (for VACUUM FULL on PostgreSQL).
PARTICIPANT_TABLES = ("participant", "session", "trial", "answer", "ssq_answer", "step_done", "pose_sample", "gaze_sample",
                      "validation_run", "validation_target", "validation_sample", "event")


def delete_participant(db: StudyDB, code: str, *, wait_s: float = 10.0, vacuum_full: bool = False) -> ErasureReport:
    """Removes every trace of one participant (data protection): sessions, answers, SSQ, poses, gaze,
    validations, events.

    On SQLite, ``secure_delete`` zeroes the freed pages and a ``wal_checkpoint(TRUNCATE)`` moves them into
    the main file and empties the WAL; then both files are searched for the participant's code and
    free-text fields. The checkpoint waits up to ``wait_s`` for readers (another process holding a read
    transaction keeps old pages alive); if it cannot complete, the rows are deleted but the erasure is
    reported unfinished, naming the reader, and running the command again completes it.

    On PostgreSQL the rows are deleted, but their old versions stay in the tables' files until ``VACUUM
    FULL`` rewrites them (``vacuum_full=True`` runs it), and in the server's write-ahead log until it is
    recycled; :attr:`ErasureReport.remaining` says so.

    Raises
    ------
    StoreError
        If no participant has this code (and nothing of it is left in the files), or the erasure cannot be
        completed because a reader blocks the checkpoint.
    """
    path = sqlite_file(db.url)
    traces = _traces(db, code)
    deleted = traces is not None
    if not deleted:
        # A repeat finishes an earlier erasure: the WAL checkpoint on SQLite, VACUUM FULL on a server.
        unfinished = _files_holding(path, [code]) if path is not None else vacuum_full
        if not unfinished:
            where = "the database files" if path is not None else "the database"
            raise StoreError(
                f"participant {code!r} is not enrolled, and nothing of that code is left in {where}; "
                "check the code (nothing was deleted)"
            )
        traces = [code]
    with db.engine.connect() as connection:
        if path is not None:
            connection.exec_driver_sql("PRAGMA secure_delete=ON")
        if deleted:
            # not while a session of theirs runs: its next answer would have no participant
            with running(db, code):
                with so.Session(bind=connection) as session, session.begin():
                    participant = get_participant(session, db, code)
                    # Core delete: the foreign keys cascade in the database, without loading pose samples.
                    session.execute(sa.delete(Participant).where(Participant.id == participant.id))
                connection.commit()
        if path is None:
            return ErasureReport(deleted, (), _finish_server_erasure(db, vacuum_full))
        _checkpoint(connection, path, code, wait_s)
        connection.exec_driver_sql("PRAGMA secure_delete=OFF")
    found = _files_holding(path, traces)
    if found:
        raise StoreError(
            f"{path}: participant {code!r} was deleted but {', '.join(p.name for p in found)} still hold(s) their "
            "data; run 'panostudy study delete-participant' again, and report this if it persists"
        )
    files = tuple(p for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    return ErasureReport(deleted, files, None)


def _traces(db: StudyDB, code: str) -> list[str] | None:
    """The participant's code and free-text values to search the files for (None: not enrolled).

    Values another participant shares (a gender, a common withdrawal reason) stay legitimately in the file,
    so only the code and values unique to this participant are searched."""
    with db.Session() as session:
        participant = session.scalars(
            sa.select(Participant).where(Participant.study_id == db.study_id, Participant.code == code)
        ).one_or_none()
        if participant is None:
            return None
        texts = {participant.gender, participant.vision_correction}
        texts |= set(session.scalars(sa.select(StudySession.withdraw_reason).where(StudySession.participant_id == participant.id)))
        unique = [code]
        for text in sorted(t for t in texts if t and len(t) >= 4):
            shared = session.scalar(
                sa.select(sa.func.count()).select_from(Participant).outerjoin(StudySession)
                .where(Participant.id != participant.id)
                .where(sa.or_(Participant.gender == text, Participant.vision_correction == text,
                              StudySession.withdraw_reason == text))
            )
            if not shared:
                unique.append(text)
        return unique


def _files_holding(path: Path, texts: list[str]) -> list[Path]:
    """The database file and WAL among those that contain any of ``texts`` (UTF-8 bytes)."""
    needles = [t.encode("utf-8") for t in texts]
    found = []
    for file in (path, path.with_name(path.name + "-wal")):
        if not file.exists() or file.stat().st_size == 0:
            continue
        with open(file, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if any(data.find(needle) >= 0 for needle in needles):
                found.append(file)
    return found


def _checkpoint(connection: sa.Connection, path: Path, code: str, wait_s: float) -> None:
    """Runs ``wal_checkpoint(TRUNCATE)`` until it completes or ``wait_s`` passes (readers block it)."""
    deadline = time.monotonic() + wait_s
    while True:
        busy, log, moved = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
        if not busy and log == moved:
            return
        if time.monotonic() >= deadline:
            holders = sqlite_lock_holders(path)
            who = "; ".join(holders) if holders else "another connection"
            raise StoreError(
                f"{path}: participant {code!r}'s rows are deleted, but copies of them stay in {path.name}-wal while "
                f"{who} keeps the database open for reading; close it, then run "
                f"'panostudy study delete-participant --code {code} --yes' again to finish the erasure"
            )
        time.sleep(0.2)


def _finish_server_erasure(db: StudyDB, vacuum_full: bool) -> str:
    tables = ", ".join(PARTICIPANT_TABLES)
    if not vacuum_full:
        return (
            f"the rows are deleted and no query returns them, but PostgreSQL keeps their old versions in the "
            f"files of the tables {tables} until VACUUM FULL rewrites them, and in the server's write-ahead "
            "log (and any backups or replicas) until those are recycled; to remove them from the table files "
            "run the command again with --vacuum-full (it locks those tables exclusively while it rewrites "
            "them, so no session can run meanwhile, and needs free disk space about their size)"
        )
    started = time.monotonic()
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as autocommit:
        autocommit.exec_driver_sql(f"VACUUM FULL {tables}")
    return (
        f"VACUUM FULL rewrote the tables {tables} in {time.monotonic() - started:.1f} s, so their files no longer "
        "hold the rows; the server's write-ahead log (and any backups or replicas) keeps them until those are "
        "recycled, which panostudy cannot force"
    )


def session_status_counts(db: StudyDB) -> dict[str, int]:
    """Number of sessions per status (planned, running, completed, withdrawn)."""
    with db.Session() as session:
        rows = session.execute(
            sa.select(StudySession.status, sa.func.count())
            .join(Participant)
            .where(Participant.study_id == db.study_id)
            .group_by(StudySession.status)
        ).all()
        return dict(rows)


# -- schema migrations ------------------------------------------------------------------------------------

def _migrate_1_to_2(connection: sa.Connection) -> None:
    """Version 2: numbered sessions with a station and the ``declined`` status (several per participant);
    pose samples with presentation, interruption flag, field of view, position and runtime time.

    SQLite cannot drop the old ``UNIQUE(participant_id)`` or change a CHECK in place, so the session table
    is rebuilt the documented way (new table, copy, drop, rename); its id values stay, so every reference
    to a session stays valid.
    """
    session_table = StudySession.__table__
    if connection.dialect.name == "sqlite":
        create = str(sa.schema.CreateTable(session_table).compile(connection))
        connection.exec_driver_sql(create.replace("CREATE TABLE session ", "CREATE TABLE session_v2 ", 1))
        old = ", ".join(c.name for c in session_table.columns if c.name not in ("number", "station"))
        connection.exec_driver_sql(f"INSERT INTO session_v2 ({old}, number) SELECT {old}, 1 FROM session")
        connection.exec_driver_sql("DROP TABLE session")
        connection.exec_driver_sql("ALTER TABLE session_v2 RENAME TO session")
        for index in session_table.indexes:
            index.create(connection)
    else:
        for unique in sa.inspect(connection).get_unique_constraints("session"):
            if unique["column_names"] == ["participant_id"]:
                connection.execute(sa.text(f'ALTER TABLE session DROP CONSTRAINT "{unique["name"]}"'))
        connection.execute(sa.text("ALTER TABLE session DROP CONSTRAINT IF EXISTS session_status"))
        connection.execute(sa.text("ALTER TABLE session ADD COLUMN number INTEGER NOT NULL DEFAULT 1"))
        connection.execute(sa.text("ALTER TABLE session ADD COLUMN station VARCHAR(64)"))
        for constraint in session_table.constraints:
            if isinstance(constraint, (sa.UniqueConstraint, sa.CheckConstraint)) and constraint.name:
                connection.execute(sa.schema.AddConstraint(constraint))
        for index in session_table.indexes:
            index.create(connection, checkfirst=True)
    false = "0" if connection.dialect.name == "sqlite" else "FALSE"
    for name, kind in {"presentation": "INTEGER NOT NULL DEFAULT 0", "interrupted": f"BOOLEAN NOT NULL DEFAULT {false}",
                       "fov_h_deg": "FLOAT", "fov_v_deg": "FLOAT", "x_m": "FLOAT", "y_m": "FLOAT", "z_m": "FLOAT",
                       "runtime_time_ns": "BIGINT"}.items():
        connection.execute(sa.text(f"ALTER TABLE pose_sample ADD COLUMN {name} {kind}"))


def _migrate_2_to_3(connection: sa.Connection) -> None:
    """Version 3: the gaze tables (trial gaze samples; validation attempts, their targets and samples). Nothing
    else changes, so every earlier row stays as it is."""
    for model in (GazeSample, ValidationRun, ValidationTarget, ValidationSample):
        model.__table__.create(connection)


#: Schema version → the function that brings a database of that version to the next one.
MIGRATIONS: dict[int, Callable[[sa.Connection], None]] = {1: _migrate_1_to_2, 2: _migrate_2_to_3}


def _migration_engine(url: str) -> sa.Engine:
    """An engine whose transactions cover DDL too. PostgreSQL's do already; pysqlite would commit each
    CREATE/DROP on its own (SQLAlchemy's recipe for transactional DDL on SQLite), and the rebuild of a
    table needs foreign keys off."""
    if sqlite_file(url) is None:
        return make_engine(url)
    engine = sa.create_engine(url)

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, connection_record):
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys=OFF")
        dbapi_connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    @sa.event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def migrate_study(db: str | Path) -> tuple[int, Path | None]:
    """Brings a study database of an older schema version to :data:`SCHEMA_VERSION` in one transaction.

    A SQLite file is first copied (SQLite's online backup) to ``<file>.schema<old version>.bak``: the way
    back. If any step fails, the database is left as it was (and the copy is removed again).

    Returns
    -------
    (int, Path or None)
        The version the database had, and the backup file (None for a server database: back it up with
        its own tools first, and None when the database is current already: then nothing is touched).

    Raises
    ------
    StoreError
        If there is no panostudy database there, it is of a version this panostudy cannot migrate, or
        the migration fails.
    """
    url, path, checker = _probe(db)
    name = shown(url)
    try:
        if not sa.inspect(checker).has_table(SchemaInfo.__tablename__):
            raise StoreError(f"{name}: not a panostudy study database (no schema_info table); nothing to migrate")
        with checker.connect() as connection:
            original = connection.scalar(sa.select(sa.func.max(SchemaInfo.__table__.c.version)))
    except sa.exc.DBAPIError as exc:
        raise database_error(exc, url, during="study migrate") from None
    finally:
        checker.dispose()
    if original == SCHEMA_VERSION:
        return original, None
    if original not in MIGRATIONS:
        raise StoreError(f"{name}: schema_info.version is {original}; this panostudy migrates versions "
                         f"{', '.join(map(str, MIGRATIONS))} to {SCHEMA_VERSION} only")
    backup = None
    if path is not None:
        backup = path.with_name(f"{path.name}.schema{original}.bak")
        if backup.exists():
            raise StoreError(f"{backup}: a backup of an earlier migration is there; move it away first")
    engine = _migration_engine(url)
    try:
        if backup is not None:
            _sqlite_copy(path, backup)
        with engine.begin() as connection:
            version = original
            while version in MIGRATIONS:
                MIGRATIONS[version](connection)
                version += 1
            connection.execute(sa.delete(SchemaInfo.__table__))
            connection.execute(sa.insert(SchemaInfo.__table__).values(version=version, created_at=utc_now()))
            if connection.dialect.name == "sqlite":
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise StoreError(f"{name}: the migration would break references ({broken[0]}); the database is unchanged")
    except BaseException as exc:
        if backup is not None:
            backup.unlink(missing_ok=True)
        if isinstance(exc, sa.exc.SQLAlchemyError):
            detail = mask_secrets(str(getattr(exc, "orig", exc)), url)
            raise StoreError(f"{name}: cannot migrate the database ({detail}); it is unchanged") from None
        raise
    finally:
        engine.dispose()
    return original, backup


def _sqlite_copy(path: Path, target: Path) -> None:
    """A consistent copy of a SQLite database (the WAL included) through SQLite's backup API."""
    import sqlite3

    source = sqlite3.connect(path)
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()
