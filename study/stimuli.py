"""Finding and validating stimulus panoramas before they enter a study.

Every check happens at import, never mid-session: an image must be readable, exactly 2:1
equirectangular and at most :data:`MAX_WIDTH` × :data:`MAX_HEIGHT` (larger ones are refused unless a
folder for downscaled copies is given). Stimuli come from a folder (the scene is the sub-folder's name,
or one scene for the whole folder) or from a generator manifest in JSON Lines.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.errors import StimulusError

#: Largest panorama a participant is shown (the renderer's texture limit).
MAX_WIDTH, MAX_HEIGHT = 8192, 4096
#: Smallest panorama accepted; anything smaller is a thumbnail, not a stimulus.
MIN_HEIGHT = 16
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})


@dataclass(frozen=True)
class Candidate:
    """An image named by a folder or manifest, not yet checked."""

    path: Path
    scene: str
    origin: str  # where it was named, for error messages ("manifest.jsonl:3", "folder/street/a.png")
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckedImage:
    """An image that passed every check."""

    candidate: Candidate
    width: int
    height: int
    sha256: str
    needs_downscale: bool


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def collect_folder(folder: str | Path, scene: str | None = None) -> list[Candidate]:
    """Images of a folder: with ``scene`` all images in it, otherwise one scene per sub-folder.

    Raises
    ------
    StimulusError
        If the folder does not exist, holds no images, or holds loose images and no ``scene`` was given.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise StimulusError(f"{folder}: no such folder; pass a folder of panoramas or a manifest .jsonl file")
    if scene is not None:
        found = [Candidate(p.resolve(), scene, str(p)) for p in _images_in(folder, recursive=True)]
    else:
        loose = _images_in(folder, recursive=False)
        if loose:
            raise StimulusError(
                f"{loose[0]}: image outside a scene sub-folder; put images in <folder>/<scene>/ or pass --scene"
            )
        found = [
            Candidate(p.resolve(), sub.name, str(p))
            for sub in sorted(d for d in folder.iterdir() if d.is_dir())
            for p in _images_in(sub, recursive=True)
        ]
    if not found:
        raise StimulusError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    return found


def _images_in(folder: Path, *, recursive: bool) -> list[Path]:
    paths = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_manifest(manifest: str | Path) -> list[Candidate]:
    """Images named by a generator manifest: JSON Lines, one object per image.

    Each object needs ``path`` (relative to the manifest's folder, or absolute) and ``scene``; every other
    key is kept as the stimulus' generator metadata (prompt, seed, model, ...).

    Raises
    ------
    StimulusError
        Naming ``<manifest>:<line>`` for unreadable files, invalid JSON or a missing/ill-typed key.
    """
    manifest = Path(manifest)
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise StimulusError(f"{manifest}: cannot read the manifest ({exc}); check the path") from None
    found = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{manifest}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise StimulusError(f"{where}: invalid JSON ({exc.msg}); write one JSON object per line") from None
        if not isinstance(entry, dict):
            raise StimulusError(f"{where}: expected a JSON object with 'path' and 'scene', got {type(entry).__name__}")
        for key in ("path", "scene"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise StimulusError(f"{where}: '{key}' is missing or not a string; every line needs 'path' and 'scene'")
        metadata = {k: v for k, v in entry.items() if k not in ("path", "scene")}
        path = (manifest.parent / entry["path"]).resolve()
        found.append(Candidate(path, entry["scene"], where, metadata))
    if not found:
        raise StimulusError(f"{manifest}: the manifest names no images")
    return found


def collect(source: str | Path, scene: str | None = None) -> list[Candidate]:
    """Candidates from a folder or from a ``.jsonl`` manifest (``scene`` overrides the manifest's)."""
    source = Path(source)
    if source.is_file():
        if source.suffix.lower() not in (".jsonl", ".ndjson"):
            raise StimulusError(f"{source}: not a folder or a .jsonl manifest; pass one of those")
        found = read_manifest(source)
        if scene is not None:
            found = [Candidate(c.path, scene, c.origin, c.metadata) for c in found]
        return found
    return collect_folder(source, scene)


def check_image(candidate: Candidate, *, allow_downscale: bool = False) -> CheckedImage:
    """Checks that the image is readable, 2:1 equirectangular and within the size limits.

    Raises
    ------
    StimulusError
        Naming the image (and where it was listed) and what is wrong.
    """
    from PIL import Image, UnidentifiedImageError

    path = candidate.path
    where = f"{path}" if candidate.origin == str(path) else f"{path} (listed at {candidate.origin})"
    if not path.is_file():
        raise StimulusError(f"{where}: stimulus file not found; check the path or regenerate the image")
    try:
        with Image.open(path) as image:
            image.load()
            width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise StimulusError(f"{where}: unreadable image ({exc}); re-export it as PNG or JPEG") from None
    if width != 2 * height:
        raise StimulusError(
            f"{where}: {width}x{height} is not 2:1 equirectangular; stimuli must be exactly twice as wide as high"
        )
    if height < MIN_HEIGHT:
        raise StimulusError(f"{where}: {width}x{height} is too small; at least {2 * MIN_HEIGHT}x{MIN_HEIGHT}")
    too_large = width > MAX_WIDTH
    if too_large and not allow_downscale:
        raise StimulusError(
            f"{where}: {width}x{height} exceeds {MAX_WIDTH}x{MAX_HEIGHT}; downscale it or import with --downscale-into DIR"
        )
    return CheckedImage(candidate, width, height, file_sha256(path), too_large)


def write_downscaled(checked: CheckedImage, folder: Path) -> CheckedImage:
    """Writes a :data:`MAX_WIDTH` × :data:`MAX_HEIGHT` PNG copy into ``folder`` and returns it, checked."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{checked.candidate.path.stem}-{checked.sha256[:12]}-{MAX_WIDTH}x{MAX_HEIGHT}.png"
    with Image.open(checked.candidate.path) as image:
        image.convert("RGB").resize((MAX_WIDTH, MAX_HEIGHT), Image.Resampling.LANCZOS).save(target)
    metadata = {**checked.candidate.metadata, "downscaled_from": str(checked.candidate.path)}
    copy = Candidate(target.resolve(), checked.candidate.scene, checked.candidate.origin, metadata)
    return CheckedImage(copy, MAX_WIDTH, MAX_HEIGHT, file_sha256(target), False)
