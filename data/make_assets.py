"""Draw panostudy's shipped data: scene masks in three formats and two training panoramas.

Everything in ``data/masks/`` and ``data/training/`` is drawn here from simple shapes (rectangles, rounded
rectangles, ellipses, polygons) with seeded variations, so the shipped data contains no third-party images.
Re-running the script reproduces the same arrays (and, with the same Pillow/zlib, the same bytes)::

    python data/make_assets.py            # rewrite the files next to this script
    python data/make_assets.py --out DIR  # write a fresh copy elsewhere

Every shape is rasterised by pycocotools' polygon rasteriser, so a COCO polygon annotation decodes to exactly
the pixels painted into the label images, and the Cityscapes, COCO and legend files of one layout describe
identical masks.

The paper took its masks from Cityscapes [1]_ and COCO-Stuff [2]_; we reproduce their *formats* and label ids,
not their images.

References
----------
.. [1] M. Cordts et al., "The Cityscapes dataset for semantic urban scene understanding", CVPR 2016.
.. [2] H. Caesar, J. Uijlings, V. Ferrari, "COCO-Stuff: Thing and stuff classes in context", CVPR 2018.
"""

from __future__ import annotations

import argparse
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils

#: Side of the square stage-1 mask images, pixels.
SIZE = 512

#: Size of the training panoramas (2:1 equirectangular), pixels.
PANORAMA_WIDTH = 2048
PANORAMA_HEIGHT = 1024

#: Standard Cityscapes labelIds of the classes we draw (0 is "unlabeled").
CITYSCAPES_IDS = {
    "road": 7,
    "sidewalk": 8,
    "building": 11,
    "wall": 12,
    "vegetation": 21,
    "terrain": 22,
    "sky": 23,
    "person": 24,
    "car": 26,
}

#: Our drawing label -> Cityscapes class name, only where the meaning is the same. Indoor labels (floor,
#: sofa, table, window, room wall) and mountain/lake have no Cityscapes class, so those scenes ship in the
#: COCO and legend formats only. (Cityscapes' "wall" is a free-standing outdoor wall, not a room's wall.)
CITYSCAPES_NAME = {
    "road": "road",
    "sidewalk": "sidewalk",
    "building": "building",
    "sky": "sky",
    "tree": "vegetation",
    "person": "person",
    "car": "car",
}

#: Our drawing label -> official COCO / COCO-Stuff category (id, name, supercategory, is a "thing").
COCO_CATEGORY = {
    "person": (1, "person", "person", True),
    "car": (3, "car", "vehicle", True),
    "sofa": (63, "couch", "furniture", True),
    "table": (67, "dining table", "furniture", True),
    "building": (96, "building-other", "building", False),
    "floor": (115, "floor-other", "floor", False),
    "mountain": (135, "mountain", "ground", False),
    "sidewalk": (140, "pavement", "ground", False),
    "road": (149, "road", "ground", False),
    "sky": (157, "sky-other", "sky", False),
    "tree": (169, "tree", "plant", False),
    "wall": (173, "wall-other", "wall", False),
    "lake": (178, "water-other", "water", False),
    "window": (181, "window-other", "window", False),
}

#: Drawing labels of each scene in legend-index order (legend index = position + 1; 0 is unlabeled).
SCENE_LABELS = {
    "vehicle": ("sky", "building", "sidewalk", "road", "car"),
    "street": ("sky", "building", "sidewalk", "road", "tree", "person"),
    "indoor": ("wall", "floor", "window", "sofa", "table"),
    "mountainous": ("sky", "mountain", "lake", "tree"),
}

#: Layouts drawn per scene.
LAYOUT_SUFFIXES = ("a", "b", "c")

#: Layouts whose thing instances are stored as COCO polygons instead of compressed RLE.
POLYGON_LAYOUTS = {"vehicle_b": "car", "street_b": "person"}

Polygon = list[float]


