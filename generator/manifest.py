"""The manifest of a scene set: one JSON object per generated panorama (JSON Lines).

Each process of a (possibly sharded) run appends to its own ``manifest.rank<r>.jsonl`` one line per finished item,
flushed at once, so a stopped run loses at most the item in progress. :func:`merge_manifests` unions every rank
file (and an earlier merged manifest) into ``manifest.jsonl``, ordered by item index; that file is what
``panostudy study`` reads as a stimulus list (each line has ``path``, relative to the manifest, and ``scene``).

A line records everything needed to reproduce and judge the item: input masks (file, format, labels, SHA-256),
prompt, seeds, model ids and file hashes, every parameter of both stages, per-stage timings, stage 1's
mask-alignment scores and the seam scores before and after super-resolution.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from study.errors import PanostudyError

MERGED_NAME = "manifest.jsonl"
RANK_PATTERN = "manifest.rank*.jsonl"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")


def rank_manifest_path(out_dir: str | Path, rank: int) -> Path:
    """Where process ``rank`` appends its lines."""
    return Path(out_dir) / f"manifest.rank{rank}.jsonl"


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=32)
def model_fingerprint(reference: str) -> dict:
    """Identify a model: its id, and for a local file or folder the SHA-256 of every weight file in it.

    Hub ids that are not local paths are recorded as given (their files live in the hub cache, whose revision
    the id alone does not pin).
    """
    path = Path(reference)
    if path.is_file():
        return {"id": reference, "files": {path.name: file_sha256(path)}}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        return {"id": reference, "files": {str(p.relative_to(path)): file_sha256(p) for p in files}}
    return {"id": reference, "files": {}}


def read_manifest_lines(path: str | Path) -> list[dict]:
    """The objects of one JSON Lines manifest; a truncated last line (a process killed mid-write) is skipped.

    Raises
    ------
    PanostudyError
        If a line other than the last is not a JSON object (the file is not a manifest).
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue
            raise PanostudyError(f"{path}:{number}: not valid JSON; remove the line or the file to regenerate it") from None
        if not isinstance(entry, dict) or "id" not in entry:
            raise PanostudyError(f"{path}:{number}: not a manifest entry (needs an object with 'id')")
        entries.append(entry)
    return entries


def all_entries(out_dir: str | Path) -> dict[str, dict]:
    """Every entry found in ``out_dir``'s merged and per-rank manifests, by item id (later files win)."""
    out_dir = Path(out_dir)
    found: dict[str, dict] = {}
    for path in [out_dir / MERGED_NAME, *sorted(out_dir.glob(RANK_PATTERN))]:
        for entry in read_manifest_lines(path):
            found[entry["id"]] = entry
    return found


def finished_ids(out_dir: str | Path) -> set[str]:
    """Ids of items whose manifest entry exists and whose panorama file is on disk (these are skipped on resume)."""
    out_dir = Path(out_dir)
    return {item for item, entry in all_entries(out_dir).items() if (out_dir / entry["path"]).is_file()}


def append_entry(path: str | Path, entry: dict) -> None:
    """Append one entry as a line and flush it to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def merge_manifests(out_dir: str | Path) -> Path:
    """Union the per-rank manifests (and an existing merged one) into ``manifest.jsonl``, ordered by item index.

    Written to a temporary file and renamed, so a reader never sees a half-written manifest; safe to run again.
    """
    out_dir = Path(out_dir)
    entries = sorted(all_entries(out_dir).values(), key=lambda entry: (entry.get("index", 0), entry["id"]))
    target = out_dir / MERGED_NAME
    temporary = out_dir / f".{MERGED_NAME}.{os.getpid()}.tmp"
    temporary.write_text("".join(json.dumps(entry, sort_keys=True) + "\n" for entry in entries), encoding="utf-8")
    temporary.replace(target)
    return target
