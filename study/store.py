"""The study database: opening it safely, and the writes that are not part of a session.

SQLite is the default (a path is enough); any SQLAlchemy URL works. Every SQLite connection runs with
``journal_mode=WAL`` (readers never block the session's writer), ``foreign_keys=ON`` (cascading deletes)
and ``synchronous=FULL`` (a committed answer survives a crash or power loss). Each unit of work runs in
``with db.Session.begin()``, so it commits as a whole or not at all.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
import sqlalchemy.orm as so

from study.errors import StimulusError, StoreError
from study.models import (
    SCHEMA_VERSION,
    Base,
    Participant,
    SchemaInfo,
    Stimulus,
    Study,
    StudySession,
    utc_now,
)
from study.protocol import DEFAULT_PROTOCOL, Protocol, load_protocol, parse_protocol
from study.stimuli import Candidate, CheckedImage, check_image, collect, write_downscaled

#: Pseudonymous participant codes only: letters, digits, ``-`` and ``_`` (no names, no e-mail addresses).
PARTICIPANT_CODE = re.compile(r"[A-Za-z0-9_-]{1,32}")
#: Station names (the machine a session ran on) go into exports and file names: keep them plain.
STATION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Scene given to training panoramas whose folder is not one of the protocol's scenes.
TRAINING_SCENE = "training"


@dataclass
class StudyDB:
    """An open study database: its engine, a ``sessionmaker`` and the study's protocol."""

    url: str
    engine: sa.Engine
    Session: so.sessionmaker[so.Session]
    study_id: int
    protocol: Protocol

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


def database_url(db: str | Path) -> str:
    """A SQLAlchemy URL: ``db`` itself if it is one, else the URL of a SQLite file at that path."""
    text = str(db)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def _sqlite_file(url: str) -> Path | None:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _set_sqlite_pragmas(dbapi_connection, connection_record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    # A second process (a monitor, an export) may hold the lock briefly; wait rather than fail.
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _make_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _set_sqlite_pragmas)
    return engine


def _check_writable(path: Path, *, creating: bool) -> None:
    folder = path.parent
    if creating:
        if path.exists():
            raise StoreError(f"{path}: a file already exists there; choose a new --db path or open the existing study")
        if not folder.is_dir():
            raise StoreError(f"{path}: folder {folder} does not exist or is not a folder; create it first")
    elif not path.is_file():
        raise StoreError(f"{path}: no study database there; create one with 'panostudy study init --db {path}'")
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


def create_study(db: str | Path, protocol: Protocol | str | Path, *, base_dir: str | Path | None = None) -> StudyDB:
    """Creates a study database for ``protocol`` and imports the protocol's training panoramas.

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
        If the path exists, is not writable, or the database already holds a study.
    StimulusError
        If a training panorama fails validation (nothing is written then).
    """
    if isinstance(protocol, Protocol):
        source, base = "<stored protocol>", Path(base_dir) if base_dir is not None else DEFAULT_PROTOCOL.parent
    else:
        source, base = str(protocol), Path(protocol).resolve().parent
        protocol = load_protocol(protocol)
    url = database_url(db)
    path = _sqlite_file(url)
    if path is not None:
        _check_writable(path, creating=True)
    training = [check_image(c) for c in _training_candidates(protocol)]
    engine = _make_engine(url)
    try:
        if sa.inspect(engine).has_table(SchemaInfo.__tablename__):
            raise StoreError(f"{url}: the database already holds a study; choose a new --db")
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
    except sa.exc.OperationalError as exc:
        engine.dispose()
        raise StoreError(f"{url}: cannot write the database ({exc.orig}); check the path and its permissions") from None
    except BaseException:
        engine.dispose()
        raise
    return StudyDB(url, engine, Session, study_id, protocol)


def _training_candidates(protocol: Protocol) -> list[Candidate]:
    found = []
    for raw in protocol.training.stimuli:
        path = Path(raw)
        scene = path.parent.name if path.parent.name in protocol.scenes else TRAINING_SCENE
        found.append(Candidate(path, scene, f"training.stimuli ({raw})"))
    return found