@dataclass
class Shape:
    """One painted object: a drawing label, its instance number and the polygons whose union it covers."""

    label: str
    polygons: list[Polygon]
    instance: int = 0


@dataclass
class Layout:
    """A drawn layout: a label image plus the instance each pixel belongs to.

    Attributes
    ----------
    name : str
        ``"<scene>_<suffix>"``, e.g. ``"vehicle_a"``.
    labels : (SIZE, SIZE) uint8
        Legend index per pixel (position in ``SCENE_LABELS[scene]`` + 1).
    instances : (SIZE, SIZE) int32
        Index into ``instance_keys`` of the instance that owns each pixel.
    instance_keys : list of (label, instance)
        Key of each instance index.
    instance_polygons : dict
        ``(label, instance) -> polygons`` of every painted instance.
    """

    name: str
    labels: np.ndarray
    instances: np.ndarray
    instance_keys: list[tuple[str, int]] = field(default_factory=list)
    instance_polygons: dict[tuple[str, int], list[Polygon]] = field(default_factory=dict)

    @property
    def scene(self) -> str:
        return self.name.rsplit("_", 1)[0]

    def mask(self, label: str) -> np.ndarray:
        """``(SIZE, SIZE) bool`` mask of a drawing label."""
        return self.labels == SCENE_LABELS[self.scene].index(label) + 1


def rasterize(polygons: list[Polygon], height: int = SIZE, width: int = SIZE) -> np.ndarray:
    """Union of polygons as a ``(height, width) bool`` array, by pycocotools' rasteriser.

    Using the COCO rasteriser for every shape is what makes a polygon annotation decode to exactly the
    painted pixels.
    """
    rles = mask_utils.frPyObjects(polygons, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _clip(points: list[tuple[float, float]]) -> Polygon:
    """Flatten points into a COCO polygon, clamped to the image and rounded to 0.01 px.

    Rounding first keeps the JSON short and makes the stored polygon the one that was rasterised.
    """
    flat: Polygon = []
    for x, y in points:
        flat += [round(min(max(x, 0.0), SIZE), 2), round(min(max(y, 0.0), SIZE), 2)]
    return flat


def rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return _clip([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 40) -> Polygon:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return _clip(list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t))))


def rounded_rect(x0: float, y0: float, x1: float, y1: float, r: float, n: int = 6) -> Polygon:
    r = min(r, (x1 - x0) / 2, (y1 - y0) / 2)
    points = []
    corners = ((x1 - r, y0 + r, -np.pi / 2), (x1 - r, y1 - r, 0.0), (x0 + r, y1 - r, np.pi / 2),
               (x0 + r, y0 + r, np.pi))
    for cx, cy, start in corners:
        for t in np.linspace(start, start + np.pi / 2, n):
            points.append((cx + r * np.cos(t), cy + r * np.sin(t)))
    return _clip(points)


def poly(points: list[tuple[float, float]]) -> Polygon:
    return _clip(points)


# ----------------------------------------------------------------------------------------- scene drawings


def _facades(rng: np.random.Generator, horizon: float, vx: float, top_min: float, top_max: float,
             gap: float, ground_slope: float) -> list[Shape]:
    """Building facades on both sides of a street converging to the vanishing point ``(vx, horizon)``."""
    shapes = []
    for side in (-1, 1):
        edge = 0.0 if side < 0 else float(SIZE)
        inner = vx + side * gap
        xs = np.sort(rng.uniform(min(edge, inner), max(edge, inner), size=int(rng.integers(2, 4))))
        bounds = [min(edge, inner), *xs.tolist(), max(edge, inner)]
        for xa, xb in zip(bounds[:-1], bounds[1:]):
            top = rng.uniform(top_min, top_max)
            # Rooflines fall toward the vanishing point, so the nearer (outer) end of a block looks taller;
            # the ground line rises toward it for the same reason.
            roof = [top + (horizon - top) * (1 - abs(x - vx) / max(abs(edge - vx), 1.0)) * 0.6 for x in (xa, xb)]
            ground = [horizon + abs(x - vx) * ground_slope for x in (xa, xb)]
            shapes.append(Shape("building", [poly([(xa, roof[0]), (xb, roof[1]), (xb, ground[1]),
                                                    (xa, ground[0])])]))
    return shapes


