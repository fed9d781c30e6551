"""Fixtures for the generator tests: the offline tiny model and one synthetic layout written in all formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generator.masks import CITYSCAPES_LABELS

#: Cityscapes label ids of the synthetic layout's objects.
LAYOUT_IDS = {"road": 7, "building": 11, "sky": 23, "car": 26}


@pytest.fixture
def get_dummy_components():
    """diffusers-style factory: ``get_dummy_components(seed)`` → tiny random-weight SD components."""
    from generator.tiny import tiny_sd_components

    return tiny_sd_components


@pytest.fixture(scope="module")
def tiny_pipe():
    """The mask-guided pipeline on the tiny model (seed 0), progress bar off; shared within a test module.

    Runs torch on one thread meanwhile: the tiny model's ops are too small to gain from two, and two threads
    slow down by up to 10x when other processes share the two cores.
    """
    import torch

    from generator.tiny import tiny_mask_guided_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pipe = tiny_mask_guided_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    torch.set_num_threads(threads)


def synthetic_label_array(height: int = 48, width: int = 64) -> np.ndarray:
    """``(H, W)`` uint8 Cityscapes label ids: sky on top, buildings at the sides, road below, a car on the
    road, and an unlabeled (0) corner."""
    labels = np.full((height, width), LAYOUT_IDS["sky"], np.uint8)
    labels[height // 4 :, : width // 4] = LAYOUT_IDS["building"]
    labels[height // 4 :, 3 * width // 4 :] = LAYOUT_IDS["building"]
    labels[height // 2 :, :] = LAYOUT_IDS["road"]
    labels[height // 2 + 4 : height - 6, width // 3 : width // 3 + 17] = LAYOUT_IDS["car"]
    labels[-3:, -3:] = 0
    return labels


def rle_as_json(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of a bool mask, with ``counts`` as a str as in COCO JSON files."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


@pytest.fixture
def layout_files(tmp_path: Path) -> dict:
    """One synthetic layout written as a Cityscapes labelIds PNG, a COCO JSON (RLE) and a legend PNG + JSON."""
    labels = synthetic_label_array()
    cityscapes = tmp_path / "layout_gtFine_labelIds.png"
    Image.fromarray(labels).save(cityscapes)

    names = list(LAYOUT_IDS)
    legend_png = tmp_path / "layout.png"
    index = np.zeros_like(labels)
    for i, name in enumerate(names, start=1):
        index[labels == LAYOUT_IDS[name]] = i
    Image.fromarray(index).save(legend_png)
    legend_json = tmp_path / "layout.json"
    legend_json.write_text(json.dumps({str(i): name for i, name in enumerate(names, start=1)}))

    coco = tmp_path / "annotations.json"
    document = {
        "images": [
            {"id": 5, "file_name": "other.png", "height": 8, "width": 8},
            {"id": 7, "file_name": "layout.png", "height": labels.shape[0], "width": labels.shape[1]},
        ],
        "categories": [{"id": i, "name": name} for i, name in enumerate(names, start=1)],
        "annotations": [
            {"id": n, "image_id": 7, "category_id": i, "iscrowd": 0, "segmentation": rle_as_json(labels == LAYOUT_IDS[name])}
            for n, (i, name) in enumerate(enumerate(names, start=1), start=1)
        ],
    }
    coco.write_text(json.dumps(document))
    assert all(name == CITYSCAPES_LABELS[i] for name, i in LAYOUT_IDS.items())
    return {"labels": labels, "cityscapes": cityscapes, "coco": coco, "legend_png": legend_png, "legend_json": legend_json}
