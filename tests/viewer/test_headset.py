"""What both headset backends share, and OpenXR's frustum convention, without a runtime."""

import math
import os

import numpy as np
import pytest

from viewer.backends.headset import PressEdge, laser_ray
from viewer.camera import pixel_ray, tangents_from_fov, view_rotation


def test_an_openxr_fov_keeps_its_asymmetric_edges_y_up():
    # an off-centre eye, as real headsets have: every edge at its own angle
    left, right, up, down = -0.95, 0.80, 0.90, -0.97
    tangents = tangents_from_fov(left, right, up, down)
    assert tangents.as_vec4() == pytest.approx((math.tan(left), math.tan(right), math.tan(down), math.tan(up)))
    # the frustum's corner rays leave at exactly those angles from the view axis
    width, height = 100, 80
    top_left = pixel_ray(tangents, np.eye(3), 0, 0, width, height)
    bottom_right = pixel_ray(tangents, np.eye(3), width, height, width, height)
    assert math.atan2(top_left[0], -top_left[2]) == pytest.approx(left)
    assert math.atan2(top_left[1], -top_left[2]) == pytest.approx(up)
    assert math.atan2(bottom_right[0], -bottom_right[2]) == pytest.approx(right)
    assert math.atan2(bottom_right[1], -bottom_right[2]) == pytest.approx(down)


def test_the_laser_points_down_the_controllers_minus_z_axis():
    rotation = view_rotation(30.0, -20.0, 10.0)
    ray = laser_ray(rotation, np.array([0.2, 1.1, -0.3]))
    np.testing.assert_allclose(ray.direction, rotation @ np.array([0.0, 0.0, -1.0]))
    np.testing.assert_allclose(ray.origin, [0.2, 1.1, -0.3])


def test_a_press_clicks_once_per_hand_and_only_with_a_laser():
    edge = PressEdge()
    ray = laser_ray(np.eye(3), np.zeros(3))
    assert edge.update("right", False, ray) is None
    click = edge.update("right", True, ray)
    assert click is not None and click.kind == "click" and click.ray is ray
    assert edge.update("right", True, ray) is None        # held: no repeat
    assert edge.update("left", True, ray) is not None     # the other hand has its own edge
    assert edge.update("right", False, ray) is None
    assert edge.update("right", True, None) is None       # pressed while the controller is not tracked
    assert edge.update("right", True, ray) is None        # ... and that press is spent


def test_the_loader_s_stderr_is_captured_not_printed(capfd):
    from viewer.backends.headset import captured_stderr

    with captured_stderr() as log:
        os.write(2, b"Error [GENERAL | xrCreateInstance | OpenXR-Loader] : no runtime\n")
    assert "OpenXR-Loader" in log[0]
    assert capfd.readouterr().err == ""
