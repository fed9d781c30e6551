"""The panel: consent, instructions, SSQ items, ratings, breaks and the session's own messages, drawn in
the world in front of the participant.

The panel's text is drawn with Pillow into an image the renderer puts on a quad 1.5 m ahead, level with
the eyes, facing the direction the participant looked when it appeared. Nothing is preselected: a value
is chosen with a key (digits, arrows) or the pointer, and only ``Enter`` or the Confirm button sends it.

Every panel is laid out once (:func:`layout_panel`) into boxes: lines of text, buttons and their
captions. Text wraps to the width of the panel and shrinks, down to a legible minimum, to fit one page;
longer text is split into pages ("1/2 ›"), and the button that moves on stays inactive until the last
page has been shown. Labels and captions that cannot fit are a :class:`LayoutError`, which
:func:`check_protocol` turns into a one-line protocol error naming the key before any session starts.
All hit-testing is plain geometry, so it is tested without a GL context.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from study.errors import ProtocolError
from viewer.backends.base import InputEvent, Ray
from viewer.renderer import PanelQuad
from viewer.text import FontChain, missing_characters, paragraphs, wrap

#: Panel size in metres and its distance from the eyes.
WIDTH_M, HEIGHT_M, DISTANCE_M = 1.2, 0.7, 1.5
#: Image size in pixels (1000 px per metre: about 17 px per degree at 1.5 m, above the headset's density).
WIDTH_PX, HEIGHT_PX = 1200, 700

#: Text sizes in pixels, largest first. At 1.5 m, 26 px is a cap height of about 0.7 degrees, twice
#: what comfortable reading in a headset needs; body text never gets smaller, it is paged instead.
TEXT_SIZES = (34, 31, 28, 26)
PAGED_TEXT_SIZE = 30
LABEL_SIZES = (24, 22, 20, 18)
CAPTION_SIZES = (34, 31, 28, 25)
HEADER_SIZE = 24
DIGIT_SIZE = 44
LINE_SPACING = 1.22

_MARGIN = 60
_HEADER_TOP = 22
_ACTIONS = (592, 664)          # y range of the button row at the bottom
_VALUES = (368, 448)           # y range of the value buttons of a rating panel
_LABELS_BOTTOM = 576
_GAP = 16

_BACKGROUND = (40, 40, 40, 255)
_TEXT = (235, 235, 235, 255)
_DIM_TEXT = (140, 140, 140, 255)
_HEADER_TEXT = (175, 175, 175, 255)
_BUTTON = (80, 80, 80, 255)
_HOVER = (110, 110, 110, 255)
_SELECTED = (40, 120, 200, 255)
_DISABLED = (60, 60, 60, 255)

# Every drawn panel image gets a new number, so the renderer re-uploads exactly when it changed.
_image_versions = itertools.count(1)


class LayoutError(Exception):
    """A label or caption that cannot fit its place; ``part`` says which ("label:5", "caption:confirm")."""

    def __init__(self, part: str, message: str):
        super().__init__(message)
        self.part = part


@dataclass(frozen=True)
class Box:
    """A rectangle in panel pixels (x0, y0 top-left; exclusive x1, y1), named by its target for buttons
    ("value:<n>", "confirm", "page:next", ...)."""

    target: str
    x0: float
    y0: float
    x1: float
    y1: float

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1

    def overlaps(self, other: Box) -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def inside(self, other: Box) -> bool:
        return other.x0 <= self.x0 and self.x1 <= other.x1 and other.y0 <= self.y0 and self.y1 <= other.y1


PANEL_BOX = Box("panel", 0, 0, WIDTH_PX, HEIGHT_PX)


@dataclass(frozen=True)
class TextLine:
    """One line of text: its box spans the advance width and the chain's ascent..descent."""

    text: str
    size: int
    box: Box
    baseline: float


@dataclass(frozen=True)
class Button:
    """A button and the caption it shows in each of its states (e.g. "Continue in 5 s", "Continue")."""

    box: Box
    captions: tuple[TextLine, ...]


