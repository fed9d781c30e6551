"""View geometry: head orientation, per-eye frusta and the pose and projection conventions of OpenVR and OpenXR.

World frame: right-handed, x right, y up, -z straight ahead (OpenGL, OpenVR and OpenXR tracking space). A
rotation ``R`` maps eye (or head) coordinates to world coordinates; an eye looks down its own -z axis.
Yaw 0 looks at the centre column of the equirect image, positive yaw looks right, positive pitch looks
up — the conventions of ``py360convert.e2p(u_deg=yaw, v_deg=pitch, in_rot_deg=roll)``.

Everything here is plain numpy so that it can be tested without a GL context, SteamVR or an OpenXR runtime.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tangents:
    """Frustum edges of one eye as tangents of the half-angles, y up: ``left < right``, ``bottom < top``."""

    left: float
    right: float
    bottom: float
    top: float

    def as_vec4(self) -> tuple[float, float, float, float]:
        return (self.left, self.right, self.bottom, self.top)


def _rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def view_rotation(yaw_deg: float, pitch_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """World-from-head rotation for a head turned by yaw, pitch and roll.

    Returns
    -------
    (3, 3) float64 array

    Notes
    -----
    :math:`R = R_y(-\\text{yaw})\\,R_x(\\text{pitch})\\,R_z(-\\text{roll})`. It is the rotation of
    ``py360convert.e2p`` (which looks down +z) conjugated by :math:`\\mathrm{diag}(1, 1, -1)`, so the same
    angles show the same part of the panorama; ``roll`` equals e2p's ``in_rot_deg``.
    """
    return _rot_y(-math.radians(yaw_deg)) @ _rot_x(math.radians(pitch_deg)) @ _rot_z(-math.radians(roll_deg))


def yaw_pitch_roll(rotation: np.ndarray) -> tuple[float, float, float]:
    """Inverse of :func:`view_rotation`: ``(yaw_deg, pitch_deg, roll_deg)`` of a world-from-head rotation.

    Yaw is in (-180, 180]; at pitch ±90° yaw is ill-defined and the whole turn is reported as roll.
    """
    r = np.asarray(rotation, dtype=np.float64)
    forward = -r[:, 2]
    yaw = math.degrees(math.atan2(forward[0], -forward[2]))
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, forward[1]))))
    # R_z(-roll) = R_x(-pitch) R_y(yaw) R
    rz = _rot_x(-math.radians(pitch)) @ _rot_y(math.radians(yaw)) @ r
    roll = -math.degrees(math.atan2(rz[1, 0], rz[0, 0]))
    return yaw, pitch, roll


def e2p_tangents(fov_deg: float | tuple[float, float], width: int, height: int) -> Tangents:
    """Frustum of a ``width`` × ``height`` view with the field of view as ``py360convert.e2p`` defines it.

    e2p places the *centres* of the outermost pixels at ±fov/2, so the frustum edges lie half a pixel
    further out: :math:`t_x = \\tan(\\mathrm{fov}_h/2)\\,W/(W-1)`.
    """
    h_fov, v_fov = (fov_deg, fov_deg) if isinstance(fov_deg, (int, float)) else fov_deg
    tx = math.tan(math.radians(h_fov) / 2) * width / max(width - 1, 1)
    ty = math.tan(math.radians(v_fov) / 2) * height / max(height - 1, 1)
    return Tangents(-tx, tx, -ty, ty)


def tangents_from_projection_raw(left: float, right: float, top: float, bottom: float) -> Tangents:
    """Eye frustum from ``IVRSystem::GetProjectionRaw``'s ``(left, right, top, bottom)`` tangents.

    OpenVR measures these tangents with y pointing *down*, so its "top" is the lower edge and its
    "bottom" the upper edge in a y-up frame (ValveSoftware/openvr#110, #816); building the projection
    with them unswapped shows the world upside-down in the vertical offset, which makes people sick.
    """
    return Tangents(left=left, right=right, bottom=top, top=bottom)


def tangents_from_fov(angle_left: float, angle_right: float, angle_up: float, angle_down: float) -> Tangents:
    """Eye frustum from an OpenXR ``XrFovf`` (radians; left and down are negative for a centred view).

    Unlike OpenVR's raw projection, OpenXR's angles are y up, so no edge is swapped; the four angles
    are independent, which keeps the asymmetric frusta of real headsets.
    """
    return Tangents(math.tan(angle_left), math.tan(angle_right), math.tan(angle_down), math.tan(angle_up))


def projection_matrix(tangents: Tangents, near: float, far: float) -> np.ndarray:
    """OpenGL clip-from-eye matrix (depth -1..1) of an off-axis frustum.

    Returns
    -------
    (4, 4) float64 array, row-major (``clip = P @ eye``).
    """
    l, r, b, t = (v * near for v in tangents.as_vec4())
    return np.array(
        [
            [2 * near / (r - l), 0.0, (r + l) / (r - l), 0.0],
            [0.0, 2 * near / (t - b), (t + b) / (t - b), 0.0],
            [0.0, 0.0, -(far + near) / (far - near), -2 * far * near / (far - near)],
            [0.0, 0.0, -1.0, 0.0],
        ]
    )


def pose_matrix(m34: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Rotation and translation of an OpenVR ``HmdMatrix34_t`` (rows of ``[R | t]``).

    Returns
    -------
    rotation : (3, 3) float64 array
    translation : (3,) float64 array
    """
    m = np.asarray(m34, dtype=np.float64).reshape(3, 4)
    return m[:, :3].copy(), m[:, 3].copy()


def eye_pose(head_to_world: Sequence[Sequence[float]], eye_to_head: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """World-from-eye rotation and eye position from the HMD pose and ``GetEyeToHeadTransform``.

    Notes
    -----
    :math:`[R_e | p_e] = [R_h | p_h] \\cdot [R_{eh} | p_{eh}]`, i.e. :math:`R_e = R_h R_{eh}` and
    :math:`p_e = R_h p_{eh} + p_h`. The panorama pass uses only :math:`R_e` (it lies at infinity); the
    rating panel uses both.
    """
    rh, ph = pose_matrix(head_to_world)
    re, pe = pose_matrix(eye_to_head)
    return rh @ re, rh @ pe + ph


def view_matrix(rotation: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Eye-from-world 4×4 matrix of an eye with world-from-eye ``rotation`` at ``position``."""
    view = np.eye(4)
    view[:3, :3] = rotation.T
    view[:3, 3] = -rotation.T @ position
    return view


def pixel_ray(tangents: Tangents, rotation: np.ndarray, x: float, y: float, width: int, height: int) -> np.ndarray:
    """World direction (unit) through pixel ``(x, y)`` of a ``width`` × ``height`` view, y down from the top."""
    s = x / width
    t = 1.0 - y / height
    eye = np.array([tangents.left + s * (tangents.right - tangents.left), tangents.bottom + t * (tangents.top - tangents.bottom), -1.0])
    direction = rotation @ eye
    return direction / np.linalg.norm(direction)
