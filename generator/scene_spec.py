"""Scene spec files: which masks, which prompt phrase names each mask, and how to generate.

A scene spec is a TOML file (``data/scenes/*.toml``)::

    schema_version = 1
    scene = "vehicle"                 # protocol scene id
    prompt = "a red car driving on an asphalt road between tall buildings under a blue sky"
    negative_prompt = "blurry, distorted, low quality"
    model = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    seeds = [11, 12, 13]
    count = 3                         # images made: the first `count` (layout, seed) pairs, see `SceneSpec.jobs`
    width = 512
    height = 512
    steps = 50
    guidance_scale = 7.5
    mask_fit = "crop"                 # optional: masks of another aspect are centre-cropped ("crop") or padded
                                      # ("letterbox") to the image's aspect, then scaled uniformly

    [[layouts]]
    name = "vehicle_a"
    format = "cityscapes"             # "cityscapes" | "coco" | "legend"
    path = "../masks/cityscapes/vehicle_a_gtFine_labelIds.png"   # relative to the spec file
    # format = "coco":   path = "../masks/coco/annotations.json", image = "vehicle_a"
    # format = "legend": path = "../masks/legend/vehicle_a.png", legend = "../masks/legend/vehicle_a.json"

    [objects]                         # mask label -> phrase in the prompt that names it
    car = "a red car"
    road = "asphalt road"

:func:`load_scene_spec` checks everything up front, including every layout's masks, so that nothing is
generated from a spec that would fail half-way. Mask labels not listed in ``[objects]`` stay unconstrained.
"""

from __future__ import annotations

import re
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from generator.masks import (
    MASK_FITS,
    MaskFit,
    NamedMasks,
    fit_masks,
    load_cityscapes_masks,
    load_coco_masks,
    load_legend_masks,
)
from study.errors import SceneSpecError

SCHEMA_VERSION = 1
MaskFormat = Literal["cityscapes", "coco", "legend"]
_FORMATS: tuple[str, ...] = ("cityscapes", "coco", "legend")


class MaskResizeWarning(UserWarning):
    """A layout's masks were not at the spec's generation size: they were cropped or letterboxed to its aspect
    and scaled uniformly; the message names the file and what was done (a notice, not an error)."""


@dataclass(frozen=True)
class Layout:
    """One mask layout of a scene: where its masks are and in which format."""

    name: str
    format: MaskFormat
    path: Path
    image: str | None = None
    legend: Path | None = None

    def load_masks(self) -> NamedMasks:
        """All masks of the layout file, at the file's resolution."""
        if self.format == "cityscapes":
            return load_cityscapes_masks(self.path)
        if self.format == "coco":
            return load_coco_masks(self.path, self.image)
        return load_legend_masks(self.path, self.legend)


@dataclass(frozen=True)
class SceneSpec:
    """A validated scene spec; ``masks(layout)`` gives the checked masks of the ``[objects]`` labels."""

    path: Path
    scene: str
    prompt: str
    negative_prompt: str
    model: str
    seeds: tuple[int, ...]
    count: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    layouts: tuple[Layout, ...]
    objects: dict[str, str]
    mask_fit: MaskFit
    _masks: dict[str, NamedMasks] = field(repr=False, compare=False)

    def layout(self, name: str) -> Layout:
        """The layout called ``name``."""
        for layout in self.layouts:
            if layout.name == name:
                return layout
        known = ", ".join(layout.name for layout in self.layouts)
        raise SceneSpecError(f"{self.path}: no layout '{name}'; this spec has: {known}")

    def masks(self, layout: str) -> NamedMasks:
        """The ``[objects]`` masks of a layout, in ``[objects]`` order, at ``(height, width)``."""
        return self._masks[self.layout(layout).name]

    def jobs(self) -> list[tuple[Layout, int]]:
        """The first ``count`` (layout, seed) pairs, in diagonal order.

        Pair ``(layout l, seed s)`` of the product is ordered by ``((s − l) mod n_seeds, l)``: the first round
        gives layout 0 seed 0, layout 1 seed 1, …, so the first images use different layouts *and* different
        seeds; later rounds shift the seeds by one. Every pair occurs at most once.
        """
        n_seeds = len(self.seeds)
        pairs = sorted(
            ((seed - layout) % n_seeds, layout, seed) for layout in range(len(self.layouts)) for seed in range(n_seeds)
        )
        return [(self.layouts[layout], self.seeds[seed]) for _, layout, seed in pairs[: self.count]]


