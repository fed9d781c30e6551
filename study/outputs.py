"""Output files that are whole or absent: checked before any work, written to a temporary file beside the
target, and renamed into place only when every one of them is complete.

Files are created readable by their owner only (``mkstemp`` makes them 0600) and missing folders 0700,
because exports and reports hold participant data.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from study.errors import PanostudyError


def check_output_file(path: Path, option: str, suffixes: Sequence[str]) -> str:
    """Refuses an output path that cannot be written as a file; returns its (lower-case) suffix.

    Raises
    ------
    PanostudyError
        Naming ``option`` and the path: a NUL byte, an unknown suffix, an existing folder or device, a
        parent that is a file, or a folder that is not writable.
    """
    text = str(path)
    if "\x00" in text:
        raise PanostudyError(f"{option} {text!r}: the path contains a NUL byte; give a plain file path")
    if path.is_dir():
        raise PanostudyError(f"{option} {path}: is a folder; give a file name inside it, e.g. {path / ('answers' + suffixes[0])}")
    if path.exists() and not path.is_file():
        raise PanostudyError(f"{option} {path}: is not a regular file (a device or a pipe?); give a file path")
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise PanostudyError(f"{option} {path}: unknown export format '{suffix}'; name the file {' or '.join(suffixes)}")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise PanostudyError(f"{option} {path}: {folder} is a file, not a folder; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PanostudyError(f"{option} {path}: folder {folder} is not writable; fix its permissions or choose another path")
    return suffix


def check_distinct(paths: Sequence[tuple[str, Path]]) -> None:
    """Refuses two options that name the same output file."""
    seen: dict[Path, str] = {}
    for option, path in paths:
        resolved = Path(os.path.abspath(path))
        if resolved in seen:
            raise PanostudyError(f"{option} {path}: the same file as {seen[resolved]}; give each output its own file")
        seen[resolved] = option


def write_all(outputs: Sequence[tuple[Path, Callable[[Path], object]]]) -> list[Path]:
    """Writes every ``(target, write)`` pair, all or nothing.

    ``write(tmp)`` writes the content to the temporary path ``tmp`` in the target's folder. Missing folders
    are created (0700). Only when every file is written are they renamed onto their targets; if any write
    fails, the temporary files and the folders created here are removed and the targets are untouched.
    """
    temps: list[tuple[Path, Path]] = []
    created: list[Path] = []
    try:
        for target, write in outputs:
            created += _make_folders(target.parent)
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            os.close(fd)
            temps.append((Path(name), target))
            try:
                write(Path(name))
            except OSError as exc:
                # Named by the file the user asked for, not the temporary one.
                raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from None
        for temp, target in temps:
            os.replace(temp, target)
    except BaseException:
        for temp, _ in temps:
            temp.unlink(missing_ok=True)
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    return [target for _, target in temps]


def _make_folders(folder: Path) -> list[Path]:
    """Creates ``folder`` and its missing parents (0700); returns those it created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        new.mkdir(mode=0o700)
    return list(reversed(missing))