def open_study(db: str | Path) -> StudyDB:
    """Opens an existing study database after checking its schema version.

    Raises
    ------
    StoreError
        If there is no database, it is not writable, not a panostudy database, or of another schema version.
    """
    url = database_url(db)
    path = _sqlite_file(url)
    if path is not None:
        _check_writable(path, creating=False)
    engine = _make_engine(url)
    try:
        if not sa.inspect(engine).has_table(SchemaInfo.__tablename__):
            raise StoreError(f"{url}: not a panostudy study database (no schema_info table); create one with 'panostudy study init'")
        Session = _sessionmaker(engine)
        with Session() as session:
            version = session.scalar(sa.select(sa.func.max(SchemaInfo.version)))
            if version is None or version != SCHEMA_VERSION:
                if version in MIGRATIONS:
                    fix = f"run 'panostudy study migrate --db {db}' once (it keeps a copy of the old file)"
                elif version is not None and version > SCHEMA_VERSION:
                    fix = "upgrade panostudy"
                else:
                    fix = "re-create it with this panostudy"
                raise StoreError(
                    f"{url}: schema_info.version is {version}, this panostudy reads version {SCHEMA_VERSION}; {fix}"
                )
            study = session.scalars(sa.select(Study)).one_or_none()
            if study is None:
                raise StoreError(f"{url}: the database holds no study; create one with 'panostudy study init'")
            # The training panoramas are in the stimulus table already; they need not be where they were at init.
            protocol = parse_protocol(
                study.protocol_text, source=study.protocol_source, base_dir=study.protocol_base_dir, check_files=False
            )
    except sa.exc.OperationalError as exc:
        engine.dispose()
        raise StoreError(f"{url}: cannot read the database ({exc.orig}); is it a SQLite study file?") from None
    except BaseException:
        engine.dispose()
        raise
    return StudyDB(url, engine, Session, study.id, protocol)


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
    with db.Session() as session:
        known = dict(session.execute(sa.select(Stimulus.path, Stimulus.sha256).where(Stimulus.study_id == db.study_id)).all())
    checked: dict[Path, CheckedImage] = {}
    already = 0
    for number, candidate in enumerate(candidates, start=1):
        if candidate.path in checked:
            continue
        image = check_image(candidate, allow_downscale=downscale_into is not None)
        stored = known.get(str(candidate.path))
        if stored is not None:
            if stored != image.sha256:
                raise StimulusError(
                    f"{candidate.origin}: {candidate.path} changed since it was imported (sha256 differs); "
                    "save the new version under a new name"
                )
            already += 1
        else:
            checked[candidate.path] = image
        if progress is not None:
            progress(number, len(candidates))
    # Copies are written only once every image has passed, so a refused import leaves nothing behind.
    fresh = [write_downscaled(image, Path(downscale_into)) if image.needs_downscale else image for image in checked.values()]
    with db.Session.begin() as session:
        _add_stimuli(session, db.study_id, fresh, training=training)
    return ImportReport(len(fresh), already, dict(Counter(image.candidate.scene for image in fresh)))


def add_participant(
    db: StudyDB,
    code: str,
    *,
    age: int | None = None,
    gender: str | None = None,
    vision_correction: str | None = None,
) -> Participant:
    """Enrols a participant under a pseudonymous code; their enrolment number is the next free one.

    Raises
    ------
    StoreError
        If the code is not a pseudonymous code, is already enrolled, or ``age`` is implausible.
    """
    if not PARTICIPANT_CODE.fullmatch(code):
        raise StoreError(
            f"participant code {code!r} is invalid; use 1-32 letters, digits, '-' or '_' (a pseudonym, never a name)"
        )
    if age is not None and not 0 < age < 130:
        raise StoreError(f"--age {age} is not an age in years; leave it out if unknown")
    with db.Session.begin() as session:
        exists = session.scalar(
            sa.select(Participant.id).where(Participant.study_id == db.study_id, Participant.code == code)
        )
        if exists is not None:
            raise StoreError(f"participant code {code!r} is already enrolled in this study; choose another code")
        number = session.scalar(
            sa.select(sa.func.coalesce(sa.func.max(Participant.number) + 1, 0)).where(Participant.study_id == db.study_id)
        )
        participant = Participant(
            study_id=db.study_id, code=code, number=number, age=age, gender=gender, vision_correction=vision_correction
        )
        session.add(participant)
    return participant