@dataclass(frozen=True)
class PanelLayout:
    """Where everything of a panel goes; the body text has one tuple of lines per page."""

    pages: tuple[tuple[TextLine, ...], ...]
    header: TextLine | None
    values: tuple[Button, ...]
    labels: tuple[TextLine, ...]
    actions: tuple[Button, ...]
    previous_page: Button | None
    next_page: tuple[Button, ...]          # one per page but the last: its caption says "k/n ›"

    def buttons(self) -> list[Button]:
        return [*self.values, *self.actions, *([self.previous_page] if self.previous_page else []), *self.next_page]


@dataclass(frozen=True)
class PanelContent:
    """What a panel shows, independent of where it hangs.

    Attributes
    ----------
    kind : str
        consent, instructions, ssq, validation, rating, break, ready, paused, validation_wait, stop or end.
    text : str
        The body (paragraphs separated by an empty line).
    values, labels :
        The values a participant may choose and their anchor labels (ratings and SSQ items).
    actions : tuple of (target, caption)
        The buttons that end the panel, left to right.
    header : str or None
        A line above the body ("Question 3 of 9").
    min_duration_s : float
        A break's minimum: its Continue shows ``countdown`` until then.
    countdown : str
        The caption while waiting, with ``{seconds}``.
    page_caption : str
        The next-page button's caption, with ``{page}`` and ``{pages}``.
    """

    kind: str
    text: str
    values: tuple[int, ...] = ()
    labels: Mapping[int, str] = field(default_factory=dict)
    actions: tuple[tuple[str, str], ...] = ()
    header: str | None = None
    min_duration_s: float = 0.0
    countdown: str = "Continue in {seconds} s"
    page_caption: str = "{page}/{pages}"


@dataclass(frozen=True)
class PanelResult:
    """A panel that ended: the action taken (confirm, continue, agree, decline, finish, stop, go_on) and
    the chosen value (None where nothing was chosen)."""

    action: str
    value: int | None = None


# -- contents ---------------------------------------------------------------------------------------------

def content_for_step(step, protocol) -> PanelContent:
    """The panel of an engine step (any kind but "stimulus"; "done" is the end panel)."""
    captions = protocol.captions
    values = tuple(range(step.min_value, step.max_value + 1)) if step.kind in ("rating", "ssq") else ()
    common = dict(countdown=captions["continue_in"], page_caption=captions["page"])
    if step.kind == "consent":
        return PanelContent("consent", step.text, actions=(("agree", captions["agree"]), ("decline", captions["decline"])),
                            **common)
    if step.kind in ("rating", "ssq"):
        header = None
        if protocol.panel.question_progress and step.item_number is not None:
            header = captions["question_progress"].format(number=step.item_number, count=step.item_count)
        return PanelContent(step.kind, step.text, values=values, labels=dict(step.labels),
                            actions=(("confirm", captions["confirm"]),), header=header, **common)
    if step.kind == "done":
        return message_content("end", protocol)
    return PanelContent(step.kind, step.text, actions=(("continue", captions["continue"]),),
                        min_duration_s=step.min_duration_s or 0.0, **common)


def message_content(kind: str, protocol) -> PanelContent:
    """A panel the session itself shows: "ready" (after a resume or a pause), "paused" (no buttons: the
    experimenter resumes), "validation_wait" (no buttons: the experimenter decides after a "recalibrate"),
    "stop" (Escape asks first), "end" (the thank-you text) or "declined" (after consent was declined)."""
    captions = protocol.captions
    common = dict(countdown=captions["continue_in"], page_caption=captions["page"])
    if kind == "ready":
        return PanelContent("ready", captions["ready"], actions=(("continue", captions["continue"]),), **common)
    if kind == "paused":
        return PanelContent("paused", captions["paused"], **common)
    if kind == "validation_wait":
        return PanelContent("validation_wait", captions["validation_wait"], **common)
    if kind == "stop":
        return PanelContent("stop", captions["stop_question"],
                            actions=(("go_on", captions["go_on"]), ("stop", captions["stop"])), **common)
    if kind == "end":
        return PanelContent("end", protocol.thank_you, actions=(("finish", captions["finish"]),), **common)
    if kind == "declined":
        return PanelContent("declined", captions["declined"], actions=(("finish", captions["finish"]),), **common)
    raise ValueError(f"unknown message panel {kind!r}")


