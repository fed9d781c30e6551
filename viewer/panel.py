"""The rating panel: question, anchor labels and an explicit confirm, drawn in the world in front of
the participant; the same panel shows instructions, breaks and SSQ items.

The panel's text is drawn with Pillow into an image the renderer puts on a quad 1.5 m ahead, level
with the eyes, facing the direction the participant looked when it appeared. Nothing is preselected:
a value is chosen with a key (``1``–``5``, arrows) or the pointer, and only ``Enter`` or the Confirm
button sends it. All hit-testing is plain geometry, so it is tested without a GL context.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from viewer.backends.base import InputEvent, Ray
from viewer.renderer import PanelQuad

#: Panel size in metres and its distance from the eyes.
WIDTH_M, HEIGHT_M, DISTANCE_M = 1.2, 0.7, 1.5
#: Image size in pixels (1000 px per metre: about 17 px per degree at 1.5 m, above the headset's density).
WIDTH_PX, HEIGHT_PX = 1200, 700

_BACKGROUND = (40, 40, 40, 255)
_TEXT = (235, 235, 235, 255)
_BUTTON = (80, 80, 80, 255)
_HOVER = (110, 110, 110, 255)
_SELECTED = (40, 120, 200, 255)
_DISABLED = (60, 60, 60, 255)
_DIM_TEXT = (140, 140, 140, 255)

# Every drawn panel image gets a new number, so the renderer re-uploads exactly when it changed.
_image_versions = itertools.count(1)


@lru_cache(maxsize=8)
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


@dataclass(frozen=True)
class Box:
    """A button's rectangle in panel pixels (x0, y0 top-left; exclusive x1, y1)."""

    target: str     # "value:<n>" or "confirm"
    x0: int
    y0: int
    x1: int
    y1: int

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1


@dataclass(frozen=True)
class PanelResult:
    """A confirmed panel: the chosen value (None for instructions and breaks)."""

    value: int | None


