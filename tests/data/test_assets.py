"""The shipped data: masks, scene specs and training panoramas are present, consistent and reproducible.

The masks are read here straight from their formats (Cityscapes ids, pycocotools, legend JSON) rather than
through ``generator``'s loaders, so these tests pin the files themselves.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

DATA = Path(__file__).resolve().parents[2] / "data"
SCENES = ("vehicle", "street", "indoor", "mountainous")

# pycocotools' decode still calls numpy's __array__ the pre-2.0 way; harmless, and not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _load_make_assets():
    spec = importlib.util.spec_from_file_location("make_assets", DATA / "make_assets.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class body runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


make_assets = _load_make_assets()


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def coco() -> COCO:
    return COCO(str(DATA / "masks" / "coco" / "annotations.json"))


def _coco_masks(coco: COCO, image_name: str) -> dict[str, np.ndarray]:
    image_id = next(i["id"] for i in coco.dataset["images"] if i["file_name"].rsplit(".", 1)[0] == image_name)
    masks: dict[str, np.ndarray] = {}
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
        name = coco.loadCats([ann["category_id"]])[0]["name"]
        masks[name] = masks.get(name, np.zeros((512, 512), bool)) | coco.annToMask(ann).astype(bool)
    return masks


def _cityscapes_masks(path: Path) -> dict[str, np.ndarray]:
    ids = _png(path)
    return {name: ids == cid for name, cid in make_assets.CITYSCAPES_IDS.items() if (ids == cid).any()}


def _legend_masks(path: Path, legend: Path) -> dict[str, np.ndarray]:
    index = _png(path)
    return {name: index == int(key) for key, name in json.loads(legend.read_text()).items()}


def _layout_masks(spec_path: Path, layout: dict, coco: COCO) -> dict[str, np.ndarray]:
    base = spec_path.parent
    if layout["format"] == "cityscapes":
        return _cityscapes_masks(base / layout["path"])
    if layout["format"] == "coco":
        assert (base / layout["path"]).resolve() == (DATA / "masks" / "coco" / "annotations.json").resolve()
        return _coco_masks(coco, layout["image"])
    return _legend_masks(base / layout["path"], base / layout["legend"])


def test_shipped_files_exist_with_expected_types():
    for name in make_assets.layout_names():
        scene = name.rsplit("_", 1)[0]
        legend = _png(DATA / "masks" / "legend" / f"{name}.png")
        assert legend.shape == (512, 512) and legend.dtype == np.uint8
        if scene in ("vehicle", "street"):
            ids = _png(DATA / "masks" / "cityscapes" / f"{name}_gtFine_labelIds.png")
            assert ids.shape == (512, 512) and ids.dtype == np.uint8
            assert set(np.unique(ids)) <= set(make_assets.CITYSCAPES_IDS.values())
    for scene in SCENES:
        assert (DATA / "scenes" / f"{scene}.toml").is_file()
    assert (DATA / "README.md").is_file()


def test_redrawing_reproduces_every_file(tmp_path):
    written = make_assets.write_assets(tmp_path)
    assert len(written) == 6 + 12 * 2 + 1 + 2
    for path in written:
        shipped = DATA / path.relative_to(tmp_path)
        if path.suffix == ".png":
            assert np.array_equal(_png(path), _png(shipped)), shipped
        else:
            assert json.loads(path.read_text()) == json.loads(shipped.read_text()), shipped


def test_three_formats_describe_identical_masks(coco):
    cityscapes_to_label = {v: k for k, v in make_assets.CITYSCAPES_NAME.items()}
    coco_to_label = {v[1]: k for k, v in make_assets.COCO_CATEGORY.items()}
    for name in make_assets.layout_names():
        legend = _legend_masks(DATA / "masks" / "legend" / f"{name}.png", DATA / "masks" / "legend" / f"{name}.json")
        from_coco = {coco_to_label[k]: v for k, v in _coco_masks(coco, name).items()}
        # Every pixel belongs to exactly one label.
        assert sum(m.astype(int) for m in legend.values()).min() == 1
        assert set(from_coco) == {k for k, m in legend.items() if m.any()}
        for label, mask in from_coco.items():
            assert np.array_equal(mask, legend[label]), (name, label)
        path = DATA / "masks" / "cityscapes" / f"{name}_gtFine_labelIds.png"
        if path.exists():
            from_cityscapes = {cityscapes_to_label[k]: v for k, v in _cityscapes_masks(path).items()}
            assert set(from_cityscapes) == set(from_coco)
            for label, mask in from_cityscapes.items():
                assert np.array_equal(mask, legend[label]), (name, label)


def test_coco_document_is_valid(coco):
    doc = coco.dataset
    assert [i["id"] for i in doc["images"]] == list(range(1, 13))
    assert {i["file_name"] for i in doc["images"]} == {f"{n}.png" for n in make_assets.layout_names()}
    official = {cid: cname for cid, cname, _, _ in make_assets.COCO_CATEGORY.values()}
    assert {c["id"]: c["name"] for c in doc["categories"]}.items() <= official.items()
    assert official[63] == "couch" and official[157] == "sky-other" and official[178] == "water-other"
    assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"])
    polygon_images = set()
    for ann in doc["annotations"]:
        mask = coco.annToMask(ann)
        rle = mask_utils.encode(np.asfortranarray(mask))
        assert ann["iscrowd"] == 0 and ann["area"] == int(mask.sum()) > 0
        assert np.allclose(ann["bbox"], mask_utils.toBbox(rle))
        if isinstance(ann["segmentation"], list):
            polygon_images.add(coco.loadImgs([ann["image_id"]])[0]["file_name"])
        else:
            assert isinstance(ann["segmentation"]["counts"], str)
    assert polygon_images == {"vehicle_b.png", "street_b.png"}


@pytest.mark.parametrize("scene", SCENES)
def test_scene_spec_refers_to_labels_present_in_its_masks(scene, coco):
    path = DATA / "scenes" / f"{scene}.toml"
    spec = tomllib.loads(path.read_text())
    assert spec["schema_version"] == 1 and spec["scene"] == scene
    assert len(spec["prompt"].split()) <= 30 and 1 <= len(spec["objects"]) <= 4
    assert 1 <= spec["count"] <= len(spec["seeds"]) * len(spec["layouts"])
    assert (spec["width"], spec["height"]) == (512, 512)
    for phrase in spec["objects"].values():
        assert phrase in spec["prompt"], phrase
    assert len(spec["layouts"]) >= 2
    for layout in spec["layouts"]:
        masks = _layout_masks(path, layout, coco)
        for label in spec["objects"]:
            assert label in masks and masks[label].sum() > 100, (layout["name"], label)


def test_all_three_formats_are_used_by_the_specs():
    formats = {layout["format"] for scene in SCENES
               for layout in tomllib.loads((DATA / "scenes" / f"{scene}.toml").read_text())["layouts"]}
    assert formats == {"cityscapes", "coco", "legend"}


def test_training_panoramas_are_2_to_1_and_labelled_by_direction():
    for name in ("training_front.png", "training_grid.png"):
        image = _png(DATA / "training" / name)
        assert image.shape == (1024, 2048, 3) and image.dtype == np.uint8
    front = _png(DATA / "training" / "training_front.png").astype(int)
    row = 700  # below the words, clear of grid lines
    tint = {x: front[row, x] for x in (1040, 1552, 528, 16, 2032)}
    assert tint[1040][1] > tint[1040][0] and tint[1040][1] > tint[1040][2]  # front: green
    assert tint[1552][2] > tint[1552][0]  # right (+90°, x = 3W/4): blue
    assert tint[528][0] > tint[528][2] and tint[528][1] > tint[528][2]  # left (−90°, x = W/4): yellow
    assert np.array_equal(tint[16], tint[2032]) and tint[16][0] > tint[16][1]  # back: the same red on both edges
    # Dark lettering sits at the centre of each labelled direction and straddles the seam for BACK.
    for x in (1024, 1536, 512, 0, 2047):
        assert (front[380:470, max(x - 60, 0):x + 60].sum(axis=2) < 150).sum() > 200, x