# -- layout -----------------------------------------------------------------------------------------------

def _line(chain: FontChain, text: str, size: int, x0: float, top: float) -> TextLine:
    ascent, descent = chain.line_metrics(size)
    width = chain.width(text, size)
    return TextLine(text, size, Box("text", x0, top, x0 + width, top + ascent + descent), top + ascent)


def _centred(chain: FontChain, text: str, size: int, box: Box) -> TextLine:
    ascent, descent = chain.line_metrics(size)
    width = chain.width(text, size)
    top = (box.y0 + box.y1 - ascent - descent) / 2
    return TextLine(text, size, Box("caption", (box.x0 + box.x1 - width) / 2, top, (box.x0 + box.x1 + width) / 2,
                                    top + ascent + descent), top + ascent)


def _body_lines(chain: FontChain, text: str, size: int, width: float) -> list[list[str]]:
    return [wrap(p, width, chain, size) for p in paragraphs(text)] or [[""]]


def _pages(chain: FontChain, text: str, top: float, bottom: float) -> tuple[tuple[TextLine, ...], ...]:
    width = WIDTH_PX - 2 * _MARGIN
    for size in TEXT_SIZES:
        page = _stack(chain, _body_lines(chain, text, size, width), size, top, bottom)
        if page is not None:
            return (page,)
    # too long for one page even at the smallest size: page it at a comfortable size
    size = PAGED_TEXT_SIZE
    ascent, descent = chain.line_metrics(size)
    step = (ascent + descent) * LINE_SPACING
    pages, current, y = [], [], top
    for paragraph in _body_lines(chain, text, size, width):
        if current:
            y += step * 0.5
        for line in paragraph:
            if y + ascent + descent > bottom and current:
                pages.append(tuple(current))
                current, y = [], top
            current.append(_line(chain, line, size, (WIDTH_PX - chain.width(line, size)) / 2, y))
            y += step
    pages.append(tuple(current))
    return tuple(pages)


def _stack(chain: FontChain, body: list[list[str]], size: int, top: float, bottom: float):
    """The lines centred under each other from ``top``, or None if they pass ``bottom``."""
    ascent, descent = chain.line_metrics(size)
    step = (ascent + descent) * LINE_SPACING
    lines, y = [], top
    for number, paragraph in enumerate(body):
        if number:
            y += step * 0.5
        for line in paragraph:
            if y + ascent + descent > bottom:
                return None
            lines.append(_line(chain, line, size, (WIDTH_PX - chain.width(line, size)) / 2, y))
            y += step
    return tuple(lines)


def _fit_caption(chain: FontChain, variants: list[str], width: float, height: float, part: str) -> int:
    for size in CAPTION_SIZES:
        ascent, descent = chain.line_metrics(size)
        if ascent + descent <= height and all(chain.width(v, size) <= width for v in variants):
            return size
    raise LayoutError(part, f"caption {variants[0]!r} does not fit its button even at {CAPTION_SIZES[-1]} px; shorten it")


def _caption_variants(content: PanelContent, target: str, caption: str) -> list[str]:
    if target == "continue" and content.min_duration_s > 0:
        return [caption, content.countdown.format(seconds=math.ceil(content.min_duration_s)),
                content.countdown.format(seconds=1)]
    return [caption]