class Panel:
    """The panel for one engine step (any kind but "stimulus" and "done").

    Parameters
    ----------
    step : study.engine.Step
        Its ``text``, ``labels``, ``min_value``/``max_value`` and, for breaks, ``min_duration_s``.
    shown_at_s : float
        Clock time the panel appeared (seconds); breaks cannot be confirmed before ``min_duration_s``.
    yaw_deg : float
        Direction the panel faces from.
    eye_position : (3,) array
        Head position when it appeared (metres); the panel hangs ``DISTANCE_M`` ahead of it.
    """

    def __init__(self, step, *, shown_at_s: float, yaw_deg: float = 0.0, eye_position: np.ndarray | None = None):
        self.step = step
        self.shown_at_s = shown_at_s
        self.values: tuple[int, ...] = (
            tuple(range(step.min_value, step.max_value + 1)) if step.min_value is not None else ()
        )
        self.selected: int | None = None
        self.hovered: str | None = None
        yaw = math.radians(yaw_deg)
        self.forward = np.array([math.sin(yaw), 0.0, -math.cos(yaw)])
        self.right = np.array([math.cos(yaw), 0.0, math.sin(yaw)])
        self.up = np.array([0.0, 1.0, 0.0])
        origin = np.zeros(3) if eye_position is None else np.asarray(eye_position, dtype=np.float64)
        self.center = origin + DISTANCE_M * self.forward
        self.boxes = self._layout()
        self._image: np.ndarray | None = None
        self._drawn_state = None
        self._version = 0

    # -- layout and drawing ------------------------------------------------------------------------------

    def _layout(self) -> tuple[Box, ...]:
        boxes = []
        n = len(self.values)
        if n:
            margin, gap = 60, 20
            width = (WIDTH_PX - 2 * margin - gap * (n - 1)) // n
            for i, value in enumerate(self.values):
                x0 = margin + i * (width + gap)
                boxes.append(Box(f"value:{value}", x0, 300, x0 + width, 400))
        boxes.append(Box("confirm", WIDTH_PX // 2 - 160, 580, WIDTH_PX // 2 + 160, 660))
        return tuple(boxes)

    def _remaining_s(self, now_s: float) -> float:
        if self.step.kind != "break" or not self.step.min_duration_s:
            return 0.0
        return max(0.0, self.step.min_duration_s - (now_s - self.shown_at_s))

    def can_confirm(self, now_s: float) -> bool:
        """Whether Confirm is enabled: a value is chosen (rating, SSQ) or a break's minimum has passed."""
        if self.values:
            return self.selected is not None
        return self._remaining_s(now_s) <= 0.0

    def draw(self, now_s: float) -> np.ndarray:
        """The panel image ``(HEIGHT_PX, WIDTH_PX, 4) uint8`` sRGB for the current state."""
        from PIL import Image, ImageDraw

        image = Image.new("RGBA", (WIDTH_PX, HEIGHT_PX), _BACKGROUND)
        pen = ImageDraw.Draw(image)
        top = 40 if self.values else 80
        wrap = 48 if self.values else 52
        for paragraph in self.step.text.splitlines() or [""]:
            for line in textwrap.wrap(paragraph, wrap) or [""]:
                pen.text((WIDTH_PX // 2, top), line, font=_font(34), fill=_TEXT, anchor="mt")
                top += 44
        for box in self.boxes:
            enabled = box.target != "confirm" or self.can_confirm(now_s)
            if box.target == f"value:{self.selected}":
                fill = _SELECTED
            elif not enabled:
                fill = _DISABLED
            elif box.target == self.hovered:
                fill = _HOVER
            else:
                fill = _BUTTON
            pen.rounded_rectangle((box.x0, box.y0, box.x1 - 1, box.y1 - 1), radius=12, fill=fill)
            cx, cy = (box.x0 + box.x1) // 2, (box.y0 + box.y1) // 2
            if box.target == "confirm":
                remaining = self._remaining_s(now_s)
                caption = "Confirm" if self.values else ("Continue" if remaining <= 0 else f"Continue in {math.ceil(remaining)} s")
                pen.text((cx, cy), caption, font=_font(34), fill=_TEXT if enabled else _DIM_TEXT, anchor="mm")
                continue
            value = int(box.target.split(":")[1])
            pen.text((cx, cy), str(value), font=_font(44), fill=_TEXT, anchor="mm")
            label = self.step.labels.get(value, "")
            y = box.y1 + 16
            chars = max(6, (box.x1 - box.x0) // 13)
            for line in textwrap.wrap(label, chars):
                pen.text((cx, y), line, font=_font(24), fill=_TEXT, anchor="mt")
                y += 30
        return np.asarray(image)

    def quad(self, now_s: float) -> PanelQuad:
        """The panel as the renderer draws it; the image is redrawn only when what it shows changed."""
        state = (self.selected, self.hovered, self.can_confirm(now_s), math.ceil(self._remaining_s(now_s)))
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
        """The button a pointer ray points at ("value:<n>" or "confirm"), or None.

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

    def hover(self, ray: Ray | None) -> None:
        """Highlights the button under the pointer."""
        self.hovered = None if ray is None else self.hit(ray)

    def handle(self, event: InputEvent, now_s: float) -> tuple[PanelResult | None, bool]:
        """Applies one input event.

        Returns
        -------
        result : PanelResult or None
            Set once the participant confirmed.
        changed : bool
            Whether the selection changed (for a haptic tick).
        """
        before = self.selected
        if event.kind == "click" and event.ray is not None:
            target = self.hit(event.ray)
            if target == "confirm":
                return self._confirm(now_s), False
            if target is not None:
                self.selected = int(target.split(":")[1])
        elif event.kind == "key" and event.key is not None:
            key = event.key
            if key == "enter":
                return self._confirm(now_s), False
            if key.isdigit() and int(key) in self.values:
                self.selected = int(key)
            elif key in ("left", "right") and self.values:
                if self.selected is None:
                    self.selected = self.values[0] if key == "right" else self.values[-1]
                else:
                    i = self.values.index(self.selected) + (1 if key == "right" else -1)
                    self.selected = self.values[min(max(i, 0), len(self.values) - 1)]
        return None, self.selected != before

    def _confirm(self, now_s: float) -> PanelResult | None:
        if not self.can_confirm(now_s):
            return None
        return PanelResult(self.selected if self.values else None)
