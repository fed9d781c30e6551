"""Mask loaders: the three formats of one layout decode to identical masks; bad files get clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from generator.masks import (
    NamedMasks,
    load_cityscapes_masks,
    load_coco_masks,
    load_legend_masks,
)
from study.errors import SceneSpecError
from tests.generator.conftest import LAYOUT_IDS, rle_as_json

DATA = "data/masks"


def test_three_formats_of_one_layout_give_identical_masks(layout_files):
    labels = layout_files["labels"]
    cityscapes = load_cityscapes_masks(layout_files["cityscapes"])
    coco = load_coco_masks(layout_files["coco"], "layout")
    legend = load_legend_masks(layout_files["legend_png"], layout_files["legend_json"])

    assert cityscapes.labels == ["road", "building", "sky", "car"]  # Cityscapes id order
    assert coco.labels == legend.labels == ["road", "building", "sky", "car"]
    for name, label_id in LAYOUT_IDS.items():
        expected = labels == label_id
        assert cityscapes[name].dtype == bool and cityscapes[name].shape == (48, 64)
        np.testing.assert_array_equal(cityscapes[name], expected)
        np.testing.assert_array_equal(coco[name], expected)
        np.testing.assert_array_equal(legend[name], expected)
    # The unlabeled corner belongs to no mask.
    assert not any(mask[-1, -1] for mask in cityscapes.values())


def test_coco_polygon_matches_its_rasterisation_and_uncompressed_rle_decodes(tmp_path):
    height, width = 80, 120
    polygon = [10.0, 8.0, 100.0, 16.0, 84.0, 66.0, 20.0, 60.0]
    raster = Image.new("L", (width, height), 0)
    ImageDraw.Draw(raster).polygon(list(zip(polygon[::2], polygon[1::2])), fill=1)
    drawn = np.asarray(raster).astype(bool)

    square = np.zeros((height, width), bool)
    square[2:9, 102:118] = True
    # Uncompressed RLE: alternating run lengths over the column-major pixel order, starting with zeros.
    flat = square.flatten(order="F").astype(int)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    document = {
        "images": [{"id": 1, "file_name": "poly.jpg", "height": height, "width": width}],
        "categories": [{"id": 3, "name": "car"}, {"id": 9, "name": "sign"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "segmentation": [polygon]},
            {"id": 2, "image_id": 1, "category_id": 9, "segmentation": {"size": [height, width], "counts": counts}},
        ],
    }
    path = tmp_path / "poly.json"
    path.write_text(json.dumps(document))

    masks = load_coco_masks(path, "poly")  # file_name without its extension
    car = masks["car"]
    intersection_over_union = (car & drawn).sum() / (car | drawn).sum()
    assert car.sum() > 3500 and intersection_over_union > 0.95
    # The two rasterisers may differ only on the outline: every differing pixel touches both classes.
    padded = np.pad(drawn, 1)
    inside_nbhd = np.zeros_like(drawn)
    outside_nbhd = np.zeros_like(drawn)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            window = padded[dy : dy + height, dx : dx + width]
            inside_nbhd |= window
            outside_nbhd |= ~window
    assert np.all((inside_nbhd & outside_nbhd)[car != drawn])
    np.testing.assert_array_equal(masks["sign"], square)


def test_coco_unites_all_annotations_of_a_category(tmp_path, layout_files):
    left = np.zeros((10, 10), bool)
    left[:, :3] = True
    right = np.zeros((10, 10), bool)
    right[:, 8:] = True
    document = {
        "images": [{"id": 1, "file_name": "two.png", "height": 10, "width": 10}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle_as_json(left)},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": rle_as_json(right)},
        ],
    }
    path = tmp_path / "two.json"
    path.write_text(json.dumps(document))
    np.testing.assert_array_equal(load_coco_masks(path, "two.png")["person"], left | right)


def test_shipped_layout_loads_identically_in_all_formats():
    cityscapes = load_cityscapes_masks(f"{DATA}/cityscapes/vehicle_b_gtFine_labelIds.png")
    coco = load_coco_masks(f"{DATA}/coco/annotations.json", "vehicle_b")  # cars stored as polygons
    legend = load_legend_masks(f"{DATA}/legend/vehicle_b.png", f"{DATA}/legend/vehicle_b.json")
    for name in ("car", "road"):
        np.testing.assert_array_equal(cityscapes[name], coco[name])
        np.testing.assert_array_equal(cityscapes[name], legend[name])
    np.testing.assert_array_equal(cityscapes["sky"], coco["sky-other"])


def test_named_masks_resize_nearest_and_refuse_mixed_sizes():
    labels = np.zeros((4, 6), np.uint8)
    labels[1:3, 2:5] = 1
    masks = NamedMasks({"box": labels == 1, "rest": labels == 0}, source="test")
    doubled = masks.resized(8, 12)
    assert doubled.shape == (8, 12)
    np.testing.assert_array_equal(doubled["box"], np.kron(labels == 1, np.ones((2, 2), bool)))
    np.testing.assert_array_equal(doubled.resized(4, 6)["box"], labels == 1)
    with pytest.raises(SceneSpecError, match="'b' has shape \\(3, 3\\)"):
        NamedMasks({"a": np.zeros((2, 2)), "b": np.zeros((3, 3))}, source="test")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SceneSpecError, match="nowhere_labelIds.png' does not exist"):
        load_cityscapes_masks(tmp_path / "nowhere_labelIds.png")
    with pytest.raises(SceneSpecError, match="legend file .*absent.json' does not exist"):
        png = tmp_path / "x.png"
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
        load_legend_masks(png, tmp_path / "absent.json")


def test_colour_and_out_of_table_images_are_refused(tmp_path):
    colour = tmp_path / "x_color.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(colour)
    with pytest.raises(SceneSpecError, match="RGB colour image.*labelIds"):
        load_cityscapes_masks(colour)
    train_ids = tmp_path / "x_trainIds.png"
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(train_ids)
    with pytest.raises(SceneSpecError, match=r"ids \[255\] outside the label table"):
        load_cityscapes_masks(train_ids)


def test_coco_errors_name_the_image_and_the_problem(tmp_path, layout_files):
    with pytest.raises(SceneSpecError, match="no image 'missing'; its images include: other, layout"):
        load_coco_masks(layout_files["coco"], "missing")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SceneSpecError, match="not valid JSON"):
        load_coco_masks(broken, "layout")
    broken.write_text(json.dumps({"images": []}))
    with pytest.raises(SceneSpecError, match="lacks 'categories'"):
        load_coco_masks(broken, "layout")


def test_legend_errors(tmp_path, layout_files):
    legend = tmp_path / "bad.json"
    legend.write_text(json.dumps({"one": "sofa"}))
    with pytest.raises(SceneSpecError, match="non-negative integer index"):
        load_legend_masks(layout_files["legend_png"], legend)
    legend.write_text(json.dumps({"1": "sofa", "2": "sofa"}))
    with pytest.raises(SceneSpecError, match="names 'sofa' twice"):
        load_legend_masks(layout_files["legend_png"], legend)
    legend.write_text(json.dumps({"1": "road", "9": "lamp"}))
    masks = load_legend_masks(layout_files["legend_png"], legend)
    assert masks.labels == ["road", "lamp"]
    assert not masks["lamp"].any()  # declared but absent: kept as an empty mask


def _wide_labelids(tmp_path) -> tuple:
    """A 2:1 (512x256) Cityscapes labelIds frame: sky, road, a 64x64 car in the middle and a 40x40 car at the
    left edge, outside the centre square."""
    labels = np.full((256, 512), 23, np.uint8)  # sky
    labels[128:] = 7  # road
    labels[150:214, 224:288] = 26  # a square car at the centre
    labels[160:200, 10:50] = 26  # a square car near the left edge
    path = tmp_path / "wide_gtFine_labelIds.png"
    Image.fromarray(labels).save(path)
    return path, labels


def _box(mask: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_a_2_to_1_labelids_file_is_centre_cropped_to_the_square_never_squashed(tmp_path):
    from generator.masks import fit_masks

    path, labels = _wide_labelids(tmp_path)
    masks = load_cityscapes_masks(path)
    cropped, done = fit_masks(masks, 64, 64, "crop")
    assert cropped.shape == (64, 64)
    assert _box(cropped["car"]) == (16, 16)  # the square centre car stays square: 64 px -> 16 px at x0.25
    assert cropped["car"].sum() == 16 * 16  # the edge car lies outside the square the image covers
    np.testing.assert_array_equal(cropped["car"], fit_masks(NamedMasks({"car": labels[:, 128:384] == 26}), 64, 64)[0]["car"])
    assert done == ("512x256 (WxH), centre-cropped to the 256x256 region the 64x64 image covers (columns 128-383 kept), "
                    "scaled x0.25 to 64x64 (nearest neighbour)")


def test_letterbox_keeps_all_of_a_2_to_1_mask_square(tmp_path):
    from generator.masks import fit_masks

    path, labels = _wide_labelids(tmp_path)
    boxed, done = fit_masks(load_cityscapes_masks(path), 64, 64, "letterbox")
    assert boxed.shape == (64, 64)
    car = boxed["car"]
    assert car.sum() == 8 * 8 + 5 * 5  # both cars, x0.125, still square
    assert not boxed["sky"][:16].any() and not boxed["road"][48:].any()  # the padding bands constrain nothing
    assert "letterboxed to 512x512 (128 rows above and below constrain nothing), scaled x0.125" in done


def test_a_spec_with_a_2_to_1_file_notices_the_crop_and_letterbox_is_an_option(tmp_path):
    from generator.scene_spec import MaskResizeWarning, load_scene_spec

    path, _ = _wide_labelids(tmp_path)
    spec_text = f"""schema_version = 1