def _road(horizon: float, vx: float, far_half: float, near_left: float, near_right: float) -> Shape:
    return Shape("road", [poly([(vx - far_half, horizon), (vx + far_half, horizon), (near_right, SIZE + 1),
                                (near_left, SIZE + 1)])])


def _car_rear(cx: float, base: float, width: float, instance: int) -> Shape:
    """A car seen from behind: body, narrower cabin on top and two tyres below the body's corners."""
    w = width
    body = rounded_rect(cx - w / 2, base - 0.55 * w, cx + w / 2, base - 0.12 * w, 0.08 * w)
    cabin = poly([(cx - 0.42 * w, base - 0.52 * w), (cx - 0.32 * w, base - 0.85 * w),
                  (cx + 0.32 * w, base - 0.85 * w), (cx + 0.42 * w, base - 0.52 * w)])
    tyres = [rounded_rect(cx - 0.46 * w, base - 0.2 * w, cx - 0.28 * w, base, 0.03 * w),
             rounded_rect(cx + 0.28 * w, base - 0.2 * w, cx + 0.46 * w, base, 0.03 * w)]
    return Shape("car", [body, cabin, *tyres], instance)


def draw_vehicle(rng: np.random.Generator, variant: str) -> list[Shape]:
    """Vehicle route: street canyon with sidewalks, a road to the vanishing point and 1–2 cars on it."""
    horizon = rng.uniform(0.42, 0.5) * SIZE
    vx = SIZE / 2 + rng.uniform(-30, 30) + {"a": 0, "b": 0, "c": -50}[variant]
    shapes = [Shape("sidewalk", [rect(0, horizon, SIZE, SIZE)])]
    shapes += _facades(rng, horizon, vx, 0.03 * SIZE, 0.25 * SIZE, gap=30, ground_slope=0.35)
    shapes.append(_road(horizon, vx, 8, rng.uniform(-0.05, 0.08) * SIZE, rng.uniform(0.92, 1.05) * SIZE))
    if variant == "a":
        cars = [(vx + rng.uniform(-25, 25), 0.86 * SIZE, rng.uniform(170, 200))]
    elif variant == "b":
        cars = [(vx - rng.uniform(20, 40), horizon + 0.22 * SIZE, rng.uniform(70, 90)),
                (vx + rng.uniform(80, 110), 0.93 * SIZE, rng.uniform(170, 200))]
    else:
        cars = [(vx + rng.uniform(50, 80), 0.8 * SIZE, rng.uniform(150, 170))]
    for i, (cx, base, width) in enumerate(cars):
        shapes.append(_car_rear(cx, base, width, i))
    return shapes


def _person(cx: float, feet: float, height: float, instance: int) -> Shape:
    """A standing pedestrian: head, torso with arms, two legs."""
    h = height
    head = ellipse(cx, feet - 0.92 * h, 0.07 * h, 0.08 * h, n=24)
    torso = rounded_rect(cx - 0.13 * h, feet - 0.84 * h, cx + 0.13 * h, feet - 0.44 * h, 0.05 * h)
    legs = [rect(cx - 0.11 * h, feet - 0.46 * h, cx - 0.015 * h, feet),
            rect(cx + 0.015 * h, feet - 0.46 * h, cx + 0.11 * h, feet)]
    return Shape("person", [head, torso, *legs], instance)


def _deciduous_tree(cx: float, foot: float, height: float) -> Shape:
    """A street tree: trunk and a round crown."""
    h = height
    trunk = rect(cx - 0.04 * h, foot - 0.5 * h, cx + 0.04 * h, foot)
    crown = ellipse(cx, foot - 0.7 * h, 0.28 * h, 0.3 * h)
    return Shape("tree", [trunk, crown])