def layout_panel(content: PanelContent, chain: FontChain) -> PanelLayout:
    """Lays out a panel; :class:`LayoutError` if a label or caption cannot fit."""
    header = None
    top = 44
    if content.header:
        ascent, descent = chain.line_metrics(HEADER_SIZE)
        header = _line(chain, content.header, HEADER_SIZE, (WIDTH_PX - chain.width(content.header, HEADER_SIZE)) / 2,
                       _HEADER_TOP)
        if header.box.x0 < _MARGIN:
            raise LayoutError("header", f"the progress line {content.header!r} is wider than the panel; shorten it")
        top = header.box.y1 + 18
    text_bottom = (_VALUES[0] - 20) if content.values else (_ACTIONS[0] - 22)
    pages = _pages(chain, content.text, top, text_bottom)
    if len(pages) == 1 and not content.values and pages[0]:
        # a short message sits in the middle of its space, not under the top edge
        shift = max(0.0, (text_bottom - pages[0][-1].box.y1) / 2 - 10)
        pages = (tuple(TextLine(line.text, line.size, Box("text", line.box.x0, line.box.y0 + shift, line.box.x1,
                                                           line.box.y1 + shift), line.baseline + shift)
                       for line in pages[0]),)

    values, labels = [], []
    if content.values:
        n = len(content.values)
        width = (WIDTH_PX - 2 * _MARGIN - _GAP * (n - 1)) / n
        for i, value in enumerate(content.values):
            x0 = _MARGIN + i * (width + _GAP)
            box = Box(f"value:{value}", x0, _VALUES[0], x0 + width, _VALUES[1])
            values.append(Button(box, (_centred(chain, str(value), DIGIT_SIZE, box),)))
        # a label may use the room up to halfway to the next labelled value (bipolar and 11-point scales
        # label only a few values, and their words need more than one button's width)
        labelled = [(value, button.box) for value, button in zip(content.values, values) if content.labels.get(value)]
        centres = [(box.x0 + box.x1) / 2 for _, box in labelled]
        for k, (value, box) in enumerate(labelled):
            left = _MARGIN if k == 0 else (centres[k - 1] + centres[k]) / 2 + _GAP / 2
            right = WIDTH_PX - _MARGIN if k == len(labelled) - 1 else (centres[k] + centres[k + 1]) / 2 - _GAP / 2
            labels += _label_lines(chain, content.labels[value], box, value, left, right)

    pages_count = len(pages)
    previous_page = None
    next_page: list[Button] = []
    left, right = _MARGIN, WIDTH_PX - _MARGIN
    if pages_count > 1:
        previous_page = _nav_button(chain, ["‹"], "page:previous", left, _ACTIONS, anchor="left")
        variants = [content.page_caption.format(page=k, pages=pages_count) + " ›" for k in range(1, pages_count)]
        next_box = _nav_button(chain, variants, "page:next", right, _ACTIONS, anchor="right").box
        next_page = [Button(next_box, (_centred(chain, v, _fit_caption(chain, variants, next_box.x1 - next_box.x0 - 24,
                                                                            _ACTIONS[1] - _ACTIONS[0], "caption:page"),
                                                next_box),)) for v in variants]
        left, right = previous_page.box.x1 + 24, next_box.x0 - 24

    actions = []
    if content.actions:
        count = len(content.actions)
        room = (right - left - 24 * (count - 1)) / count
        height = _ACTIONS[1] - _ACTIONS[0]
        sizes, widths = [], []
        for target, caption in content.actions:
            variants = _caption_variants(content, target, caption)
            size = _fit_caption(chain, variants, room - 40, height, f"caption:{target}")
            sizes.append((variants, size))
            widths.append(min(room, max(240.0, max(chain.width(v, size) for v in variants) + 60)))
        total = sum(widths) + 24 * (count - 1)
        x = (left + right - total) / 2
        for (target, _), (variants, size), width in zip(content.actions, sizes, widths):
            box = Box(target, x, _ACTIONS[0], x + width, _ACTIONS[1])
            actions.append(Button(box, tuple(_centred(chain, v, size, box) for v in variants)))
            x += width + 24
    return PanelLayout(tuple(pages), header, tuple(values), tuple(labels), tuple(actions), previous_page, tuple(next_page))


def _nav_button(chain: FontChain, variants: list[str], target: str, edge: float, rows, *, anchor: str) -> Button:
    size = CAPTION_SIZES[0]
    width = max(90.0, max(chain.width(v, size) for v in variants) + 44)
    x0, x1 = (edge, edge + width) if anchor == "left" else (edge - width, edge)
    box = Box(target, x0, rows[0], x1, rows[1])
    return Button(box, tuple(_centred(chain, v, size, box) for v in variants))


