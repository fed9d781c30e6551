"""Which failures are the user's to fix, and the one line that says so.

The table, in the order :func:`user_error_line` tries it:

- panostudy's own errors (:class:`study.errors.PanostudyError`): their message as is;
- Typer usage errors (bad value, missing or unknown option): Typer's message, the command and ``--help``;
- database errors (SQLAlchemy, its drivers, sqlite3): :func:`study.store.database_error` names the database
  (password masked) and the cause: locked, disk full, read-only, not a study, unreachable server;
- operating-system errors: disk full, permission denied, read-only file system, missing file, ...;
- Pillow errors: an image it cannot read or that is too large to decode.

Everything else is a bug: it keeps its traceback. Every line is one line, and the ``--db`` URL's password
never appears in it.
"""

from __future__ import annotations

import errno
import sys

import typer

from study.errors import PanostudyError

_OS_REASONS = {
    errno.ENOSPC: "no space left on the device; free some space and run the command again",
    errno.EDQUOT: "the disk quota is exhausted; free some space and run the command again",
    errno.EACCES: "permission denied; fix the permissions or choose another path",
    errno.EPERM: "operation not permitted; fix the permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose a writable location",
    errno.ENOENT: "no such file or folder; check the path",
    errno.EISDIR: "is a folder; give a file path",
    errno.ENOTDIR: "a part of the path is not a folder; check the path",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop?); fix the link",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
    errno.EIO: "input/output error (a failing disk or an unplugged drive?); check the device",
    errno.EMFILE: "too many open files; close other programs or raise the limit (ulimit -n)",
}


def option_value(args: list[str], name: str) -> str | None:
    """The value given to option ``name`` on the command line (``--db X`` or ``--db=X``), else None."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
    return None


def user_error_line(exc: BaseException, args: list[str]) -> str | None:
    """The one line to show for ``exc`` if the user can fix it; None if it is a bug."""
    db = option_value(args, "--db")
    line = _describe(exc, args, db)
    if line is None:
        return None
    line = " ".join(line.split())
    if db is not None:
        from study.database import mask_secrets

        line = mask_secrets(line, db)
    return line


def _describe(exc: BaseException, args: list[str], db: str | None) -> str | None:
    if isinstance(exc, PanostudyError):
        return str(exc)
    if isinstance(exc, typer.TyperException):
        return _usage_line(exc)
    if _is_database_error(exc):
        from study.database import database_error

        return str(database_error(exc, db, during=" ".join(args[:2])))
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(exc, pil.DecompressionBombError):
        return f"{exc}; the image is too large to decode safely, downscale it first"
    if isinstance(exc, OSError):
        return _os_line(exc, args)
    return None


def _usage_line(exc: typer.TyperException) -> str:
    message = exc.format_message().strip().rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return message
    return f"{ctx.command_path}: {message}; see '{ctx.command_path} --help'"


def _is_database_error(exc: BaseException) -> bool:
    sa = sys.modules.get("sqlalchemy")
    sqlite3 = sys.modules.get("sqlite3")
    return (sa is not None and isinstance(exc, sa.exc.SQLAlchemyError)) or (
        sqlite3 is not None and isinstance(exc, sqlite3.Error)
    )


def _os_line(exc: OSError, args: list[str]) -> str:
    where = exc.filename if exc.filename is not None else "writing or reading a file"
    reason = _OS_REASONS.get(exc.errno)
    if reason is None:
        reason = f"{exc.strerror or exc}; check the path and the device"
    line = f"{where}: {reason}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and args[:1] == ["session"]:
        line += "; every confirmed answer is kept and 'panostudy session resume' continues where it stopped"
    return line