def draw_street(rng: np.random.Generator, variant: str) -> list[Shape]:
    """Open street: wide sidewalk, a road on one side, trees along the kerb and 2–4 pedestrians."""
    horizon = rng.uniform(0.45, 0.52) * SIZE
    vx = SIZE / 2 + rng.uniform(-20, 20)
    shapes = [Shape("sidewalk", [rect(0, horizon, SIZE, SIZE)])]
    shapes += _facades(rng, horizon, vx, 0.05 * SIZE, 0.2 * SIZE, gap=60, ground_slope=0.25)
    road_side = {"a": 1, "b": -1, "c": 1}[variant]
    near_inner = vx + road_side * rng.uniform(0.15, 0.22) * SIZE
    near_outer = vx + road_side * 1.2 * SIZE
    shapes.append(_road(horizon, vx + road_side * 25, 12, min(near_inner, near_outer), max(near_inner, near_outer)))
    # Trees stand along the kerb, shrinking toward the horizon.
    for depth in np.linspace(0.25, 0.9, int(rng.integers(2, 4))):
        foot = horizon + depth * (SIZE - horizon) * 0.7
        kerb_x = vx + road_side * (20 + depth * 0.22 * SIZE)
        shapes.append(_deciduous_tree(kerb_x, foot, (foot - horizon) * 1.4 + 40))
    # Pedestrians stand in separate slots across the sidewalk, each narrower than its slot, so none hides
    # another (their polygons then describe their visible pixels exactly).
    count = {"a": 2, "b": 3, "c": 4}[variant]
    far_edge = 0.0 if road_side > 0 else float(SIZE)
    slot_edges = np.linspace(far_edge, near_inner, count + 1)
    slot_width = abs(slot_edges[1] - slot_edges[0])
    for i in range(count):
        feet = horizon + rng.uniform(0.45, 0.95) * (SIZE - horizon)
        height = min((feet - horizon) * 1.3 + 10, 0.9 * slot_width / 0.26)
        x = (slot_edges[i] + slot_edges[i + 1]) / 2
        shapes.append(_person(x, feet, height, i))
    return shapes


