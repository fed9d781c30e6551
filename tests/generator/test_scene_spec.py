"""Scene spec files: the shipped specs load; each kind of mistake gets a one-line message naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generator.scene_spec import MaskResizeWarning, load_scene_spec, phrase_span
from study.errors import SceneSpecError

HEADER = """schema_version = 1
scene = "vehicle"
prompt = "a red car driving on an asphalt road under a blue sky"
negative_prompt = "blurry"
model = "stable-diffusion-v1-5/stable-diffusion-v1-5"
seeds = [11, 12, 13]
count = {count}
width = 64
height = 48
steps = 4
guidance_scale = 7.5
"""

LAYOUTS = """
[[layouts]]
name = "city"
format = "cityscapes"
path = "layout_gtFine_labelIds.png"

[[layouts]]
name = "coco"
format = "coco"
path = "annotations.json"
image = "layout"

[[layouts]]
name = "legend"
format = "legend"
path = "layout.png"
legend = "layout.json"
"""

OBJECTS = """
[objects]
car = "a red car"
road = "asphalt road"
sky = "blue sky"
"""


def write_spec(folder: Path, text: str) -> Path:
    path = folder / "scene.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["vehicle", "street", "indoor", "mountainous"])
def test_shipped_specs_load_with_masks_at_generation_size(name):
    spec = load_scene_spec(f"data/scenes/{name}.toml")
    assert spec.scene == name
    assert len(spec.jobs()) == spec.count
    for layout in spec.layouts:
        masks = spec.masks(layout.name)
        assert masks.labels == list(spec.objects)
        assert masks.shape == (spec.height, spec.width)
        assert all(mask.any() for mask in masks.values())
        for phrase in spec.objects.values():
            assert phrase_span(spec.prompt, phrase) is not None


def test_all_three_formats_in_one_spec_give_the_same_masks(layout_files):
    spec = load_scene_spec(write_spec(layout_files["coco"].parent, HEADER.format(count=3) + LAYOUTS + OBJECTS))
    labels = layout_files["labels"]
    for layout in ("city", "coco", "legend"):
        masks = spec.masks(layout)
        assert masks.labels == ["car", "road", "sky"]  # [objects] order
        np.testing.assert_array_equal(masks["car"], labels == 26)
        np.testing.assert_array_equal(masks["sky"], labels == 23)


def test_jobs_pair_layouts_and_seeds_diagonally(layout_files):
    spec = load_scene_spec(write_spec(layout_files["coco"].parent, HEADER.format(count=9) + LAYOUTS + OBJECTS))
    jobs = [(layout.name, seed) for layout, seed in spec.jobs()]
    assert jobs[:3] == [("city", 11), ("coco", 12), ("legend", 13)]
    assert len(set(jobs)) == 9


def test_phrase_not_in_prompt(layout_files):
    text = HEADER.format(count=1) + LAYOUTS + OBJECTS.replace('"a red car"', '"a blue car"')
    with pytest.raises(SceneSpecError, match="'car' = \"a blue car\" is not in the prompt"):
        load_scene_spec(write_spec(layout_files["coco"].parent, text))


def test_phrase_must_match_whole_words(layout_files):
    text = HEADER.format(count=1) + LAYOUTS + OBJECTS.replace('"blue sky"', '"ue sky"')
    with pytest.raises(SceneSpecError, match="'sky' = \"ue sky\" is not in the prompt"):
        load_scene_spec(write_spec(layout_files["coco"].parent, text))


def test_overlapping_phrases(layout_files):
    text = HEADER.format(count=1) + LAYOUTS + OBJECTS + 'building = "red car driving"\n'
    with pytest.raises(SceneSpecError, match="'building' and 'car' name overlapping words"):
        load_scene_spec(write_spec(layout_files["coco"].parent, text))


def test_label_absent_from_mask_file(layout_files):
    text = HEADER.format(count=1) + LAYOUTS + OBJECTS + 'person = "driving"\n'
    with pytest.raises(SceneSpecError, match="layout 'city'.*has no mask labelled person; its labels are: road"):
        load_scene_spec(write_spec(layout_files["coco"].parent, text))


def test_empty_mask(layout_files):
    folder = layout_files["coco"].parent
    (folder / "layout.json").write_text('{"1": "road", "2": "building", "3": "sky", "4": "car", "9": "lamp"}')
    text = HEADER.format(count=1) + LAYOUTS + OBJECTS.replace('car = "a red car"', 'lamp = "a red car"')
    text = text.replace('name = "city"\nformat = "cityscapes"\npath = "layout_gtFine_labelIds.png"',
                        'name = "city"\nformat = "legend"\npath = "layout.png"\nlegend = "layout.json"')
    with pytest.raises(SceneSpecError, match="the mask of 'lamp' is empty"):
        load_scene_spec(write_spec(folder, text))


def test_mask_of_another_size_is_resized_with_a_notice(layout_files):
    text = HEADER.format(count=1).replace("width = 64\nheight = 48", "width = 128\nheight = 96") + LAYOUTS + OBJECTS
    with pytest.warns(MaskResizeWarning, match=r"layout_gtFine_labelIds.png \(layout 'city'\): 64x48 \(WxH\), scaled x2 "
                                                r"to 128x96 \(nearest neighbour\)$"):
        spec = load_scene_spec(write_spec(layout_files["coco"].parent, text))
    car = spec.masks("city")["car"]
    assert car.shape == (96, 128)
    np.testing.assert_array_equal(car[::2, ::2], layout_files["labels"] == 26)


def test_missing_mask_file(layout_files):
    text = HEADER.format(count=1) + LAYOUTS.replace("layout.png", "gone.png") + OBJECTS
    with pytest.raises(SceneSpecError, match="layout 'legend': mask file '.*gone.png' does not exist"):
        load_scene_spec(write_spec(layout_files["coco"].parent, text))


def test_missing_spec_file(tmp_path):
    with pytest.raises(SceneSpecError, match="scene spec '.*nothing.toml' does not exist"):
        load_scene_spec(tmp_path / "nothing.toml")


def test_unknown_format(layout_files):
    text = HEADER.format(count=1) + LAYOUTS.replace('format = "coco"', 'format = "pascal"') + OBJECTS
    with pytest.raises(SceneSpecError, match="layout 'coco': unknown format 'pascal'; use one of cityscapes, coco, legend"):
        load_scene_spec(write_spec(layout_files["coco"].parent, text))


def test_bad_toml(tmp_path):
    with pytest.raises(SceneSpecError, match="is not valid TOML"):
        load_scene_spec(write_spec(tmp_path, 'prompt = "unterminated\n'))


@pytest.mark.parametrize(
    ("replace", "by", "message"),
    [
        ("count = 1", "count = 10", "count 10 exceeds the 3 layouts × 3 seeds"),
        ("seeds = [11, 12, 13]", "seeds = [11, 11]", "repeats a seed"),
        ("width = 64", "width = 60", "'width' is 60; it must be a multiple of 8"),
        ("steps = 4", 'steps = "four"', "field 'steps' is 'four'"),
        ("schema_version = 1", "schema_version = 2", "schema_version 2 is not supported"),
        ('model = "stable-diffusion-v1-5/stable-diffusion-v1-5"\n', "", "missing field 'model'"),
    ],
)
def test_field_errors(layout_files, replace, by, message):
    text = (HEADER.format(count=1) + LAYOUTS + OBJECTS).replace(replace, by)
    with pytest.raises(SceneSpecError, match=message):
        load_scene_spec(write_spec(layout_files["coco"].parent, text))


def test_colour_png_in_a_spec_is_refused(layout_files):
    folder = layout_files["coco"].parent
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(folder / "layout_gtFine_labelIds.png")
    with pytest.raises(SceneSpecError, match="colour image"):
        load_scene_spec(write_spec(folder, HEADER.format(count=1) + LAYOUTS + OBJECTS))
