"""Front face → equirectangular canvas, and back with py360convert.e2p."""

import numpy as np
import pytest

from generator.projection import front_face_canvas, front_face_view, reprojection_error, square_face
from study.errors import StimulusError
from tests.generator.panorama_fixtures import smooth_image


def test_canvas_is_2_to_1_with_the_front_face_in_the_middle_quarter():
    canvas = front_face_canvas(smooth_image(96, 128), height=128, width=256)
    assert canvas.rgb.shape == (128, 256, 3) and canvas.known.shape == (128, 256)
    assert canvas.face.shape == (64, 64, 3)
    columns = np.flatnonzero(canvas.known.any(axis=0))
    assert 256 * 3 / 8 - 1 <= columns.min() and columns.max() <= 256 * 5 / 8
    # Diffusion360's shipped i2p mask covers about 11.6 % of the canvas.
    assert canvas.known.mean() == pytest.approx(0.116, abs=0.01)
    assert (canvas.rgb[~canvas.known] == 0).all()


def test_front_face_reprojects_onto_the_input():
    canvas = front_face_canvas(smooth_image(64, 64), height=128, width=256)
    # Two bilinear resamplings of a smooth image: well under 3 grey levels on average.
    assert reprojection_error(canvas.rgb, canvas.face) < 3.0
    view = front_face_view(canvas.rgb, 64)
    # Orientation: the input's red ramp rises to the right, its green ramp downwards.
    assert view[32, 50, 0] > view[32, 14, 0] and view[50, 32, 1] > view[14, 32, 1]


def test_square_face_keeps_the_centre_of_a_wide_image():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 20:60] = 200
    assert (square_face(image, 40) == 200).all()


@pytest.mark.parametrize("height, width", [(128, 200), (101, 202), (64, 64)])
def test_canvas_sizes_that_are_not_2_to_1_or_divisible_are_refused(height, width):
    with pytest.raises(StimulusError, match="2:1"):
        front_face_canvas(smooth_image(), height=height, width=width)


def test_non_rgb_input_is_refused():
    with pytest.raises(StimulusError, match="uint8"):
        front_face_canvas(np.zeros((32, 32), np.uint8), 64, 128)