def phrase_span(prompt: str, phrase: str) -> tuple[int, int] | None:
    """Character span ``(start, end)`` of the first whole-word, case-insensitive occurrence of ``phrase``."""
    match = re.search(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", prompt, flags=re.IGNORECASE)
    return None if match is None else match.span()


def _require(table: dict, key: str, kind: type | tuple[type, ...], where: str, example: str):
    if key not in table:
        raise SceneSpecError(f"{where}: missing field '{key}'; add e.g. {key} = {example}")
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise SceneSpecError(f"{where}: field '{key}' is {value!r}; expected e.g. {key} = {example}")
    return value


def _positive_int(table: dict, key: str, where: str, example: str) -> int:
    value = _require(table, key, int, where, example)
    if value < 1:
        raise SceneSpecError(f"{where}: field '{key}' is {value}; it must be at least 1, e.g. {key} = {example}")
    return value


def _layout(entry: object, index: int, base: Path, where: str) -> Layout:
    here = f"{where}: [[layouts]] #{index + 1}"
    if not isinstance(entry, dict):
        raise SceneSpecError(f"{here} must be a table with name, format and path")
    name = _require(entry, "name", str, here, '"vehicle_a"')
    here = f"{where}: layout '{name}'"
    mask_format = _require(entry, "format", str, here, '"cityscapes"')
    if mask_format not in _FORMATS:
        raise SceneSpecError(f"{here}: unknown format '{mask_format}'; use one of {', '.join(_FORMATS)}")
    path = base / _require(entry, "path", str, here, '"../masks/cityscapes/vehicle_a_gtFine_labelIds.png"')
    if not path.is_file():
        raise SceneSpecError(f"{here}: mask file '{path}' does not exist; paths are relative to the spec file")
    image = legend = None
    if mask_format == "coco":
        image = _require(entry, "image", str, here, '"vehicle_a" (the COCO file_name without extension)')
    if mask_format == "legend":
        legend = base / _require(entry, "legend", str, here, '"../masks/legend/vehicle_a.json"')
        if not legend.is_file():
            raise SceneSpecError(f"{here}: legend file '{legend}' does not exist; paths are relative to the spec file")
    return Layout(name=name, format=mask_format, path=path, image=image, legend=legend)


def _object_masks(
    layout: Layout, objects: dict[str, str], height: int, width: int, mask_fit: MaskFit, where: str
) -> NamedMasks:
    masks = layout.load_masks()
    missing = [label for label in objects if label not in masks]
    if missing:
        raise SceneSpecError(
            f"{where}: layout '{layout.name}' ({layout.path.name}) has no mask labelled {', '.join(missing)}; "
            f"its labels are: {', '.join(masks.labels)}. Rename the [objects] key to one of them"
        )
    masks, done = fit_masks(masks.subset(list(objects)), height, width, mask_fit)
    if done:
        warnings.warn(f"{layout.path.name} (layout '{layout.name}'): {done}", MaskResizeWarning, stacklevel=3)
    for label, mask in masks.items():
        if not mask.any():
            raise SceneSpecError(
                f"{where}: layout '{layout.name}': the mask of '{label}' is empty"
                + (f" after fitting it to {width}x{height}" if done else "")
                + "; draw the object in the mask"
                + (" (or set mask_fit = \"letterbox\" to keep the whole mask)" if done and mask_fit == "crop" else "")
                + " or remove it from [objects]"
            )
    return masks


def load_scene_spec(path: str | Path, mask_fit: MaskFit | None = None) -> SceneSpec:
    """Read and check a scene spec TOML file, including all of its layouts' masks.

    Parameters
    ----------
    path : str or pathlib.Path
        The spec file; relative paths inside it start at its folder.
    mask_fit : {"crop", "letterbox"}, optional
        Overrides the spec's ``mask_fit`` (default ``"crop"``).

    Returns
    -------
    SceneSpec

    Raises
    ------
    study.errors.SceneSpecError
        Missing file, bad TOML, missing or mistyped field, unknown schema version or mask format, missing mask
        file, a phrase that is not in the prompt, an ``[objects]`` label absent from a layout, an empty mask.

    Warns
    -----
    MaskResizeWarning
        A layout's masks are not at ``(height, width)``: one notice per layout naming the file and what was
        done (see :func:`generator.masks.fit_masks`).
    """
    path = Path(path)
    if not path.is_file():
        raise SceneSpecError(f"scene spec '{path}' does not exist; give a TOML file such as data/scenes/vehicle.toml")
    where = str(path)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SceneSpecError(f"{where} is not valid TOML: {exc}") from None
    version = _require(table, "schema_version", int, where, str(SCHEMA_VERSION))
    if version != SCHEMA_VERSION:
        raise SceneSpecError(f"{where}: schema_version {version} is not supported; this panostudy reads {SCHEMA_VERSION}")
    prompt = _require(table, "prompt", str, where, '"a red car on a road"').strip()
    if not prompt:
        raise SceneSpecError(f"{where}: field 'prompt' is empty; describe the scene, naming every object")
    seeds = _require(table, "seeds", list, where, "[11, 12, 13]")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**63 for s in seeds):
        raise SceneSpecError(f"{where}: field 'seeds' is {seeds!r}; give a list of non-negative integers")
    if len(set(seeds)) != len(seeds):
        raise SceneSpecError(f"{where}: field 'seeds' repeats a seed ({seeds}); give distinct seeds")
    width = _positive_int(table, "width", where, "512")
    height = _positive_int(table, "height", where, "512")
    for key, value in (("width", width), ("height", height)):
        if value % 8:
            raise SceneSpecError(f"{where}: field '{key}' is {value}; it must be a multiple of 8, e.g. 512")
    guidance_scale = _require(table, "guidance_scale", (int, float), where, "7.5")
    negative_prompt = table.get("negative_prompt", "")
    if not isinstance(negative_prompt, str):
        raise SceneSpecError(f"{where}: field 'negative_prompt' is {negative_prompt!r}; give a string or leave it out")
    layouts_table = _require(table, "layouts", list, where, '[{name = "vehicle_a", format = "cityscapes", ...}]')
    if not layouts_table:
        raise SceneSpecError(f"{where}: no [[layouts]]; add at least one")
    layouts = tuple(_layout(entry, i, path.parent, where) for i, entry in enumerate(layouts_table))
    names = [layout.name for layout in layouts]
    if len(set(names)) != len(names):
        raise SceneSpecError(f"{where}: layout names repeat ({', '.join(names)}); give each layout its own name")
    count = _positive_int(table, "count", where, "3")
    if count > len(layouts) * len(seeds):
        raise SceneSpecError(
            f"{where}: count {count} exceeds the {len(layouts)} layouts × {len(seeds)} seeds = "
            f"{len(layouts) * len(seeds)} (layout, seed) pairs; add seeds or lower count"
        )
    objects = _require(table, "objects", dict, where, '{car = "a red car"} (an [objects] table)')
    if not objects:
        raise SceneSpecError(f"{where}: [objects] is empty; map at least one mask label to a phrase of the prompt")
    spans: dict[str, tuple[int, int]] = {}
    for label, phrase in objects.items():
        if not isinstance(phrase, str) or not phrase.strip():
            raise SceneSpecError(f"{where}: [objects] '{label}' = {phrase!r}; give the phrase of the prompt naming it")
        span = phrase_span(prompt, phrase)
        if span is None:
            raise SceneSpecError(
                f"{where}: [objects] '{label}' = \"{phrase}\" is not in the prompt \"{prompt}\"; "
                "use words exactly as they appear in the prompt"
            )
        for other, other_span in spans.items():
            if span[0] < other_span[1] and other_span[0] < span[1]:
                raise SceneSpecError(
                    f"{where}: [objects] '{label}' and '{other}' name overlapping words of the prompt; "
                    "give each object its own words"
                )
        spans[label] = span
    spec_fit = table.get("mask_fit", "crop")
    if spec_fit not in MASK_FITS:
        raise SceneSpecError(f"{where}: field 'mask_fit' is {spec_fit!r}; use one of {', '.join(MASK_FITS)}")
    mask_fit = mask_fit or spec_fit
    spec_masks = {layout.name: _object_masks(layout, objects, height, width, mask_fit, where) for layout in layouts}
    return SceneSpec(
        path=path,
        scene=_require(table, "scene", str, where, '"vehicle"'),
        prompt=prompt,
        negative_prompt=negative_prompt,
        model=_require(table, "model", str, where, '"stable-diffusion-v1-5/stable-diffusion-v1-5"'),
        seeds=tuple(seeds),
        count=count,
        width=width,
        height=height,
        steps=_positive_int(table, "steps", where, "50"),
        guidance_scale=float(guidance_scale),
        layouts=layouts,
        objects=dict(objects),
        mask_fit=mask_fit,
        _masks=spec_masks,
    )
