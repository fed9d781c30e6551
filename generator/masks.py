"""Object masks from three annotation formats, all loaded into one :class:`NamedMasks`.

- Cityscapes ``*_gtFine_labelIds.png``: single-channel image of Cityscapes label ids, named through
  :data:`CITYSCAPES_LABELS` (the dataset's standard label table).
- COCO annotation JSON: polygons, uncompressed RLE or compressed RLE (via pycocotools); all annotations of one
  category on the image are united and named by the category name.
- A plain label PNG with a JSON legend ``{"1": "sofa", "2": "table", ...}``.

Loaders never resize: they return masks at the annotation's own resolution. :func:`fit_masks` brings them to the
generation size with one uniform scale: a mask of another aspect (a 2048×1024 Cityscapes frame for a square
stage-1 image) is first centre-cropped to the region the image covers, or letterboxed, never squashed.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import numpy as np

from study.errors import SceneSpecError

#: The standard Cityscapes label table (``labelIds``): id → name, as in the dataset's ``labels.py``.
#: The license plate (id −1) cannot occur in a uint8 labelIds image and is left out.
CITYSCAPES_LABELS: dict[int, str] = {
    0: "unlabeled",
    1: "ego vehicle",
    2: "rectification border",
    3: "out of roi",
    4: "static",
    5: "dynamic",
    6: "ground",
    7: "road",
    8: "sidewalk",
    9: "parking",
    10: "rail track",
    11: "building",
    12: "wall",
    13: "fence",
    14: "guard rail",
    15: "bridge",
    16: "tunnel",
    17: "pole",
    18: "polegroup",
    19: "traffic light",
    20: "traffic sign",
    21: "vegetation",
    22: "terrain",
    23: "sky",
    24: "person",
    25: "rider",
    26: "car",
    27: "truck",
    28: "bus",
    29: "caravan",
    30: "trailer",
    31: "train",
    32: "motorcycle",
    33: "bicycle",
}


#: How a mask of another aspect than the image is brought to it: cut to the image's aspect, or padded to it.
MaskFit = Literal["crop", "letterbox"]
MASK_FITS: tuple[str, ...] = ("crop", "letterbox")


class NamedMasks(Mapping[str, np.ndarray]):
    """An ordered set of named binary masks of one size.

    Parameters
    ----------
    masks : Mapping[str, numpy.ndarray]
        Label → ``(H, W)`` mask; any dtype, non-zero means inside. Order is kept. All masks must share one shape.
    source : str
        Where the masks came from (a file name), used in error messages.

    Notes
    -----
    Masks may overlap and need not cover the image; a loader keeps labels that are declared but have no pixel
    (an empty mask) so that callers can report "empty" rather than "absent".
    """

    def __init__(self, masks: Mapping[str, np.ndarray], source: str = "masks"):
        self.source = source
        self._masks: dict[str, np.ndarray] = {}
        shape: tuple[int, int] | None = None
        for label, mask in masks.items():
            array = np.asarray(mask)
            if array.ndim != 2:
                raise SceneSpecError(f"{source}: mask '{label}' has shape {array.shape}; expected (H, W)")
            if shape is not None and array.shape != shape:
                raise SceneSpecError(
                    f"{source}: mask '{label}' has shape {array.shape} but the others have {shape}; "
                    "all masks of one layout must have one size"
                )
            shape = array.shape
            self._masks[str(label)] = array.astype(bool)
        self._shape = shape

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of every mask; ``(0, 0)`` for an empty set."""
        return self._shape or (0, 0)

    @property
    def labels(self) -> list[str]:
        """Labels in their order."""
        return list(self._masks)

    def __getitem__(self, label: str) -> np.ndarray:
        return self._masks[label]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        areas = ", ".join(f"{label}: {int(mask.sum())} px" for label, mask in self._masks.items())
        return f"NamedMasks({self.source}, {self.shape[0]}x{self.shape[1]}, {{{areas}}})"

    def subset(self, labels: list[str]) -> NamedMasks:
        """The masks of ``labels``, in that order (each label must be present)."""
        return NamedMasks({label: self._masks[label] for label in labels}, self.source)

    def resized(self, height: int, width: int) -> NamedMasks:
        """Nearest-neighbour resize of every mask to ``(height, width)`` (pixel centres sampled)."""
        h, w = self.shape
        rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(int), h - 1)
        cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(int), w - 1)
        return NamedMasks({label: mask[np.ix_(rows, cols)] for label, mask in self._masks.items()}, self.source)


def _existing_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise SceneSpecError(f"{what} '{path}' does not exist; check the path (relative paths start at the spec file)")
    return path