def draw_indoor(rng: np.random.Generator, variant: str) -> list[Shape]:
    """Indoor space: back wall with windows, floor, a sofa against the wall and a table in front of it."""
    floor_line = rng.uniform(0.55, 0.62) * SIZE
    tilt = rng.uniform(-12, 12)
    shapes = [Shape("floor", [poly([(0, floor_line + tilt), (SIZE, floor_line - tilt), (SIZE, SIZE + 1),
                                    (0, SIZE + 1)])])]
    window_slots = {"a": [(0.08, 0.38)], "b": [(0.55, 0.75), (0.8, 0.96)], "c": [(0.2, 0.8)]}[variant]
    for x0, x1 in window_slots:
        top = rng.uniform(0.08, 0.14) * SIZE
        shapes.append(Shape("window", [rect(x0 * SIZE, top, x1 * SIZE, rng.uniform(0.36, 0.42) * SIZE)]))
    sofa_cx = {"a": 0.58, "b": 0.3, "c": 0.5}[variant] * SIZE + rng.uniform(-15, 15)
    sofa_w = rng.uniform(0.42, 0.5) * SIZE
    seat_y = floor_line + rng.uniform(0.05, 0.08) * SIZE
    back = rounded_rect(sofa_cx - sofa_w / 2, seat_y - 0.2 * SIZE, sofa_cx + sofa_w / 2, seat_y, 12)
    seat = rect(sofa_cx - sofa_w / 2, seat_y - 0.05 * SIZE, sofa_cx + sofa_w / 2, seat_y + 0.07 * SIZE)
    arms = [rounded_rect(sofa_cx - sofa_w / 2 - 18, seat_y - 0.11 * SIZE, sofa_cx - sofa_w / 2 + 14,
                         seat_y + 0.07 * SIZE, 8),
            rounded_rect(sofa_cx + sofa_w / 2 - 14, seat_y - 0.11 * SIZE, sofa_cx + sofa_w / 2 + 18,
                         seat_y + 0.07 * SIZE, 8)]
    feet = [rect(sofa_cx - sofa_w / 2, seat_y + 0.07 * SIZE, sofa_cx - sofa_w / 2 + 10, seat_y + 0.09 * SIZE),
            rect(sofa_cx + sofa_w / 2 - 10, seat_y + 0.07 * SIZE, sofa_cx + sofa_w / 2, seat_y + 0.09 * SIZE)]
    shapes.append(Shape("sofa", [back, seat, *arms, *feet]))
    table_cx = sofa_cx + {"a": -0.05, "b": 0.35, "c": 0.0}[variant] * SIZE
    table_w = rng.uniform(0.3, 0.38) * SIZE
    top_y = seat_y + rng.uniform(0.12, 0.16) * SIZE
    depth = 0.05 * SIZE
    # The table top is a parallelogram seen from above eye level; legs hang from its front edge.
    table_top = poly([(table_cx - table_w / 2 + 12, top_y - depth), (table_cx + table_w / 2 - 12, top_y - depth),
                      (table_cx + table_w / 2, top_y), (table_cx - table_w / 2, top_y)])
    edge = rect(table_cx - table_w / 2, top_y, table_cx + table_w / 2, top_y + 8)
    leg_h = 0.12 * SIZE
    legs = [rect(table_cx - table_w / 2 + 6, top_y + 8, table_cx - table_w / 2 + 16, top_y + 8 + leg_h),
            rect(table_cx + table_w / 2 - 16, top_y + 8, table_cx + table_w / 2 - 6, top_y + 8 + leg_h)]
    shapes.append(Shape("table", [table_top, edge, *legs]))
    return shapes


def _ridge(rng: np.random.Generator, base: float, peaks: int, height: float) -> Polygon:
    """A mountain range: a jagged ridge line through ``peaks`` summits, closed at the image bottom."""
    summit_x = np.sort(rng.uniform(0.05, 0.95, size=peaks)) * SIZE
    summit_y = base - rng.uniform(0.5, 1.0, size=peaks) * height
    xs = np.linspace(-4, SIZE + 4, 65)
    # Each summit is a triangular peak; the ridge follows the highest of them, plus seeded roughness.
    ridge = np.full_like(xs, base)
    for sx, sy in zip(summit_x, summit_y):
        ridge = np.minimum(ridge, sy + np.abs(xs - sx) * rng.uniform(0.7, 1.3))
    ridge += rng.uniform(-4, 4, size=xs.shape)
    return poly([*zip(xs, ridge), (SIZE + 4, SIZE + 1), (-4, SIZE + 1)])


def _conifer(cx: float, foot: float, height: float) -> list[Polygon]:
    """A pine: three stacked triangles over a short trunk."""
    h = height
    parts = [rect(cx - 0.04 * h, foot - 0.15 * h, cx + 0.04 * h, foot)]
    for bottom, top, half in ((0.15, 0.55, 0.3), (0.4, 0.8, 0.23), (0.65, 1.0, 0.16)):
        parts.append(poly([(cx - half * h, foot - bottom * h), (cx + half * h, foot - bottom * h),
                           (cx, foot - top * h)]))
    return parts


