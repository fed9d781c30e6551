"""Text on panels: a chain of fonts that together draw Latin, Greek, Cyrillic and CJK, and line breaking.

Pillow draws with one font at a time and shows a box for a character that font lacks, so a line is cut
into runs, each drawn with the first font of the chain that has all its characters (read from the
font's ``cmap`` with fontTools). The chain is the protocol's own ``[panel] fonts``, then DejaVu Sans
(Latin, Greek, Cyrillic; from Debian's ``fonts-dejavu-core`` or the copy matplotlib ships), then Noto
Sans CJK (Debian's ``fonts-noto-cjk``; PingFang, Microsoft YaHei or Malgun Gothic where the system has
those instead). A character that no font of the chain has is an error before a session starts, never
a box on screen (:func:`missing_characters`).

Lines break at spaces and between CJK characters, keeping closing punctuation off the start of a line
and opening punctuation off its end; a word wider than the line is broken between characters.
"""

from __future__ import annotations

import importlib.util
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class FontFile:
    """A font file, and the face within it for a collection (``.ttc``)."""

    path: str
    index: int = 0
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or Path(self.path).stem


def _matplotlib_dejavu() -> str | None:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    return str(path) if path.is_file() else None


#: Where the shipped chain looks, in order; the first file found of each group is used.
#: Noto Sans CJK's collection holds JP, KR, SC, TC, HK faces (indexes 0..4), all with every CJK
#: character; SC (2) draws Chinese in its own forms, and kana and hangul as well.
SYSTEM_FONT_GROUPS: tuple[tuple[FontFile, ...], ...] = (
    (
        FontFile("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", name="DejaVu Sans"),
        FontFile("/Library/Fonts/DejaVuSans.ttf", name="DejaVu Sans"),
    ),
    (
        FontFile("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2, "Noto Sans CJK SC"),
        FontFile("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc", 2, "Noto Sans CJK SC"),
        FontFile("/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc", 2, "Noto Sans CJK SC"),
        FontFile("/System/Library/Fonts/PingFang.ttc", 0, "PingFang"),
        FontFile("C:/Windows/Fonts/msyh.ttc", 0, "Microsoft YaHei"),
        FontFile("C:/Windows/Fonts/malgun.ttf", 0, "Malgun Gothic"),
    ),
)

# Kinsoku: characters that may not start a line, and ones that may not end it.
_NO_LINE_START = set("、。，．・：；？！）」』】〕〉》’”％,.!?)]}:;…‥ーゝゞ々ぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮヵヶ")
_NO_LINE_END = set("（「『【〔〈《‘“([{")


def _wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


@lru_cache(maxsize=16)
def _codepoints(path: str, index: int) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    with TTFont(path, fontNumber=index, lazy=True) as font:
        return frozenset(font.getBestCmap())


@lru_cache(maxsize=64)
def _pil_font(path: str, index: int, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, size, index=index)


class FontChain:
    """Fonts tried in order for each character.

    Parameters
    ----------
    files : sequence of FontFile
        The chain, most preferred first.
    """

    def __init__(self, files: Sequence[FontFile]):
        if not files:
            raise ValueError("a font chain needs at least one font")
        self.files = tuple(files)

    @classmethod
    def for_protocol(cls, extra: Sequence[str] = ()) -> FontChain:
        """The protocol's ``[panel] fonts`` first, then the first system font found of each group."""
        files = [FontFile(path) for path in extra]
        for group in SYSTEM_FONT_GROUPS:
            found = next((f for f in group if Path(f.path).is_file()), None)
            if found is None and group is SYSTEM_FONT_GROUPS[0]:
                bundled = _matplotlib_dejavu()
                found = FontFile(bundled, name="DejaVu Sans") if bundled else None
            if found is not None:
                files.append(found)
        if not files:
            raise FileNotFoundError("no panel font found: install fonts-dejavu-core (or matplotlib) and fonts-noto-cjk")
        return cls(files)

    def describe(self) -> str:
        return ", ".join(f.label for f in self.files)

    def font_index(self, ch: str) -> int | None:
        """The first font of the chain that has ``ch``, or None."""
        code = ord(ch)
        for i, f in enumerate(self.files):
            if code in _codepoints(f.path, f.index):
                return i
        return None

    def pil(self, index: int, size: int):
        f = self.files[index]
        return _pil_font(f.path, f.index, size)

    def runs(self, text: str) -> list[tuple[int, str]]:
        """``text`` cut into ``(font index, part)`` runs; spaces join the run before them."""
        runs: list[tuple[int, str]] = []
        for ch in text:
            index = self.font_index(ch) if not ch.isspace() else (runs[-1][0] if runs else 0)
            if index is None:
                index = 0
            if runs and runs[-1][0] == index:
                runs[-1] = (index, runs[-1][1] + ch)
            else:
                runs.append((index, ch))
        return runs

    def width(self, text: str, size: int) -> float:
        """Advance width of ``text`` at ``size`` px, in pixels."""
        return sum(self.pil(i, size).getlength(part) for i, part in self.runs(text))

    def line_metrics(self, size: int) -> tuple[int, int]:
        """(ascent, descent) in pixels that hold a line of any font of the chain at ``size`` px."""
        metrics = [self.pil(i, size).getmetrics() for i in range(len(self.files))]
        return max(a for a, _ in metrics), max(d for _, d in metrics)

    def draw(self, pen, x: float, baseline: float, text: str, size: int, fill) -> None:
        """Draws ``text`` with its left end at ``x`` on ``baseline``."""
        for index, part in self.runs(text):
            font = self.pil(index, size)
            pen.text((x, baseline), part, font=font, fill=fill, anchor="ls")
            x += font.getlength(part)


def missing_characters(text: str, chain: FontChain) -> list[str]:
    """The characters of ``text`` that no font of ``chain`` can draw (control and space characters aside)."""
    missing = []
    for ch in dict.fromkeys(text):
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf"):
            continue
        if chain.font_index(ch) is None:
            missing.append(ch)
    return missing


def _tokens(paragraph: str) -> list[tuple[str, bool]]:
    """``(token, space before it)``: words, single CJK characters, punctuation kept with its neighbour."""
    tokens: list[tuple[str, bool]] = []
    space = False
    for ch in paragraph:
        if ch.isspace():
            space = True
            continue
        previous = tokens[-1][0] if tokens else ""
        glued = bool(tokens) and not space and (
            (ch in _NO_LINE_START)
            or (previous[-1] in _NO_LINE_END)
            or (not _wide(ch) and not _wide(previous[-1]))
        )
        if glued:
            tokens[-1] = (previous + ch, tokens[-1][1])
        else:
            tokens.append((ch, space))
        space = False
    return tokens


def paragraphs(text: str) -> list[str]:
    """The paragraphs of a protocol text: an empty line separates them, a single line break is a space
    (none between two CJK characters), as protocol files wrap their lines for reading in an editor."""
    result = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line.strip() for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        joined = lines[0]
        for line in lines[1:]:
            joined += ("" if _wide(joined[-1]) and _wide(line[0]) else " ") + line
        result.append(joined)
    return result


def wrap(paragraph: str, width: float, chain: FontChain, size: int, *, break_words: bool = True) -> list[str] | None:
    """Lines of one paragraph, each no wider than ``width`` px at ``size`` px; a word wider than the
    line is broken between characters, or with ``break_words=False`` the result is None."""
    lines: list[str] = []
    current = ""
    for token, space in _tokens(paragraph):
        candidate = current + (" " if space and current else "") + token
        if chain.width(candidate, size) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = token
        if not break_words and chain.width(current, size) > width:
            return None
        while chain.width(current, size) > width:
            # a word longer than the line: break it between characters
            cut = len(current) - 1
            while cut > 1 and chain.width(current[:cut], size) > width:
                cut -= 1
            lines.append(current[:cut])
            current = current[cut:]
    if current or not lines:
        lines.append(current)
    return lines