def _read_label_image(path: Path, what: str) -> np.ndarray:
    """``(H, W)`` integer label image; refuses colour images, which are no label images."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode = image.mode
            labels = np.asarray(image)
    except (UnidentifiedImageError, OSError) as exc:
        raise SceneSpecError(f"{what} '{path}' is not a readable image ({exc}); give a PNG of label ids") from None
    if labels.ndim != 2:
        raise SceneSpecError(
            f"{what} '{path}' is a {mode} colour image; give the single-channel label-id PNG "
            "(for Cityscapes the *_gtFine_labelIds.png, not *_color.png)"
        )
    return labels


def load_cityscapes_masks(path: str | Path) -> NamedMasks:
    """Load a Cityscapes ``labelIds`` PNG as one mask per label present.

    Parameters
    ----------
    path : str or pathlib.Path
        Single-channel PNG of Cityscapes label ids (``*_gtFine_labelIds.png``).

    Returns
    -------
    NamedMasks
        One ``(H, W)`` bool mask per label id occurring in the image, named by :data:`CITYSCAPES_LABELS`, in id
        order. ``unlabeled`` (id 0) is left out.
    """
    path = _existing_file(path, "Cityscapes label image")
    labels = _read_label_image(path, "Cityscapes label image")
    unknown = sorted(set(np.unique(labels).tolist()) - set(CITYSCAPES_LABELS))
    if unknown:
        raise SceneSpecError(
            f"Cityscapes label image '{path}' holds ids {unknown} outside the label table 0..33; "
            "is it a trainIds or instanceIds image? Give the *_gtFine_labelIds.png"
        )
    present = [int(i) for i in np.unique(labels) if i != 0]
    return NamedMasks({CITYSCAPES_LABELS[i]: labels == i for i in present}, source=path.name)


def _decode_rle(rle: dict) -> np.ndarray:
    """``(H, W)`` bool mask of one RLE."""
    from pycocotools import mask as mask_utils

    # pycocotools' compiled decoder trips numpy 2's copy-keyword deprecation; the result is correct.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def load_coco_masks(path: str | Path, image: str) -> NamedMasks:
    """Load the annotations of one image of a COCO annotation file as one mask per category.

    Parameters
    ----------
    path : str or pathlib.Path
        COCO annotation JSON (``images``, ``categories``, ``annotations``).
    image : str
        The image's ``file_name``, with or without its extension.

    Returns
    -------
    NamedMasks
        One ``(height, width)`` bool mask per category with an annotation on the image, named by the category
        name, in category-id order: the union of all that category's annotations (polygons, uncompressed RLE
        or compressed RLE).
    """
    from pycocotools import mask as mask_utils

    path = _existing_file(path, "COCO annotation file")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        images = document["images"]
        categories = {int(c["id"]): str(c["name"]) for c in document["categories"]}
        annotations = document["annotations"]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SceneSpecError(f"COCO annotation file '{path}' is not valid JSON ({exc})") from None
    except (KeyError, TypeError) as exc:
        raise SceneSpecError(
            f"COCO annotation file '{path}' lacks {exc} in images/categories/annotations; is it COCO format?"
        ) from None
    matches = [im for im in images if image in (im.get("file_name"), Path(str(im.get("file_name"))).stem)]
    if not matches:
        names = ", ".join(Path(str(im.get("file_name"))).stem for im in images[:20])
        raise SceneSpecError(f"COCO annotation file '{path}' has no image '{image}'; its images include: {names}")
    entry = matches[0]
    height, width = int(entry["height"]), int(entry["width"])
    united: dict[int, np.ndarray] = {}
    for annotation in annotations:
        if annotation.get("image_id") != entry["id"]:
            continue
        category = int(annotation["category_id"])
        if category not in categories:
            raise SceneSpecError(
                f"COCO annotation file '{path}': annotation {annotation.get('id')} names category {category}, "
                "which is not in 'categories'"
            )
        segmentation = annotation["segmentation"]
        if isinstance(segmentation, list):  # polygons [[x1, y1, x2, y2, ...], ...]
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)) if segmentation else None
        elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:  # compressed RLE; JSON stores counts as str, pycocotools wants bytes
            rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
        decoded = np.zeros((height, width), bool) if rle is None else _decode_rle(rle)
        if decoded.shape != (height, width):
            raise SceneSpecError(
                f"COCO annotation file '{path}': annotation {annotation.get('id')} has size {decoded.shape}, "
                f"but image '{image}' is {height}x{width}"
            )
        united[category] = united.get(category, np.zeros((height, width), bool)) | decoded
    return NamedMasks({categories[c]: united[c] for c in sorted(united)}, source=f"{path.name}:{image}")


def load_legend_masks(path: str | Path, legend: str | Path) -> NamedMasks:
    """Load a label PNG with a JSON legend.

    Parameters
    ----------
    path : str or pathlib.Path
        Single-channel PNG (8- or 16-bit, or palette indices) of label indices.
    legend : str or pathlib.Path
        JSON object mapping each index (a string) to a label name, e.g. ``{"1": "sofa", "2": "table"}``.

    Returns
    -------
    NamedMasks
        One ``(H, W)`` bool mask per legend entry, in legend order; an entry without pixels gives an empty mask.
        Pixels whose index is not in the legend (e.g. 0, unlabeled) belong to no mask.
    """
    path = _existing_file(path, "label image")
    legend = _existing_file(legend, "legend file")
    try:
        entries = json.loads(legend.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SceneSpecError(f"legend file '{legend}' is not valid JSON ({exc})") from None
    if not isinstance(entries, dict) or not entries:
        raise SceneSpecError(f"legend file '{legend}' must be a non-empty JSON object like {{\"1\": \"sofa\"}}")
    labels = _read_label_image(path, "label image")
    masks: dict[str, np.ndarray] = {}
    for index, name in entries.items():
        if not str(index).isdigit() or not isinstance(name, str) or not name:
            raise SceneSpecError(
                f"legend file '{legend}': entry {index!r}: {name!r} must map a non-negative integer index "
                "(as a string) to a label name"
            )
        if name in masks:
            raise SceneSpecError(f"legend file '{legend}' names '{name}' twice; give each label one index")
        masks[name] = labels == int(index)
    return NamedMasks(masks, source=path.name)


def fit_masks(masks: NamedMasks, height: int, width: int, mode: MaskFit = "crop") -> tuple[NamedMasks, str]:
    """Bring masks to ``(height, width)`` with one uniform scale, never a change of aspect.

    Parameters
    ----------
    masks : NamedMasks
        Masks of any size.
    height, width : int
        The image size.
    mode : {"crop", "letterbox"}
        ``crop`` keeps the centred region of the target's aspect (for a square image: the square the image
        covers) and drops the rest; ``letterbox`` pads the short side on both ends with unconstrained pixels
        (no mask) so that all of every mask is kept.

    Returns
    -------
    NamedMasks
        At ``(height, width)``, resized with nearest neighbour from the cropped or padded masks.
    str
        What was done, in words (``""`` when the masks were already that size), for a notice to the user.
    """
    if mode not in MASK_FITS:
        raise SceneSpecError(f"mask fit '{mode}': use one of {', '.join(MASK_FITS)}")
    source_h, source_w = masks.shape
    if (source_h, source_w) == (height, width):
        return masks, ""
    # The region of the target's aspect, in source pixels: crop it out, or pad the source out to it.
    if source_w * height > width * source_h:  # wider than the target
        inner_h, inner_w = source_h, round(source_h * width / height)
    else:
        inner_h, inner_w = round(source_w * height / width), source_w
    done = f"{source_w}x{source_h} (WxH)"
    if mode == "crop":
        top, left = (source_h - inner_h) // 2, (source_w - inner_w) // 2
        fitted = {label: mask[top : top + inner_h, left : left + inner_w] for label, mask in masks.items()}
        if (inner_h, inner_w) != (source_h, source_w):
            kept = f"columns {left}-{left + inner_w - 1}" if inner_w < source_w else f"rows {top}-{top + inner_h - 1}"
            done += f", centre-cropped to the {inner_w}x{inner_h} region the {width}x{height} image covers ({kept} kept)"
    else:
        outer_h, outer_w = max(source_h, round(source_w * height / width)), max(source_w, round(source_h * width / height))
        top, left = (outer_h - source_h) // 2, (outer_w - source_w) // 2
        fitted = {}
        for label, mask in masks.items():
            padded = np.zeros((outer_h, outer_w), bool)
            padded[top : top + source_h, left : left + source_w] = mask
            fitted[label] = padded
        if (outer_h, outer_w) != (source_h, source_w):
            bands = f"{top} rows above and below" if outer_h > source_h else f"{left} columns left and right"
            done += f", letterboxed to {outer_w}x{outer_h} ({bands} constrain nothing)"
    fitted_masks = NamedMasks(fitted, masks.source)
    scale = width / fitted_masks.shape[1]
    if fitted_masks.shape != (height, width):
        fitted_masks = fitted_masks.resized(height, width)
        done += f", scaled x{scale:.3g} to {width}x{height} (nearest neighbour)"
    return fitted_masks, done