scene = "street"
prompt = "a red car on an asphalt road under a blue sky"
model = "tiny"
seeds = [1]
count = 1
width = 128
height = 128
steps = 2
guidance_scale = 7.5
{{fit}}
[[layouts]]
name = "wide"
format = "cityscapes"
path = "{path.name}"

[objects]
car = "a red car"
sky = "blue sky"
"""
    spec_path = tmp_path / "wide.toml"
    spec_path.write_text(spec_text.format(fit=""))
    with pytest.warns(MaskResizeWarning, match=r"^wide_gtFine_labelIds.png \(layout 'wide'\): 512x256 \(WxH\), "
                                               r"centre-cropped") as notices:
        spec = load_scene_spec(spec_path)
    assert len(notices) == 1 and "\n" not in str(notices[0].message)
    assert spec.mask_fit == "crop" and _box(spec.masks("wide")["car"]) == (32, 32)
    with pytest.warns(MaskResizeWarning, match="letterboxed"):
        assert load_scene_spec(spec_path, mask_fit="letterbox").masks("wide")["car"].sum() == 16 * 16 + 10 * 10
    spec_path.write_text(spec_text.format(fit='mask_fit = "letterbox"'))
    with pytest.warns(MaskResizeWarning, match="letterboxed"):
        assert load_scene_spec(spec_path).mask_fit == "letterbox"
    spec_path.write_text(spec_text.format(fit='mask_fit = "stretch"'))
    with pytest.raises(SceneSpecError, match="field 'mask_fit' is 'stretch'; use one of crop, letterbox"):
        load_scene_spec(spec_path)