def _label_lines(chain: FontChain, label: str, box: Box, value: int, left: float, right: float) -> list[TextLine]:
    """The label's lines under its button: centred on it, moved sideways within ``left..right`` if needed.

    The room is the button's own width widened to ``left..right``; a word is broken only if it is wider
    than all of that.
    """
    centre = (box.x0 + box.x1) / 2
    lo, hi = min(left, box.x0), max(right, box.x1)
    attempts = [(size, width, False) for size in LABEL_SIZES for width in (box.x1 - box.x0, hi - lo)]
    for size, width, breaking in attempts + [(LABEL_SIZES[-1], hi - lo, True)]:
        ascent, descent = chain.line_metrics(size)
        step = (ascent + descent) * 1.08
        wrapped = [wrap(p, width, chain, size, break_words=breaking) for p in paragraphs(label)]
        if any(w is None for w in wrapped):
            continue
        lines = [line for w in wrapped for line in w]
        if box.y1 + 10 + (len(lines) - 1) * step + ascent + descent > _LABELS_BOTTOM:
            continue
        # the lines move sideways as one centred block, so that they read as one label
        widths = [chain.width(line, size) for line in lines]
        block = max(widths)
        block_x0 = min(max(centre - block / 2, lo), hi - block)
        placed, y = [], box.y1 + 10
        for line, line_width in zip(lines, widths):
            placed.append(_line(chain, line, size, block_x0 + (block - line_width) / 2, y))
            y += step
        return placed
    raise LayoutError(f"label:{value}", f"label {label!r} does not fit under its button even at {LABEL_SIZES[-1]} px "
                                        f"({hi - lo:.0f} px wide); shorten it")


# -- the panel ---------------------------------------------------------------------------------------------

