"""GPano XMP written into PNG and JPEG panoramas reads back."""

import numpy as np
import pytest
from PIL import Image

from generator.xmp import read_gpano, save_panorama
from study.errors import StimulusError


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg"])
def test_gpano_metadata_reads_back(tmp_path, suffix):
    image = np.random.default_rng(0).integers(0, 256, (48, 96, 3), dtype=np.uint8)
    path = save_panorama(image, tmp_path / f"pano{suffix}")
    gpano = read_gpano(path)
    assert gpano["ProjectionType"] == "equirectangular"
    assert (gpano["FullPanoWidthPixels"], gpano["FullPanoHeightPixels"]) == ("96", "48")
    assert gpano["CroppedAreaImageWidthPixels"] == "96" and gpano["CroppedAreaLeftPixels"] == "0"
    with Image.open(path) as written:
        assert written.size == (96, 48)
    if suffix == ".png":
        assert (np.asarray(Image.open(path)) == image).all()


def test_an_image_without_xmp_has_no_gpano(tmp_path):
    Image.new("RGB", (8, 4)).save(tmp_path / "plain.png")
    assert read_gpano(tmp_path / "plain.png") == {}


def test_bad_suffix_and_shape_are_refused_before_writing(tmp_path):
    with pytest.raises(StimulusError, match=".png"):
        save_panorama(np.zeros((4, 8, 3), np.uint8), tmp_path / "pano.webp")
    with pytest.raises(StimulusError, match="2:1"):
        save_panorama(np.zeros((4, 6, 3), np.uint8), tmp_path / "pano.png")
    assert list(tmp_path.iterdir()) == []
