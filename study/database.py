"""Reaching a study database safely: URLs, engines, the read-only check, locks and errors.

A ``--db`` is a SQLite file path or a SQLAlchemy URL. Three rules hold for every one of them:

- **A password is never shown.** :func:`shown` is how a database appears in any message; :func:`mask_secrets`
  scrubs a text (a driver's error, say) of the URL's password.
- **A file is read, read-only, before anything is written to it.** :func:`check_sqlite_file` reads the
  header; :func:`read_only_engine` opens it with ``mode=ro``, so a foreign or damaged file is refused
  unchanged (no WAL switch, no journal, no ``-wal``/``-shm`` files left beside it).
- **One process runs one participant's session.** :func:`try_run_lock` takes a lock the database system
  itself keeps (a PostgreSQL advisory lock, a byte-range lock on the SQLite file), so it goes with its
  process, even one killed with ``kill -9``, and needs no file or row of its own.
- **A driver's failure becomes one line.** :func:`database_error` turns the errors a user can cause (a lock
  held by someone else, a full disk, a read-only file, a server that does not answer) into a
  :class:`~study.errors.StoreError` naming the database, the cause and what to do.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa

from study.errors import StoreError

#: SQLite waits this long for a lock held by another connection before it gives up (milliseconds).
BUSY_TIMEOUT_MS = 5000
#: The same bound for PostgreSQL's row and table locks.
PG_LOCK_TIMEOUT = "5s"
#: How a panostudy connection names itself to a PostgreSQL server (``pg_stat_activity.application_name``).
APPLICATION_NAME = "panostudy"

#: Run locks: PostgreSQL advisory locks of this class (the first of their two keys, "pano"); on SQLite
#: byte-range locks from this offset of the database file on, far beyond the bytes SQLite locks (at 1 GiB).
RUN_LOCK_CLASS = 0x70616E6F
RUN_LOCK_OFFSET = 1 << 62

_SQLITE_MAGIC = b"SQLite format 3\x00"
_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")


def database_url(db: str | Path) -> str:
    """A SQLAlchemy URL: ``db`` itself if it is one, else the URL of a SQLite file at that path.

    ``postgresql://`` (and ``postgres://``) URLs get the psycopg 3 driver, the one panostudy installs.

    Raises
    ------
    StoreError
        If the path holds a NUL byte or the URL cannot be parsed.
    """
    text = str(db)
    if "\x00" in text:
        raise StoreError(f"--db {text!r}: the path contains a NUL byte; give a plain file path or URL")
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    for plain in ("postgresql://", "postgres://"):
        if text.startswith(plain):
            text = "postgresql+psycopg://" + text[len(plain) :]
    try:
        sa.make_url(text)
    except sa.exc.ArgumentError:
        raise StoreError(
            f"--db {_masked_text(text)}: not a database URL; give a SQLite file path or e.g. "
            "postgresql://user@host/dbname"
        ) from None
    return text


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for other databases and in-memory SQLite."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def shown(url: str) -> str:
    """How a database is named in messages: a SQLite file by its path, any other URL with its password masked."""
    path = sqlite_file(url)
    if path is not None:
        return str(path)
    return sa.make_url(url).render_as_string(hide_password=True)


def _masked_text(text: str) -> str:
    return _PASSWORD_IN_URL.sub(r"\1***@", text)


def mask_secrets(text: str, db: str | Path | None) -> str:
    """``text`` with the password of ``db`` (and any ``user:password@`` of a URL) replaced by ``***``."""
    text = _masked_text(text)
    if db is None or "://" not in str(db):
        return text
    try:
        password = sa.make_url(str(db)).password
    except sa.exc.ArgumentError:
        return text
    if password:
        for form in {str(password), quote(str(password), safe="")}:
            text = text.replace(form, "***")
    return text


# -- engines -------------------------------------------------------------------------------------------------


def _set_sqlite_pragmas(dbapi_connection, connection_record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    # A second process (a monitor, an export) may hold the lock briefly; wait rather than fail.
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()


def make_engine(url: str) -> sa.Engine:
    """The read-write engine of a database already known to be a study (or about to become one).

    Raises
    ------
    StoreError
        If the URL names a database kind or driver that is not installed.
    """
    options: dict = {}
    if sa.make_url(url).get_backend_name() == "postgresql":
        options["connect_args"] = {
            "application_name": APPLICATION_NAME,
            "connect_timeout": 10,
            "options": f"-c lock_timeout={PG_LOCK_TIMEOUT}",
        }
    engine = _create(url, **options)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _set_sqlite_pragmas)
    return engine


def _create(url: str, **options) -> sa.Engine:
    name = sa.make_url(url).drivername
    try:
        return sa.create_engine(url, **options)
    except sa.exc.NoSuchModuleError:
        raise StoreError(
            f"--db {shown(url)}: unknown database kind '{name}'; give a SQLite file path or a "
            "postgresql://user@host/dbname URL"
        ) from None
    except ImportError as exc:
        hint = "pip install 'panostudy[postgres]'" if name.startswith("postgresql") else f"install {exc.name}"
        raise StoreError(f"--db {shown(url)}: the driver for '{name}' is not installed ({exc.name}); {hint}") from None
    except (sa.exc.ArgumentError, TypeError, ValueError) as exc:
        raise StoreError(f"--db {shown(url)}: invalid database URL ({mask_secrets(str(exc), url)}); check it") from None


def check_sqlite_file(path: Path) -> None:
    """Refuses a file that cannot be a whole SQLite database, from its first 100 bytes and its size.

    Raises
    ------
    StoreError
        If the file is unreadable, empty, not SQLite, or shorter than its header says (truncated).
    """
    try:
        with open(path, "rb") as fh:
            header = fh.read(100)
        size = path.stat().st_size
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the database ({exc.strerror}); check its permissions") from None
    if not header:
        raise StoreError(f"{path}: the file is empty, not a panostudy study database; give the file 'panostudy study init' made")
    if not header.startswith(_SQLITE_MAGIC) or len(header) < 100:
        raise StoreError(f"{path}: not a SQLite database; give the study file 'panostudy study init' made")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The page count is valid when the "version-valid-for" number matches the change counter.
    counted = header[92:96] == header[24:28]
    # While a -wal file exists the database is open (or was not closed) and a checkpoint may be extending
    # the file right now, so its length proves nothing then.
    in_use = path.with_name(path.name + "-wal").exists()
    if page_size < 512 or size % page_size or (counted and size < pages * page_size and not in_use):
        raise StoreError(
            f"{path}: the database file is truncated or damaged ({size} bytes); restore it from a backup"
        )


def read_only_engine(url: str) -> sa.Engine:
    """An engine that cannot write: SQLite opened with ``mode=ro``, other databases in read-only transactions.

    A SQLite file in WAL mode that nobody has open (no ``-wal`` / ``-shm`` beside it) is opened
    ``immutable``: a plain read-only open would create those two files next to it, and removing them again
    could pull them from under a process that opened the database in the meantime.
    """
    path = sqlite_file(url)
    if path is None:
        engine = make_engine(url)

        @sa.event.listens_for(engine, "begin")
        def _read_only(connection) -> None:
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")

        return engine
    with open(path, "rb") as fh:
        wal_mode = fh.read(20)[18:20] == b"\x02\x02"
    in_use = any(path.with_name(path.name + suffix).exists() for suffix in ("-wal", "-shm"))
    uri = f"file:{quote(str(path))}?mode=ro" + ("&immutable=1" if wal_mode and not in_use else "")
    return sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False))


# -- run locks ----------------------------------------------------------------------------------------------


def try_run_lock(url: str, engine: sa.Engine, key: int) -> Callable[[], None] | None:
    """Takes the database's run lock ``key`` (a non-negative integer) unless someone else holds it.

    Returns the function that releases it, or None when another connection or process holds it. The lock
    is the database system's own, so a process that dies loses it at once: on PostgreSQL a session-level
    advisory lock on a connection kept (in autocommit) for the purpose; on SQLite an open-file-description
    lock on one byte of the database file beyond any byte SQLite locks (Linux's ``F_OFD_SETLK``: unlike a
    plain POSIX lock it excludes other threads of the same process too, and closing some other descriptor
    of the file does not drop it). Where the system has no such lock (SQLite on macOS or Windows), the
    lock is always granted.
    """
    path = sqlite_file(url)
    if path is None:
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = connection.execute(sa.text("SELECT pg_try_advisory_lock(:kind, :key)"),
                                     {"kind": RUN_LOCK_CLASS, "key": key}).scalar()
        except BaseException:
            connection.close()
            raise
        if not got:
            connection.close()
            return None

        def release_advisory() -> None:
            try:
                connection.execute(sa.text("SELECT pg_advisory_unlock(:kind, :key)"), {"kind": RUN_LOCK_CLASS, "key": key})
            except sa.exc.DBAPIError:
                pass  # a connection that is gone took its lock with it
            finally:
                connection.close()

        return release_advisory
    try:
        import fcntl
    except ImportError:
        return lambda: None
    if not hasattr(fcntl, "F_OFD_SETLK"):
        return lambda: None
    fd = os.open(path, os.O_RDWR)
    # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for open-file-description locks), padded to 8
    request = struct.pack("hhqqi0q", fcntl.F_WRLCK, os.SEEK_SET, RUN_LOCK_OFFSET + key, 1, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return lambda: os.close(fd)


# -- who holds a lock ----------------------------------------------------------------------------------------


def process_kind(cmdline: list[str]) -> str:
    """"another panostudy process (...)" or "another program (...)" for a process's command line."""
    names = [os.path.basename(arg) for arg in cmdline]
    # `python -c <code>`: the code is not a name anyone recognises.
    shown_args = [("<code>" if before == "-c" else arg) for before, arg in zip(["", *cmdline], cmdline)]
    command = " ".join(" ".join(shown_args).split())[:80]
    if "panostudy" in names or any(a == "-m" and b == "panostudy" for a, b in zip(cmdline, cmdline[1:])):
        return f"another panostudy process ({command})"
    return f"another program ({command})" if command else "another program"


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def sqlite_lock_holders(path: Path) -> list[str]:
    """Other processes holding a POSIX lock on the database or its ``-shm`` file, from Linux's
    ``/proc/locks`` ("pid 123: another panostudy process (...)"); empty where that cannot be known."""
    inodes = set()
    for p in (path, path.with_name(path.name + "-shm")):
        try:
            st = p.stat()
        except OSError:
            continue
        inodes.add((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino))
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    pids = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or "->" in fields:  # "->" marks a waiter, not a holder
            continue
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
        except ValueError:
            continue
        # An open-file-description lock (a run lock) shows pid -1: its holder cannot be named from here.
        if key in inodes and pid > 0 and pid != os.getpid() and pid not in pids:
            pids.append(pid)
    return [f"pid {pid}: {process_kind(_cmdline(pid))}" for pid in pids]


