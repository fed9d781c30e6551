"""View geometry and OpenVR math, without a GL context or SteamVR."""

import math

import numpy as np
import py360convert
import pytest

from viewer.camera import (
    Tangents,
    e2p_tangents,
    eye_pose,
    pixel_ray,
    projection_matrix,
    tangents_from_projection_raw,
    view_matrix,
    view_rotation,
    yaw_pitch_roll,
)


def test_yaw_right_pitch_up_and_roll_follow_e2p():
    forward = np.array([0.0, 0.0, -1.0])
    np.testing.assert_allclose(view_rotation(90, 0) @ forward, [1, 0, 0], atol=1e-12)   # right
    np.testing.assert_allclose(view_rotation(0, 90) @ forward, [0, 1, 0], atol=1e-12)   # up
    np.testing.assert_allclose(view_rotation(180, 0) @ forward, [0, 0, 1], atol=1e-12)  # behind
    # e2p's own rotation (looks down +z, row vectors) equals ours conjugated by diag(1, 1, -1)
    yaw, pitch, roll = 37.0, -21.0, 12.0
    theirs = py360convert.utils.xyzpers(math.radians(60), math.radians(60), -math.radians(yaw), math.radians(pitch),
                                        (3, 3), math.radians(roll))
    flip = np.diag([1.0, 1.0, -1.0])
    ours = pixel_ray(e2p_tangents(60, 3, 3), view_rotation(yaw, pitch, roll), 0.5, 0.5, 3, 3)
    np.testing.assert_allclose(flip @ ours, theirs[0, 0] / np.linalg.norm(theirs[0, 0]), atol=1e-6)


@pytest.mark.parametrize("angles", [(0, 0, 0), (170, -30, 5), (-120, 60, -40), (45, 89, 0), (-179.5, -10, 170)])
def test_yaw_pitch_roll_inverts_view_rotation(angles):
    r = view_rotation(*angles)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(view_rotation(*yaw_pitch_roll(r)), r, atol=1e-9)


def test_e2p_tangents_put_edge_pixel_centres_at_half_the_fov():
    t = e2p_tangents((90, 60), 101, 51)
    # pixel 0's centre (x = 0.5) lies at tan(45°) exactly
    pitch = (t.right - t.left) / 101
    assert t.left + 0.5 * pitch == pytest.approx(-1.0)
    assert t.top - 0.5 * (t.top - t.bottom) / 51 == pytest.approx(math.tan(math.radians(30)))


def test_projection_raw_top_and_bottom_are_swapped():
    # values as a VIVE Pro returns them: "top" negative, "bottom" positive (y measured downwards)
    left, right, top, bottom = -1.39, 1.24, -1.47, 1.45
    t = tangents_from_projection_raw(left, right, top, bottom)
    assert (t.bottom, t.top) == (top, bottom)
    p = projection_matrix(t, 0.1, 10.0)
    # a point on the upper frustum edge (y-up) lands on the top of clip space, the lower edge at the bottom
    for tan_y, ndc_y in ((t.top, 1.0), (t.bottom, -1.0)):
        clip = p @ np.array([0.0, tan_y * 2.0, -2.0, 1.0])
        assert clip[1] / clip[3] == pytest.approx(ndc_y)
    clip = p @ np.array([t.left * 3.0, 0.0, -3.0, 1.0])
    assert clip[0] / clip[3] == pytest.approx(-1.0)
    # depth runs -1 (near) .. 1 (far), OpenGL style
    near = p @ np.array([0, 0, -0.1, 1.0])
    far = p @ np.array([0, 0, -10.0, 1.0])
    assert near[2] / near[3] == pytest.approx(-1.0) and far[2] / far[3] == pytest.approx(1.0)


def test_eye_pose_composes_head_pose_and_eye_offset():
    head_rotation = view_rotation(90, 0)          # looking along +x
    head = np.hstack([head_rotation, [[0.0], [1.7], [0.0]]])
    eye_to_head = np.hstack([np.eye(3), [[-0.032], [0.0], [0.015]]])   # left eye, a little behind
    rotation, position = eye_pose(head.tolist(), eye_to_head.tolist())
    np.testing.assert_allclose(rotation, head_rotation, atol=1e-12)
    # facing +x, the head's left (-x) is world -z and its back (+z) is world -x
    np.testing.assert_allclose(position, head_rotation @ [-0.032, 0.0, 0.015] + [0.0, 1.7, 0.0])
    np.testing.assert_allclose(position, [-0.015, 1.7, -0.032], atol=1e-12)
    view = view_matrix(rotation, position)
    np.testing.assert_allclose(view @ np.append(position, 1.0), [0, 0, 0, 1], atol=1e-12)


def test_hmd_matrix34_rows_are_rotation_then_translation():
    from viewer.camera import pose_matrix

    m = [[0.0, 0.0, 1.0, 0.5], [0.0, 1.0, 0.0, 1.6], [-1.0, 0.0, 0.0, -0.2]]
    rotation, translation = pose_matrix(m)
    np.testing.assert_allclose(translation, [0.5, 1.6, -0.2])
    # this pose turns the head's forward (-z) to world -x: 90° to the left
    np.testing.assert_allclose(rotation @ [0, 0, -1], [-1, 0, 0])
    assert yaw_pitch_roll(rotation)[0] == pytest.approx(-90.0)


def test_pixel_ray_through_the_centre_is_the_view_direction():
    r = view_rotation(-60, 20)
    np.testing.assert_allclose(pixel_ray(Tangents(-1, 1, -1, 1), r, 50, 50, 100, 100), r @ [0, 0, -1], atol=1e-12)
