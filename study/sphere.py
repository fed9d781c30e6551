"""Directions on the viewing sphere in the project's one convention, and the equirect pixel grid.

The convention is ``py360convert``'s, which the viewer also follows: yaw 0 is the centre column of the
equirect image, positive yaw looks right, positive pitch looks up. Unit vectors have x right, y up and
z towards yaw 0 (a right-handed frame with the viewer looking down +z); only angles between them matter.

Pixel ``(i, j)`` of an ``H × W`` equirect image covers longitude ``((j + 0.5)/W − 0.5)·360°`` and latitude
``(0.5 − (i + 0.5)/H)·180°`` at its centre, exactly like the stimulus image.
"""

from __future__ import annotations

import math

import numpy as np


def unit_vectors(yaw_deg, pitch_deg) -> np.ndarray:
    """Unit vectors ``(..., 3)`` of directions given by yaw and pitch in degrees (broadcast together)."""
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    cos_pitch = np.cos(pitch)
    return np.stack(np.broadcast_arrays(cos_pitch * np.sin(yaw), np.sin(pitch), cos_pitch * np.cos(yaw)), axis=-1)


def yaw_pitch(vectors) -> tuple[np.ndarray, np.ndarray]:
    """``(yaw_deg, pitch_deg)`` of vectors ``(..., 3)`` (need not be unit length); yaw in [−180, 180]."""
    v = np.asarray(vectors, dtype=np.float64)
    yaw = np.degrees(np.arctan2(v[..., 0], v[..., 2]))
    pitch = np.degrees(np.arctan2(v[..., 1], np.hypot(v[..., 0], v[..., 2])))
    return yaw, pitch


def angular_distance_deg(a, b) -> np.ndarray:
    """Angle in degrees between unit vectors ``a`` and ``b`` (``(..., 3)``, broadcast): ``2·asin(|a − b|/2)``.

    The chord form keeps its precision for small angles, where ``acos(a·b)`` loses it.
    """
    chord = np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1)
    return np.degrees(2.0 * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0)))


def mean_direction(vectors, weights=None) -> np.ndarray:
    """The normalised (weighted) mean of unit vectors ``(N, 3)``: the centre of a fixation or a sample cloud."""
    mean = np.average(np.asarray(vectors, dtype=np.float64), axis=0, weights=weights)
    return mean / np.linalg.norm(mean)


def tangent_offset(vectors, right_deg, up_deg) -> np.ndarray:
    """Each direction moved along the great circle by the angle ``√(right² + up²)``, towards right/up.

    ``right`` points along increasing yaw, ``up`` along increasing pitch, in the tangent plane at each
    direction; the result is exactly that angle away from where it started (not just approximately, as
    adding to yaw and pitch would be, which shrinks with cos(pitch)).
    """
    v = np.asarray(vectors, dtype=np.float64)
    yaw = np.arctan2(v[..., 0], v[..., 2])
    pitch = np.arcsin(np.clip(v[..., 1], -1.0, 1.0))
    east = np.stack([np.cos(yaw), np.zeros_like(yaw), -np.sin(yaw)], axis=-1)
    north = np.stack([-np.sin(pitch) * np.sin(yaw), np.cos(pitch), -np.sin(pitch) * np.cos(yaw)], axis=-1)
    right, up = np.broadcast_arrays(np.radians(right_deg), np.radians(up_deg))
    angle = np.hypot(right, up)
    with np.errstate(invalid="ignore", divide="ignore"):
        direction = (right[..., None] * east + up[..., None] * north) / angle[..., None]
    direction = np.where(angle[..., None] > 0, direction, 0.0)
    return np.cos(angle)[..., None] * v + np.sin(angle)[..., None] * direction


def head_rotation(yaw_deg: float, pitch_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """Stimulus-from-head rotation ``(3, 3)`` for a head turned by yaw, pitch and roll (head looks down +z).

    :math:`R = R_y(\\text{yaw})\\,R_x(-\\text{pitch})\\,R_z(-\\text{roll})`: the viewer's rotation
    (``viewer.camera.view_rotation``, which looks down −z) in this module's +z-forward frame, so the same
    angles frame the same part of the panorama and roll equals ``py360convert.e2p``'s ``in_rot_deg``.
    """
    y, p, r = math.radians(yaw_deg), math.radians(-pitch_deg), math.radians(-roll_deg)
    rot_y = np.array([[math.cos(y), 0.0, math.sin(y)], [0.0, 1.0, 0.0], [-math.sin(y), 0.0, math.cos(y)]])
    rot_x = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(p), -math.sin(p)], [0.0, math.sin(p), math.cos(p)]])
    rot_z = np.array([[math.cos(r), -math.sin(r), 0.0], [math.sin(r), math.cos(r), 0.0], [0.0, 0.0, 1.0]])
    return rot_y @ rot_x @ rot_z


def pixel_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(longitude_deg (W,), latitude_deg (H,))`` of the pixel centres of an ``H × W`` equirect image."""
    longitude = ((np.arange(width) + 0.5) / width - 0.5) * 360.0
    latitude = (0.5 - (np.arange(height) + 0.5) / height) * 180.0
    return longitude, latitude


def pixel_solid_angles(height: int, width: int) -> np.ndarray:
    """Solid angle (sr) of one pixel of each row, ``(H,)``; ``width · sum`` is exactly 4π.

    A row between latitudes φ₁ < φ₂ covers ``Δλ·(sin φ₂ − sin φ₁)`` per pixel, ≈ ``Δλ·Δφ·cos φ``: every
    distribution over an equirect image must weight its rows by this.
    """
    edges = np.radians(90.0 - np.arange(height + 1) * 180.0 / height)
    return (2.0 * math.pi / width) * (np.sin(edges[:-1]) - np.sin(edges[1:]))


def pixel_of(yaw_deg, pitch_deg, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(row, column)`` integer indices of the pixels holding the given directions (yaw wraps)."""
    column = np.floor((np.asarray(yaw_deg, dtype=np.float64) / 360.0 + 0.5) * width).astype(np.int64) % width
    row = np.floor((0.5 - np.asarray(pitch_deg, dtype=np.float64) / 180.0) * height).astype(np.int64)
    return np.clip(row, 0, height - 1), column


def wrap_yaw(yaw_deg):
    """Yaw wrapped into [−180, 180)."""
    return (np.asarray(yaw_deg, dtype=np.float64) + 180.0) % 360.0 - 180.0