def pg_lock_holders(engine: sa.Engine) -> list[str]:
    """Other sessions of the server holding locks on the study's tables."""
    from study.models import Base

    query = sa.text(
        "SELECT DISTINCT a.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "JOIN pg_class c ON c.oid = l.relation WHERE l.granted AND a.pid <> pg_backend_pid() "
        "AND c.relname = ANY(:tables)"
    )
    try:
        with engine.connect() as connection:
            rows = connection.execute(query, {"tables": list(Base.metadata.tables)}).all()
    except sa.exc.SQLAlchemyError:
        return []
    return [
        f"pid {pid} on the server: "
        + ("another panostudy process" if name == APPLICATION_NAME else f"another program ({name or 'unnamed client'})")
        for pid, name in rows
    ]


# -- errors --------------------------------------------------------------------------------------------------

_SQLITE_CAUSES = (
    ("database is locked", "locked"),
    ("database table is locked", "locked"),
    ("database or disk is full", "full"),
    ("readonly database", "read-only"),
    ("disk i/o error", "io"),
    ("unable to open database file", "unopenable"),
    ("file is not a database", "damaged"),
    ("malformed", "damaged"),
    ("no such table", "schema"),
    ("no such column", "schema"),
    ("has no column", "schema"),
)
_PG_CAUSES = {"55P03": "locked", "40P01": "locked", "53100": "full", "42P01": "schema", "42703": "schema",
              "25006": "read-only", "57P03": "unreachable", "08006": "unreachable", "08001": "unreachable",
              "28P01": "auth", "28000": "auth", "3D000": "unreachable"}


