"""Finding, validating and decoding stimulus panoramas.

Every check happens at import, never mid-session: an image must be readable, exactly 2:1
equirectangular and at most :data:`MAX_WIDTH` × :data:`MAX_HEIGHT` (larger ones are refused unless a
folder for downscaled copies is given). The size is read from the file's header before anything is
decoded, so an image that claims to be huge costs nothing. Stimuli come from a folder (the scene is the
sub-folder's name, or one scene for the whole folder) or from a generator manifest in JSON Lines.

:func:`srgb8` turns every image mode Pillow reads (grey, palette, 16-bit, alpha, CMYK) into the 8-bit sRGB
RGB the viewer shows; the viewer decodes through it too.
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from study.errors import StimulusError

#: Largest panorama a participant is shown (the renderer's texture limit).
MAX_WIDTH, MAX_HEIGHT = 8192, 4096
#: Smallest panorama accepted; anything smaller is a thumbnail, not a stimulus.
MIN_HEIGHT = 16
#: Largest image decoded at all, to make a downscaled copy (16384 × 8192: 400 MB as 8-bit RGB).
MAX_DECODE_WIDTH = 16384
#: sRGB code of the neutral grey the viewer shows between stimuli; transparent pixels show it too.
NEUTRAL_GREY_SRGB = 128
#: Pillow modes :func:`srgb8` converts (16-bit grey arrives as ``I;16*`` or ``I``).
SUPPORTED_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                             "I", "I;16", "I;16L", "I;16B", "I;16N"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})


@dataclass(frozen=True)
class Candidate:
    """An image named by a folder or manifest, not yet checked."""

    path: Path
    scene: str
    origin: str  # where it was named, for error messages ("manifest.jsonl:3", "folder/street/a.png")
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """The image and, if it differs, where it was listed: the start of every message about it."""
        return str(self.path) if self.origin == str(self.path) else f"{self.path} (listed at {self.origin})"


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
        found = [Candidate(_resolved(p, str(p)), scene, str(p)) for p in _images_in(folder, recursive=True)]
    else:
        loose = _images_in(folder, recursive=False)
        if loose:
            raise StimulusError(
                f"{loose[0]}: image outside a scene sub-folder; put images in <folder>/<scene>/ or pass --scene"
            )
        found = [
            Candidate(_resolved(p, str(p)), sub.name, str(p))
            for sub in sorted(d for d in folder.iterdir() if d.is_dir())
            for p in _images_in(sub, recursive=True)
        ]
    if not found:
        raise StimulusError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    return found


def _images_in(folder: Path, *, recursive: bool) -> list[Path]:
    paths = folder.rglob("*") if recursive else folder.iterdir()
    images = sorted(p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or p.is_symlink()))
    # A link that leads nowhere (or to itself) would otherwise drop a stimulus without a word.
    for path in images:
        if not path.is_file():
            _resolved(path, str(path))
            raise StimulusError(f"{path}: a symbolic link to a missing file; fix or remove the link")
    return images


def _resolved(path: Path, where: str) -> Path:
    """``path`` made absolute with its links followed; a symlink loop is refused by name."""
    try:
        return path.resolve(strict=False)
    except (RuntimeError, OSError) as exc:
        raise StimulusError(f"{where}: {path} cannot be resolved ({exc}); a symbolic link loop? fix the link") from None


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
        except RecursionError:
            raise StimulusError(f"{where}: the JSON is nested too deeply; write one flat object per line") from None
        if not isinstance(entry, dict):
            raise StimulusError(f"{where}: expected a JSON object with 'path' and 'scene', got {type(entry).__name__}")
        for key in ("path", "scene"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise StimulusError(f"{where}: '{key}' is missing or not a string; every line needs 'path' and 'scene'")
        if "\x00" in entry["path"]:
            raise StimulusError(f"{where}: 'path' contains a NUL byte; write the image's file name as it is")
        metadata = {k: v for k, v in entry.items() if k not in ("path", "scene")}
        path = _resolved(manifest.parent / entry["path"], where)
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


_PIXEL_LIMIT_LOCK = threading.Lock()


@contextmanager
def open_image(path: Path, where: str | None = None):
    """Opens an image lazily (header only), naming it in every error.

    Pillow's own decompression-bomb check (a warning line above 89 Mpx, an exception above 179 Mpx) is
    replaced here by the callers' size checks, which read the header's size and refuse before decoding.

    Raises
    ------
    StimulusError
        If the file is missing or Pillow cannot identify it.
    """
    from PIL import Image, UnidentifiedImageError

    where = where or str(path)
    try:
        with _PIXEL_LIMIT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except FileNotFoundError:
        raise StimulusError(f"{where}: stimulus file not found; check the path or regenerate the image") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise StimulusError(f"{where}: unreadable image ({_first_line(exc)}); re-export it as PNG or JPEG") from None
    with image:
        yield image


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_size(where: str, width: int, height: int, *, max_width: int | None = None, allow_downscale: bool = False,
               limit: str | None = None, fix: str = "downscale it or import with --downscale-into DIR") -> bool:
    """Checks a panorama's header size; returns whether it must be downscaled to fit ``max_width``.

    ``max_width`` defaults to :data:`MAX_WIDTH`; ``limit`` names the limit and ``fix`` the remedy in the
    message for an image wider than it.

    Raises
    ------
    StimulusError
        If it is not 2:1, too small, wider than ``max_width`` (without ``allow_downscale``), or too large to
        decode at all.
    """
    max_width = MAX_WIDTH if max_width is None else max_width
    if width != 2 * height:
        raise StimulusError(
            f"{where}: {width}x{height} is not 2:1 equirectangular; stimuli must be exactly twice as wide as high"
        )
    if height < MIN_HEIGHT:
        raise StimulusError(f"{where}: {width}x{height} is too small; at least {2 * MIN_HEIGHT}x{MIN_HEIGHT}")
    if width > MAX_DECODE_WIDTH:
        raise StimulusError(
            f"{where}: {width}x{height} is too large to decode (at most {MAX_DECODE_WIDTH}x{MAX_DECODE_WIDTH // 2}); "
            f"downscale it to {MAX_WIDTH}x{MAX_HEIGHT} with an image editor first"
        )
    if width > max_width and not allow_downscale:
        raise StimulusError(f"{where}: {width}x{height} exceeds {limit or f'{max_width}x{max_width // 2}'}; {fix}")
    return width > max_width


def check_mode(where: str, mode: str) -> None:
    """Refuses image modes :func:`srgb8` cannot show faithfully (32-bit float, Lab, HSV, ...)."""
    if mode not in SUPPORTED_MODES:
        raise StimulusError(
            f"{where}: image mode {mode} cannot be shown as sRGB; re-export it as 8- or 16-bit RGB, grey or "
            "palette PNG, or JPEG"
        )


def srgb8(image, where: str | None = None) -> np.ndarray:
    """The image as ``(H, W, 3) uint8`` sRGB, as the viewer shows it.

    - 8-bit RGB, grey, bilevel, palette and YCbCr images keep their codes (no colour management: files
      without a profile are taken as sRGB, the web's and the generator's convention).
    - 16-bit grey (Pillow's ``I;16`` / ``I``) is scaled to 8 bits, ``round(v · 255 / 65535)``; Pillow's own
      conversion would clip everything above 255 to white. 16-bit RGB(A) PNGs arrive in 8 bits already.
    - CMYK is converted with Pillow's formula, ``R = round((255 − C) · (255 − K) / 255)``, likewise G, B.
    - Alpha (RGBA, LA, PA, a palette with transparency) is composited over the neutral grey the viewer
      shows between stimuli, ``out = round(a · c + (1 − a) · 128)`` in sRGB codes.

    Raises
    ------
    StimulusError
        For a mode it cannot convert, or 32-bit integer values outside 0..65535.
    """
    where = where or str(getattr(image, "filename", "") or "image")
    check_mode(where, image.mode)
    mode = image.mode
    if mode.startswith("I"):
        values = np.asarray(image)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise StimulusError(
                f"{where}: 32-bit integer values {values.min()}..{values.max()} are not 16-bit grey; "
                "re-export it as 8- or 16-bit"
            )
        grey = ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[:, :, 3:4]
        mixed = (rgba[:, :, :3] * alpha + NEUTRAL_GREY_SRGB * (255 - alpha) + 127) // 255
        return mixed.astype(np.uint8)
    return np.asarray(image if mode == "RGB" else image.convert("RGB"))


def check_image(candidate: Candidate, *, allow_downscale: bool = False) -> CheckedImage:
    """Checks that the image is readable, 2:1 equirectangular and within the size limits.

    The size comes from the header and is checked before the image is decoded.

    Raises
    ------
    StimulusError
        Naming the image (and where it was listed) and what is wrong.
    """
    path, where = candidate.path, candidate.where
    if not path.is_file():
        raise StimulusError(f"{where}: stimulus file not found; check the path or regenerate the image")
    with open_image(path, where) as image:
        width, height = image.size
        too_large = check_size(where, width, height, allow_downscale=allow_downscale)
        check_mode(where, image.mode)
        try:
            image.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise StimulusError(f"{where}: unreadable image ({_first_line(exc)}); re-export it as PNG or JPEG") from None
    return CheckedImage(candidate, width, height, file_sha256(path), too_large)


def write_downscaled(checked: CheckedImage, folder: Path) -> CheckedImage:
    """Writes a :data:`MAX_WIDTH` × :data:`MAX_HEIGHT` PNG copy into ``folder`` and returns it, checked."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{checked.candidate.path.stem}-{checked.sha256[:12]}-{MAX_WIDTH}x{MAX_HEIGHT}.png"
    with open_image(checked.candidate.path) as image:
        pixels = srgb8(image, str(checked.candidate.path))
    Image.fromarray(pixels).resize((MAX_WIDTH, MAX_HEIGHT), Image.Resampling.LANCZOS).save(target)
    metadata = {**checked.candidate.metadata, "downscaled_from": str(checked.candidate.path)}
    copy = Candidate(target.resolve(), checked.candidate.scene, checked.candidate.origin, metadata)
    return CheckedImage(copy, MAX_WIDTH, MAX_HEIGHT, file_sha256(target), False)