def draw_mountainous(rng: np.random.Generator, variant: str) -> list[Shape]:
    """Mountainous landscape: two ranges, a lake in the valley and pine trees on the shore."""
    horizon = rng.uniform(0.5, 0.58) * SIZE
    shapes = [Shape("mountain", [_ridge(rng, horizon, int(rng.integers(2, 4)), 0.38 * SIZE)]),
              Shape("mountain", [_ridge(rng, horizon + 0.06 * SIZE, int(rng.integers(2, 4)), 0.18 * SIZE)])]
    lake_cx = {"a": 0.5, "b": 0.35, "c": 0.62}[variant] * SIZE + rng.uniform(-20, 20)
    lake_cy = horizon + rng.uniform(0.18, 0.24) * SIZE
    lake_rx = rng.uniform(0.38, 0.48) * SIZE
    lake_ry = rng.uniform(0.1, 0.14) * SIZE
    shapes.append(Shape("lake", [ellipse(lake_cx, lake_cy, lake_rx, lake_ry, n=48)]))
    pines = []
    groves = {"a": (0.08, 0.92), "b": (0.85,), "c": (0.1,)}[variant]
    for grove in groves:
        for _ in range(int(rng.integers(3, 6))):
            foot = rng.uniform(0.8, 1.0) * SIZE
            cx = (grove + rng.uniform(-0.08, 0.08)) * SIZE
            pines += _conifer(cx, foot, rng.uniform(0.25, 0.4) * SIZE)
    shapes.append(Shape("tree", pines))
    return shapes


DRAWERS = {
    "vehicle": draw_vehicle,
    "street": draw_street,
    "indoor": draw_indoor,
    "mountainous": draw_mountainous,
}

#: Scenes with a Cityscapes version (all their labels have a Cityscapes class of the same meaning).
CITYSCAPES_SCENES = ("vehicle", "street")


def layout_names() -> list[str]:
    """All layout names, scene by scene: ``vehicle_a … mountainous_c``."""
    return [f"{scene}_{suffix}" for scene in DRAWERS for suffix in LAYOUT_SUFFIXES]


def draw_layout(name: str) -> Layout:
    """Draw one layout; its shapes come from a generator seeded by the CRC-32 of its name.

    Parameters
    ----------
    name : str
        ``"<scene>_<suffix>"`` with a scene of ``DRAWERS`` and a suffix of ``LAYOUT_SUFFIXES``.

    Returns
    -------
    Layout
        Painted back to front: the first label of the scene fills the image, later shapes cover earlier ones.
    """
    scene, variant = name.rsplit("_", 1)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    shapes = DRAWERS[scene](rng, variant)
    order = SCENE_LABELS[scene]
    labels = np.full((SIZE, SIZE), 1, dtype=np.uint8)
    instances = np.zeros((SIZE, SIZE), dtype=np.int32)
    layout = Layout(name, labels, instances, [(order[0], 0)], {})
    for shape in shapes:
        key = (shape.label, shape.instance)
        if key not in layout.instance_keys:
            layout.instance_keys.append(key)
        layout.instance_polygons.setdefault(key, []).extend(shape.polygons)
        painted = rasterize(shape.polygons)
        labels[painted] = order.index(shape.label) + 1
        instances[painted] = layout.instance_keys.index(key)
    return layout


# ------------------------------------------------------------------------------------------------ writers


def cityscapes_image(layout: Layout) -> np.ndarray:
    """``(SIZE, SIZE) uint8`` Cityscapes labelIds image of a layout."""
    ids = np.zeros(len(SCENE_LABELS[layout.scene]) + 1, dtype=np.uint8)
    for index, label in enumerate(SCENE_LABELS[layout.scene], start=1):
        ids[index] = CITYSCAPES_IDS[CITYSCAPES_NAME[label]]
    return ids[layout.labels]


def legend_of(scene: str) -> dict[str, str]:
    """Legend JSON content of a scene: ``{"1": label, ...}``."""
    return {str(index): label for index, label in enumerate(SCENE_LABELS[scene], start=1)}