def _cause(orig: BaseException) -> str | None:
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate in _PG_CAUSES:
        return _PG_CAUSES[sqlstate]
    text = str(orig).lower()
    for fragment, cause in _SQLITE_CAUSES:
        if fragment in text:
            return cause
    if "connection" in text and ("refused" in text or "failed" in text or "timeout" in text):
        return "unreachable"
    return None


def database_error(exc: BaseException, db: str | Path | None, *, during: str = "") -> StoreError | None:
    """The one-line error for a database failure the user can fix; None for one that is a bug.

    Parameters
    ----------
    exc : Exception
        A SQLAlchemy ``DBAPIError`` (or a raw ``sqlite3.Error``).
    db : str or Path, optional
        The ``--db`` the command was given, to name the database and find the lock's holder.
    during : str
        The command, e.g. ``"session run"``, to tailor the advice.
    """
    if isinstance(exc, StoreError):
        return exc
    orig = getattr(exc, "orig", exc)
    if isinstance(exc, sa.exc.SQLAlchemyError) and not isinstance(exc, sa.exc.DBAPIError):
        return None
    if isinstance(exc, sa.exc.IntegrityError) or isinstance(orig, sqlite3.IntegrityError):
        return None  # every constraint is checked before a write; a violation that escapes is a bug
    try:
        url = database_url(db) if db is not None else None
    except StoreError as bad:
        return bad
    name = shown(url) if url is not None else "the study database"
    detail = mask_secrets(" ".join(str(orig).split()) or type(orig).__name__, db)[:200]
    cause = _cause(orig)
    session = during.startswith("session")
    again = ("every confirmed answer is kept; 'panostudy session resume' continues where it stopped"
             if session else "then run the command again")
    if cause == "locked":
        holders = _holders(url)
        who = "; ".join(holders) if holders else "another process or connection"
        return StoreError(
            f"{name}: the database stayed locked by {who} for {BUSY_TIMEOUT_MS // 1000} s; wait for it to finish "
            f"or stop it, {again}"
        )
    reasons = {
        "full": f"the disk is full ({detail}); free some space, {again}",
        "read-only": f"the database cannot be written ({detail}); make the file and its folder writable, {again}",
        "io": f"disk input/output error ({detail}); check the drive, {again}",
        "unopenable": f"the database file cannot be opened ({detail}); check the path and its folder's permissions",
        "damaged": f"not a readable SQLite database ({detail}); give the file 'panostudy study init' made",
        "schema": f"the database lacks a table or column panostudy needs ({detail}); it is not a study database "
                  "of this panostudy version",
        "unreachable": f"cannot reach the database server ({detail}); check that it runs and the URL is right",
        "auth": f"the server refused the login ({detail}); check the user name and password",
    }
    return StoreError(f"{name}: {reasons.get(cause, f'database error ({detail}); check the database, {again}')}")


def _holders(url: str | None) -> list[str]:
    if url is None:
        return []
    path = sqlite_file(url)
    if path is not None:
        return sqlite_lock_holders(path)
    try:
        engine = make_engine(url)
    except StoreError:
        return []
    try:
        return pg_lock_holders(engine)
    finally:
        engine.dispose()