class Panel:
    """A panel on screen: its layout, the participant's choice, the page shown, hit-testing and drawing.

    Parameters
    ----------
    content : PanelContent
        What it shows (see :func:`content_for_step`, :func:`message_content`).
    shown_at_s : float
        Clock time the panel appeared (seconds); a break cannot end before ``min_duration_s``.
    yaw_deg : float
        Direction the panel faces from.
    eye_position : (3,) array
        Head position when it appeared (metres); the panel hangs ``DISTANCE_M`` ahead of it.
    fonts : FontChain, optional
        The fonts to draw with (default: the system chain).
    """

    def __init__(self, content: PanelContent, *, shown_at_s: float, yaw_deg: float = 0.0,
                 eye_position: np.ndarray | None = None, fonts: FontChain | None = None):
        self.content = content
        self.shown_at_s = shown_at_s
        self.values = content.values
        self.fonts = fonts or _default_chain()
        self.layout = layout_panel(content, self.fonts)
        self.selected: int | None = None
        self.hovered: str | None = None
        self.focused: str | None = None     # the action the arrow keys picked on a panel with several
        self.page = 0
        self.seen_last_page = len(self.layout.pages) == 1
        yaw = math.radians(yaw_deg)
        self.forward = np.array([math.sin(yaw), 0.0, -math.cos(yaw)])
        self.right = np.array([math.cos(yaw), 0.0, math.sin(yaw)])
        self.up = np.array([0.0, 1.0, 0.0])
        origin = np.zeros(3) if eye_position is None else np.asarray(eye_position, dtype=np.float64)
        self.center = origin + DISTANCE_M * self.forward
        self._image: np.ndarray | None = None
        self._drawn_state = None
        self._version = 0

    @property
    def boxes(self) -> tuple[Box, ...]:
        """The buttons that can be pointed at now."""
        boxes = [b.box for b in (*self.layout.values, *self.layout.actions)]
        if self.page > 0 and self.layout.previous_page:
            boxes.append(self.layout.previous_page.box)
        if self.page < len(self.layout.pages) - 1:
            boxes.append(self.layout.next_page[self.page].box)
        return tuple(boxes)

    def _remaining_s(self, now_s: float) -> float:
        if not self.content.min_duration_s:
            return 0.0
        return max(0.0, self.content.min_duration_s - (now_s - self.shown_at_s))

    def enabled(self, target: str, now_s: float) -> bool:
        """Whether an action button works now: every page has been shown, a value is chosen where one is
        asked for, and a break's minimum has passed."""
        if not self.seen_last_page:
            return False
        if target == "confirm":
            return self.selected is not None
        if target == "continue":
            return self._remaining_s(now_s) <= 0.0
        return True

    def can_confirm(self, now_s: float) -> bool:
        """Whether the panel's first action (Confirm, Continue, ...) is enabled."""
        return bool(self.content.actions) and self.enabled(self.content.actions[0][0], now_s)

    def _caption(self, button: Button, now_s: float) -> TextLine:
        if button.box.target == "continue" and len(button.captions) > 1:
            remaining = self._remaining_s(now_s)
            if remaining > 0:
                text = self.content.countdown.format(seconds=math.ceil(remaining))
                # laid out for the widest count; every count fits at that size
                return _centred(self.fonts, text, button.captions[1].size, button.box)
        return button.captions[0]

    def draw(self, now_s: float) -> np.ndarray:
        """The panel image ``(HEIGHT_PX, WIDTH_PX, 4) uint8`` sRGB for the current state."""
        from PIL import Image, ImageDraw

        image = Image.new("RGBA", (WIDTH_PX, HEIGHT_PX), _BACKGROUND)
        pen = ImageDraw.Draw(image)
        chain = self.fonts
        if self.layout.header is not None:
            line = self.layout.header
            chain.draw(pen, line.box.x0, line.baseline, line.text, line.size, _HEADER_TEXT)
        for line in self.layout.pages[self.page]:
            chain.draw(pen, line.box.x0, line.baseline, line.text, line.size, _TEXT)
        for button in self.layout.values:
            fill = _SELECTED if button.box.target == f"value:{self.selected}" else (
                _HOVER if button.box.target == self.hovered else _BUTTON)
            self._button(pen, button.box, fill)
            digit = button.captions[0]
            chain.draw(pen, digit.box.x0, digit.baseline, digit.text, digit.size, _TEXT)
        for line in self.layout.labels:
            chain.draw(pen, line.box.x0, line.baseline, line.text, line.size, _TEXT)
        for button in self.layout.actions:
            target = button.box.target
            enabled = self.enabled(target, now_s)
            if not enabled:
                fill = _DISABLED
            elif target in (self.hovered, self.focused):
                fill = _HOVER if target == self.hovered else _SELECTED
            else:
                fill = _BUTTON
            self._button(pen, button.box, fill)
            caption = self._caption(button, now_s)
            chain.draw(pen, caption.box.x0, caption.baseline, caption.text, caption.size, _TEXT if enabled else _DIM_TEXT)
        nav = []
        if self.page > 0 and self.layout.previous_page:
            nav.append(self.layout.previous_page)
        if self.page < len(self.layout.pages) - 1:
            nav.append(self.layout.next_page[self.page])
        for button in nav:
            self._button(pen, button.box, _HOVER if button.box.target == self.hovered else _BUTTON)
            caption = button.captions[0]
            chain.draw(pen, caption.box.x0, caption.baseline, caption.text, caption.size, _TEXT)
        return np.asarray(image)

    @staticmethod
    def _button(pen, box: Box, fill) -> None:
        pen.rounded_rectangle((box.x0, box.y0, box.x1 - 1, box.y1 - 1), radius=12, fill=fill)

    def quad(self, now_s: float) -> PanelQuad:
        """The panel as the renderer draws it; the image is redrawn only when what it shows changed."""
        state = (self.selected, self.hovered, self.focused, self.page, self.seen_last_page,
                 tuple(self.enabled(t, now_s) for t, _ in self.content.actions), math.ceil(self._remaining_s(now_s)))
        if state != self._drawn_state:
            self._image = self.draw(now_s)
            self._drawn_state = state
            self._version = next(_image_versions)
        return PanelQuad(
            center=self.center, half_right=self.right * WIDTH_M / 2, half_up=self.up * HEIGHT_M / 2,
            image=self._image, version=self._version,
        )

    # -- input -------------------------------------------------------------------------------------------

    def hit(self, ray: Ray) -> str | None:
        """The button a pointer ray points at ("value:<n>", an action, "page:next", ...), or None.

        Notes
        -----
        The ray :math:`o + t\\,d` meets the panel plane (normal :math:`-f`) at
        :math:`t = (c - o)\\cdot f / (d \\cdot f)`; the hit's offsets along the panel's right and up
        axes give its pixel.
        """
        d = np.asarray(ray.direction, dtype=np.float64)
        facing = float(d @ self.forward)
        if facing <= 1e-9:
            return None
        t = float((self.center - np.asarray(ray.origin, dtype=np.float64)) @ self.forward) / facing
        if t <= 0:
            return None
        offset = np.asarray(ray.origin, dtype=np.float64) + t * d - self.center
        x = (float(offset @ self.right) / WIDTH_M + 0.5) * WIDTH_PX
        y = (0.5 - float(offset @ self.up) / HEIGHT_M) * HEIGHT_PX
        for box in self.boxes:
            if box.contains(x, y):
                return box.target
        return None

    def ray_to(self, target: str, eye: np.ndarray | None = None) -> Ray:
        """A pointer ray from ``eye`` (default: where the panel was placed from) through the centre of a
        button that can be pointed at now; for scripted participants and tests."""
        box = next(b for b in self.boxes if b.target == target)
        x = ((box.x0 + box.x1) / 2 / WIDTH_PX - 0.5) * WIDTH_M
        y = (0.5 - (box.y0 + box.y1) / 2 / HEIGHT_PX) * HEIGHT_M
        point = self.center + x * self.right + y * self.up
        origin = self.center - DISTANCE_M * self.forward if eye is None else np.asarray(eye, dtype=np.float64)
        return Ray(origin, (point - origin) / np.linalg.norm(point - origin))

    def hover(self, ray: Ray | None) -> None:
        """Highlights the button under the pointer."""
        self.hovered = None if ray is None else self.hit(ray)

    def _turn_page(self, delta: int) -> None:
        self.page = min(max(self.page + delta, 0), len(self.layout.pages) - 1)
        if self.page == len(self.layout.pages) - 1:
            self.seen_last_page = True

    def handle(self, event: InputEvent, now_s: float) -> tuple[PanelResult | None, bool]:
        """Applies one input event.

        Returns
        -------
        result : PanelResult or None
            Set once the participant ended the panel (confirmed, continued, agreed, ...).
        changed : bool
            Whether the choice changed (for a haptic tick).
        """
        before = (self.selected, self.focused)
        actions = [target for target, _ in self.content.actions]
        if event.kind == "click" and event.ray is not None:
            target = self.hit(event.ray)
            if target == "page:next":
                self._turn_page(1)
            elif target == "page:previous":
                self._turn_page(-1)
            elif target is not None and target.startswith("value:"):
                self.selected = int(target.split(":")[1])
            elif target in actions:
                return self._act(target, now_s), False
        elif event.kind == "key" and event.key is not None:
            key = event.key
            if key in ("pagedown", "pageup"):
                self._turn_page(1 if key == "pagedown" else -1)
            elif key == "enter":
                if not self.seen_last_page:
                    self._turn_page(1)
                elif len(actions) == 1:
                    return self._act(actions[0], now_s), False
                elif self.focused is not None:
                    return self._act(self.focused, now_s), False
            elif key.isdigit() and int(key) in self.values:
                self.selected = int(key)
            elif key.isdigit() and not self.values and len(actions) > 1 and 1 <= int(key) <= len(actions):
                # a question with buttons (Go on / Stop): key k points at the k-th, Enter confirms it
                self.focused = actions[int(key) - 1]
            elif key in ("left", "right"):
                self._arrow(key, actions)
        return None, (self.selected, self.focused) != before

    def _arrow(self, key: str, actions: list[str]) -> None:
        step = 1 if key == "right" else -1
        if self.values:
            if self.selected is None:
                self.selected = self.values[0] if step > 0 else self.values[-1]
            else:
                i = self.values.index(self.selected) + step
                self.selected = self.values[min(max(i, 0), len(self.values) - 1)]
        elif len(actions) > 1:
            if self.focused is None:
                self.focused = actions[0] if step > 0 else actions[-1]
            else:
                i = actions.index(self.focused) + step
                self.focused = actions[min(max(i, 0), len(actions) - 1)]
        else:
            self._turn_page(step)

    def _act(self, target: str, now_s: float) -> PanelResult | None:
        if not self.enabled(target, now_s):
            return None
        return PanelResult(target, self.selected if self.values else None)