def coco_document(layouts: list[Layout]) -> dict:
    """COCO annotation document of all layouts: one annotation per visible instance.

    Stuff classes have one instance per layout, things (car, person, sofa, table) one per drawn object.
    Segmentations are compressed RLE (``counts`` as a string) from ``pycocotools.mask.encode``; in
    ``POLYGON_LAYOUTS`` the named thing class is stored as polygons instead, which is exact because those
    objects are painted last and nothing covers them.
    """
    used = sorted({COCO_CATEGORY[label] for layout in layouts for label, _ in layout.instance_keys})
    document = {
        "info": {"description": "panostudy scene masks, drawn by data/make_assets.py", "version": "1"},
        "licenses": [{"id": 1, "name": "MIT (panostudy project)", "url": ""}],
        "images": [],
        "categories": [{"id": cid, "name": cname, "supercategory": sup} for cid, cname, sup, _ in used],
        "annotations": [],
    }
    for image_id, layout in enumerate(layouts, start=1):
        document["images"].append({"id": image_id, "file_name": f"{layout.name}.png", "width": SIZE,
                                   "height": SIZE, "license": 1})
        for index, key in enumerate(layout.instance_keys):
            visible = layout.instances == index
            if not visible.any():
                continue
            rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
            segmentation: object = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            if POLYGON_LAYOUTS.get(layout.name) == key[0]:
                polygons = layout.instance_polygons[key]
                if not np.array_equal(rasterize(polygons), visible):
                    raise RuntimeError(f"{layout.name}: {key} is partly covered, so a polygon cannot describe it")
                segmentation = polygons
            document["annotations"].append({
                "id": len(document["annotations"]) + 1,
                "image_id": image_id,
                "category_id": COCO_CATEGORY[key[0]][0],
                "segmentation": segmentation,
                "area": int(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            })
    return document


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, optimize=True)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow >= 10.1 ships a scalable default font, so no font file is needed.
    return ImageFont.load_default(size=size)


def _longitude(width: int) -> np.ndarray:
    """Yaw in degrees of each column centre; 0 at the image centre, positive to the right."""
    return (np.arange(width) + 0.5) / width * 360.0 - 180.0


def _latitude(height: int) -> np.ndarray:
    """Pitch in degrees of each row centre; positive up."""
    return 90.0 - (np.arange(height) + 0.5) / height * 180.0


def training_front() -> np.ndarray:
    """Direction test pattern, ``(1024, 2048, 3) uint8`` equirectangular.

    Each quarter of the horizon has its own tint and word (FRONT at yaw 0 = image centre, RIGHT at +90°,
    BACK at ±180° = the seam, LEFT at −90°); UP and DOWN bands cover |pitch| > 60°; grid lines every 30°.
    """
    w, h = PANORAMA_WIDTH, PANORAMA_HEIGHT
    yaw, pitch = _longitude(w), _latitude(h)
    tints = np.array([[214, 236, 214], [214, 226, 246], [246, 216, 216], [246, 240, 206]], dtype=np.uint8)
    quarter = np.round(yaw / 90.0).astype(int) % 4  # 0 front, 1 right, 2 back, 3 left
    image = np.repeat(tints[quarter][None, :, :], h, axis=0)
    image[pitch > 60] = (226, 220, 244)
    image[pitch < -60] = (200, 200, 200)
    grid = (np.abs((yaw + 180) % 30 - 15) > 14.6)[None, :] | (np.abs((pitch + 90) % 30 - 15) > 14.6)[:, None]
    image[grid] = (90, 90, 90)
    image[np.abs(pitch) < 0.3] = (40, 40, 40)
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    big, small = _font(150), _font(40)
    for word, yaw_deg, note in (("FRONT", 0, "yaw 0"), ("RIGHT", 90, "yaw +90"), ("LEFT", -90, "yaw -90"),
                                ("BACK", 180, "yaw 180"), ("BACK", -180, "yaw 180")):
        x = (yaw_deg + 180) / 360 * w
        draw.text((x, h / 2 - 90), word, font=big, fill=(20, 20, 20), anchor="mm")
        draw.text((x, h / 2 + 40), note, font=small, fill=(20, 20, 20), anchor="mm")
    for yaw_deg in range(-180, 181, 90):
        x = (yaw_deg + 180) / 360 * w
        draw.text((x, h * 0.1), "UP", font=_font(70), fill=(60, 40, 110), anchor="mm")
        draw.text((x, h * 0.9), "DOWN", font=_font(70), fill=(40, 40, 40), anchor="mm")
    return np.asarray(canvas)


