"""The input image as the front face of a cube map, projected onto an equirectangular canvas.

Stage 2 starts as Diffusion360's image-to-panorama path does: the (square) input becomes face F of a cube map
whose other five faces are empty, and ``py360convert.c2e`` projects the cube onto a 2:1 canvas. The front face
covers 90° × 90° around yaw 0, pitch 0: a quarter of the canvas width in its middle, with bulging top and bottom
edges. Everything outside that footprint is to be completed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from study.errors import StimulusError

#: A canvas pixel is "known" when at least this fraction of its bilinear footprint lies on the front face.
KNOWN_THRESHOLD = 0.999


@dataclass(frozen=True)
class FrontFaceCanvas:
    """The projected input and where it is known.

    Attributes
    ----------
    rgb : (H, W, 3) uint8
        The front face projected to equirectangular; zero outside the known region.
    known : (H, W) bool
        True where the canvas pixel comes wholly from the input.
    face : (S, S, 3) uint8
        The input as it was placed on the cube (centre-cropped to a square, resized to ``S = W // 4``).
    """

    rgb: np.ndarray
    known: np.ndarray
    face: np.ndarray


def centre_square(image: np.ndarray) -> np.ndarray:
    """The centred square of ``image`` (H, W, ...): all a cube face can keep, since it spans 90° both ways."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


def square_face(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop ``image`` (H, W, 3) uint8 to a square and resize it to ``size`` × ``size`` (Lanczos)."""
    from PIL import Image

    crop = centre_square(image)
    if crop.shape[0] == size:
        return np.ascontiguousarray(crop)
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.LANCZOS))


def face_to_equirect(face: np.ndarray, height: int, width: int) -> np.ndarray:
    """Project a square ``face`` (S, S, C) float32 as the front cube face onto an ``height`` × ``width`` equirect.

    ``py360convert.c2e`` with bilinear sampling and empty other faces: zero outside the face's footprint, and
    a partial value along its edge, where the bilinear footprint straddles the face border.
    """
    import py360convert

    empty = np.zeros_like(face, dtype=np.float32)
    faces = [face.astype(np.float32), *([empty] * 5)]  # py360convert's list order: F, R, B, L, U, D
    return py360convert.c2e(faces, height, width, mode="bilinear", cube_format="list")


def front_face_canvas(image: np.ndarray, height: int = 512, width: int = 1024) -> FrontFaceCanvas:
    """Project ``image`` as the front cube face onto an equirectangular canvas of ``height`` × ``width``.

    Parameters
    ----------
    image : (H, W, 3) uint8
        Any RGB image; it is centre-cropped to a square.
    height, width : int
        Canvas size; ``width`` must be ``2 * height`` and a multiple of 4 (the face is ``width // 4`` pixels).

    Returns
    -------
    FrontFaceCanvas

    Raises
    ------
    StimulusError
        If the image is not (H, W, 3) uint8 or the canvas is not 2:1 with a width divisible by 4.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise StimulusError(
            f"input image: expected an (H, W, 3) uint8 RGB array, got shape {image.shape} dtype {image.dtype}; "
            "convert it with PIL's .convert('RGB')"
        )
    if width != 2 * height or width % 4:
        raise StimulusError(
            f"panorama size {width}x{height}: must be 2:1 with a width divisible by 4, e.g. 1024x512"
        )
    size = width // 4
    face = square_face(image, size)
    rgb = face_to_equirect(face, height, width)
    coverage = face_to_equirect(np.ones((size, size, 1), dtype=np.float32), height, width)
    known = coverage[..., 0] >= KNOWN_THRESHOLD
    rgb = np.where(known[..., None], np.clip(np.rint(rgb), 0, 255), 0).astype(np.uint8)
    return FrontFaceCanvas(rgb=rgb, known=known, face=face)


def front_face_view(panorama: np.ndarray, size: int) -> np.ndarray:
    """The front face seen again: ``py360convert.e2p`` at yaw 0, pitch 0, 90° field of view, ``size`` pixels."""
    import py360convert

    view = py360convert.e2p(panorama.astype(np.float32), 90.0, 0.0, 0.0, (size, size), mode="bilinear")
    return np.clip(np.rint(view), 0, 255).astype(np.uint8)


def reprojection_error(panorama: np.ndarray, face: np.ndarray, border: int = 2) -> float:
    """Mean absolute difference (in 0–255 units) between ``face`` and the panorama's re-projected front face.

    ``border`` pixels at each edge of the face are left out: there the bilinear footprint of ``e2p`` reaches past
    the known region into completed content.
    """
    size = face.shape[0]
    view = front_face_view(panorama, size).astype(np.float64)
    inner = slice(border, size - border)
    return float(np.abs(view[inner, inner] - face[inner, inner].astype(np.float64)).mean())