def _default_chain() -> FontChain:
    global _CHAIN
    if _CHAIN is None:
        _CHAIN = FontChain.for_protocol()
    return _CHAIN


_CHAIN: FontChain | None = None


# -- checking a protocol -----------------------------------------------------------------------------------

def panel_contents(protocol) -> list[tuple[str, PanelContent, dict[str, str]]]:
    """Every panel a session of ``protocol`` can show, as (what, content, part → protocol key).

    One of each kind, every SSQ item and every rating item (with its progress line at the largest
    question number, where the protocol shows one).
    """
    from study.engine import Step

    captions = {f"caption:{key}": f"captions.{key}" for key in protocol.captions}
    captions["caption:page"] = "captions.page"
    captions["header"] = "captions.question_progress"
    found = []

    def add(what, content, text_key, labels_key=None):
        parts = {"text": text_key, **captions}
        if labels_key:
            parts.update({f"label:{v}": f"{labels_key}.{v}" for v in content.labels})
        found.append((what, content, parts))

    if protocol.consent is not None:
        add("consent", content_for_step(Step("consent", "consent", text=protocol.consent, min_value=0, max_value=1),
                                        protocol), "consent")
    add("instructions", content_for_step(Step("instructions", "instructions", text=protocol.instructions), protocol),
        "instructions")
    if protocol.validation is not None:
        add("validation", content_for_step(Step("validation", "validation", text=protocol.validation.instructions),
                                           protocol), "validation.instructions")
        add("validation_wait", message_content("validation_wait", protocol), "captions.validation_wait")
    add("training instructions", content_for_step(
        Step("instructions", "training/instructions", text=protocol.training.instructions), protocol), "training.instructions")
    add("break", content_for_step(Step("break", "break/0", text=protocol.breaks.text,
                                       min_duration_s=protocol.breaks.min_duration_s), protocol), "breaks.text")
    ssq = protocol.ssq
    for i, symptom in enumerate(ssq.items):
        step = Step("ssq", f"ssq/pre/{i + 1}", text=f"{ssq.question}\n\n{symptom}", labels=ssq.labels,
                    min_value=min(ssq.labels), max_value=max(ssq.labels), item_number=len(ssq.items),
                    item_count=len(ssq.items))
        add(f"SSQ item {i + 1}", content_for_step(step, protocol), f"ssq.items[{i}]", "ssq.labels")
    count = sum(len(scale.items) for scale in protocol.scales)
    for i, scale in enumerate(protocol.scales):
        for j, item in enumerate(scale.items):
            step = Step("rating", f"trial/0/{scale.id}/{item.id}", text=item.question, labels=item.labels,
                        min_value=scale.min, max_value=scale.max, item_number=count, item_count=count)
            add(f"{scale.id} {item.id}", content_for_step(step, protocol), f"scales[{i}].items[{j}].question",
                f"scales[{i}].items[{j}].labels")
    for kind, key in (("ready", "captions.ready"), ("paused", "captions.paused"), ("stop", "captions.stop_question"),
                      ("end", "thank_you"), ("declined", "captions.declined")):
        add(kind, message_content(kind, protocol), key)
    return found


def check_protocol(protocol, source: str, fonts: FontChain | None = None) -> FontChain:
    """Checks that every text of ``protocol`` can be drawn and every panel laid out; returns the fonts.

    Raises
    ------
    ProtocolError
        ``<source>: <key>: ...`` for a character no panel font has, or a label or caption that cannot fit.
    """
    from study.protocol import participant_texts

    chain = fonts or FontChain.for_protocol(protocol.panel.fonts)
    for key, text in participant_texts(protocol):
        missing = missing_characters(text, chain)
        if missing:
            ch = missing[0]
            raise ProtocolError(
                f"{source}: {key}: character {ch!r} (U+{ord(ch):04X}) is in no panel font ({chain.describe()}); "
                "remove it, or add a font that has it under [panel] fonts"
            )
    for what, content, parts in panel_contents(protocol):
        try:
            layout_panel(content, chain)
        except LayoutError as error:
            raise ProtocolError(f"{source}: {parts.get(error.part, what)}: {error} (in the {what} panel)") from None
    return chain