#: Colour-checker-like patch colours (our own sRGB picks: skin tones, sky, foliage, primaries, greys).
CHECKER_COLOURS = np.array([
    [115, 82, 68], [194, 150, 130], [98, 122, 157], [87, 108, 67], [133, 128, 177], [103, 189, 170],
    [214, 126, 44], [80, 91, 166], [193, 90, 99], [94, 60, 108], [157, 188, 64], [224, 163, 46],
    [56, 61, 150], [70, 148, 73], [175, 54, 60], [231, 199, 31], [187, 86, 149], [8, 133, 161],
    [243, 243, 242], [200, 200, 200], [160, 160, 160], [122, 122, 121], [85, 85, 85], [52, 52, 52],
], dtype=np.uint8)


def training_grid() -> np.ndarray:
    """Colour-checker panorama, ``(1024, 2048, 3) uint8`` equirectangular.

    The band |pitch| < 45° holds a 6 × 4 patch chart repeated every 90° of yaw; below it a 16-step grey ramp
    runs twice around the horizon; the polar caps are mid grey.
    """
    w, h = PANORAMA_WIDTH, PANORAMA_HEIGHT
    image = np.full((h, w, 3), 118, dtype=np.uint8)
    chart_w, row_h = w // 4, h // 8
    col_edges = np.round(np.linspace(0, chart_w, 7)).astype(int)
    border = 6
    image[h // 4:3 * h // 4] = 30
    for repeat in range(4):
        for row in range(4):
            for col in range(6):
                y0 = h // 4 + row * row_h + border
                x0 = repeat * chart_w + col_edges[col] + border
                image[y0:y0 + row_h - 2 * border, x0:repeat * chart_w + col_edges[col + 1] - border] = \
                    CHECKER_COLOURS[row * 6 + col]
    ramp_edges = np.round(np.linspace(0, w, 33)).astype(int)
    for step in range(32):
        grey = int(round((step % 16) / 15 * 255))
        image[3 * h // 4 + 8:7 * h // 8, ramp_edges[step]:ramp_edges[step + 1]] = grey
    return image


def write_assets(root: Path) -> list[Path]:
    """Write every mask and training file under ``root`` (laid out like ``data/``); return the paths."""
    layouts = [draw_layout(name) for name in layout_names()]
    written = []
    for layout in layouts:
        if layout.scene in CITYSCAPES_SCENES:
            path = root / "masks" / "cityscapes" / f"{layout.name}_gtFine_labelIds.png"
            _save_png(cityscapes_image(layout), path)
            written.append(path)
        path = root / "masks" / "legend" / f"{layout.name}.png"
        _save_png(layout.labels, path)
        legend_path = path.with_suffix(".json")
        legend_path.write_text(json.dumps(legend_of(layout.scene), indent=1) + "\n")
        written += [path, legend_path]
    coco_path = root / "masks" / "coco" / "annotations.json"
    coco_path.parent.mkdir(parents=True, exist_ok=True)
    coco_path.write_text(json.dumps(coco_document(layouts), separators=(",", ":")) + "\n")
    written.append(coco_path)
    for name, draw in (("training_front.png", training_front), ("training_grid.png", training_grid)):
        path = root / "training" / name
        _save_png(draw(), path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder to write masks/ and training/ into (default: this script's folder)")
    args = parser.parse_args(argv)
    for path in write_assets(args.out):
        print(path)


if __name__ == "__main__":
    main()