def get_participant(session: so.Session, db: StudyDB, code: str) -> Participant:
    """The participant with ``code``; StoreError naming the code if there is none."""
    participant = session.scalars(
        sa.select(Participant).where(Participant.study_id == db.study_id, Participant.code == code)
    ).one_or_none()
    if participant is None:
        raise StoreError(f"participant {code!r} is not enrolled; add them with 'panostudy study add-participant'")
    return participant


def delete_participant(db: StudyDB, code: str) -> None:
    """Removes every trace of one participant (data protection): sessions, answers, SSQ, poses, events.

    SQLite's ``secure_delete`` overwrites the freed pages and a WAL checkpoint truncates the log, so the
    removed data does not linger in the file either.

    Raises
    ------
    StoreError
        If no participant has this code.
    """
    with db.engine.connect() as connection:
        if db.engine.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA secure_delete=ON")
        with so.Session(bind=connection) as session, session.begin():
            participant = get_participant(session, db, code)
            # Core delete: the foreign keys cascade in the database, without loading pose samples.
            session.execute(sa.delete(Participant).where(Participant.id == participant.id))
        connection.commit()
        if db.engine.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            connection.exec_driver_sql("PRAGMA secure_delete=OFF")


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


#: Schema version → the function that brings a database of that version to the next one.
MIGRATIONS: dict[int, Callable[[sa.Connection], None]] = {1: _migrate_1_to_2}


def _migration_engine(url: str) -> sa.Engine:
    """An engine whose transactions cover DDL too: pysqlite would otherwise commit each CREATE/DROP on its
    own (SQLAlchemy's recipe for transactional DDL on SQLite), with foreign keys off for the rebuild."""
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_connection, connection_record):
            dbapi_connection.isolation_level = None
            dbapi_connection.execute("PRAGMA foreign_keys=OFF")
            dbapi_connection.execute("PRAGMA busy_timeout=5000")

        @sa.event.listens_for(engine, "begin")
        def _begin(connection):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
    return engine


def migrate_study(db: str | Path) -> tuple[int, Path | None]:
    """Brings a study database of an older schema version to :data:`SCHEMA_VERSION` in one transaction.

    A SQLite file is first copied (SQLite's online backup) to ``<file>.schema<old version>.bak``: the way
    back. If any step fails, the database is left as it was.

    Returns
    -------
    (int, Path or None)
        The version the database had, and the backup file (None for a server database: back it up with
        its own tools first).

    Raises
    ------
    StoreError
        If there is no panostudy database there, it is current already, or of a version this panostudy
        cannot migrate.
    """
    url = database_url(db)
    path = _sqlite_file(url)
    if path is not None:
        _check_writable(path, creating=False)
    engine = _migration_engine(url)
    try:
        if not sa.inspect(engine).has_table(SchemaInfo.__tablename__):
            raise StoreError(f"{url}: not a panostudy study database (no schema_info table); nothing to migrate")
        with engine.connect() as connection:
            original = connection.scalar(sa.select(sa.func.max(SchemaInfo.__table__.c.version)))
        if original == SCHEMA_VERSION:
            raise StoreError(f"{url}: already at schema version {SCHEMA_VERSION}; nothing to migrate")
        if original not in MIGRATIONS:
            raise StoreError(f"{url}: schema_info.version is {original}; this panostudy migrates versions "
                             f"{', '.join(map(str, MIGRATIONS))} to {SCHEMA_VERSION} only")
        backup = None
        if path is not None:
            backup = path.with_name(f"{path.name}.schema{original}.bak")
            if backup.exists():
                raise StoreError(f"{backup}: a backup of an earlier migration is there; move it away first")
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
                    raise StoreError(f"{url}: the migration would break references ({broken[0]}); the database is unchanged")
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"{url}: cannot migrate the database ({getattr(exc, 'orig', exc)}); it is unchanged") from None
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
