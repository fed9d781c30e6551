"""Super-resolution of equirectangular panoramas that keeps the wrap-around seam seamless.

Real-ESRGAN weights (``RealESRGAN_x2plus.pth`` / ``RealESRGAN_x4plus.pth``, ``.pth`` or ``.safetensors``, either
key layout) are loaded with spandrel, which detects the RRDBNet architecture and its scale from the state dict; the
``realesrgan`` / ``basicsr`` packages are not used (they import a torchvision module removed in 0.17).

The image is padded horizontally with its own wrapped columns (vertically by edge replication) before the network
sees it, and cut into overlapping tiles, so every output pixel near the seam is computed from the same neighbours
it has on the sphere: super-resolution commutes with rotating the panorama about the vertical axis. The final
resize to the exact target size (default 4096×2048) wraps the same way.

Diffusion360's optional ControlNet-tile refinement (``sr-base`` / ``sr-control``) follows in ``generator.tile_refine``.
"""

from __future__ import annotations

from fractions import Fraction
from math import ceil
from pathlib import Path

import numpy as np

from study.errors import PanostudyError, StimulusError

DEFAULT_SIZE = (4096, 2048)
LARGE_SIZE = (8192, 4096)


def load_sr_model(path: str | Path, device: str = "cpu", fp16: bool = False):
    """Load a Real-ESRGAN (or any spandrel-supported single-image SR) weight file.

    Returns
    -------
    spandrel.ImageModelDescriptor
        In eval mode on ``device``; ``.scale`` is the upscaling factor.

    Raises
    ------
    PanostudyError
        If the file is missing or spandrel does not recognise it as an image-to-image model.
    """
    import torch
    from spandrel import ImageModelDescriptor, ModelLoader

    path = Path(path)
    if not path.is_file():
        raise PanostudyError(f"--sr-weights {path}: no such file; pass RealESRGAN_x4plus.pth or RealESRGAN_x2plus.pth")
    try:
        descriptor = ModelLoader(device=torch.device(device)).load_from_file(path)
    except Exception as exc:  # spandrel raises several unrelated types for files it does not understand
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PanostudyError(
            f"--sr-weights {path}: spandrel cannot load it ({type(exc).__name__}: {reason}); "
            "pass a Real-ESRGAN .pth or .safetensors file"
        ) from None
    if not isinstance(descriptor, ImageModelDescriptor):
        raise PanostudyError(
            f"--sr-weights {path}: is a {type(descriptor).__name__}, not an image super-resolution model"
        )
    if fp16:
        descriptor.half()
    return descriptor.eval()


def _wrap_pad(tensor, pad: int):
    """(1, C, H, W) → (1, C, H + 2·pad, W + 2·pad): wrapped columns left and right, replicated rows top and bottom."""
    import torch
    import torch.nn.functional as F

    wide = torch.cat([tensor[..., -pad:], tensor, tensor[..., :pad]], dim=-1)
    return F.pad(wide, (0, 0, pad, pad), mode="replicate")


def super_resolve(image: np.ndarray, model, tile: int | None = 256, overlap: int = 16, progress=None) -> np.ndarray:
    """Upscale an equirectangular image by ``model.scale`` with wrap padding and overlapping tiles.

    Parameters
    ----------
    image : (H, W, 3) uint8
    model : spandrel.ImageModelDescriptor
        From :func:`load_sr_model`.
    tile : int or None
        Core tile size in input pixels; None runs the whole image at once (more memory).
    overlap : int
        Context added on every side of each tile (and the wrap/edge padding of the whole image), in input pixels;
        output pixels inside it are discarded. Larger values make tiled and untiled results agree more closely.
    progress : callable, optional
        Called as ``progress(done, total)`` before the first and after every tile.

    Returns
    -------
    (scale·H, scale·W, 3) uint8
    """
    import torch

    if overlap < 1 or overlap > image.shape[1]:
        raise PanostudyError(f"overlap={overlap}: must be between 1 and the image width {image.shape[1]}")
    if tile is not None and tile < 8:
        raise PanostudyError(f"tile={tile}: must be at least 8 pixels (or None for no tiling)")
    scale = model.scale
    parameter = next(model.model.parameters())
    source = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    padded = _wrap_pad(source, overlap).to(parameter.device, parameter.dtype)
    height, width = image.shape[:2]
    result = torch.empty((1, 3, height * scale, width * scale), dtype=torch.float32)
    step_y = tile or height
    step_x = tile or width
    total = ceil(height / step_y) * ceil(width / step_x)
    done = 0
    if progress is not None:
        progress(0, total)
    with torch.no_grad():
        for top in range(0, height, step_y):
            bottom = min(top + step_y, height)
            for left in range(0, width, step_x):
                right = min(left + step_x, width)
                # In padded coordinates the core starts at +overlap; the window adds overlap on each side.
                window = padded[..., top : bottom + 2 * overlap, left : right + 2 * overlap]
                upscaled = model(window).float().cpu()
                margin = overlap * scale
                core = upscaled[..., margin : margin + (bottom - top) * scale, margin : margin + (right - left) * scale]
                result[..., top * scale : bottom * scale, left * scale : right * scale] = core
                done += 1
                if progress is not None:
                    progress(done, total)
    return (result[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def resize_equirect(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an equirectangular image to exactly ``width`` × ``height`` (bicubic, antialiased), wrapping at the seam.

    The image is padded with ``p`` wrapped columns on each side, where ``p`` is chosen so that the padding maps to
    a whole number of output columns; the padded image is resized at the exact ratio and cropped back.
    """
    import torch
    import torch.nn.functional as F

    source_height, source_width = image.shape[:2]
    if (source_width, source_height) == (width, height):
        return image.copy()
    ratio = Fraction(width, source_width)
    pad = ratio.denominator * ceil(4 / ratio.denominator)
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    wide = torch.cat([tensor[..., -pad:], tensor, tensor[..., :pad]], dim=-1)
    out_pad = int(pad * ratio)
    resized = F.interpolate(wide, size=(height, width + 2 * out_pad), mode="bicubic", align_corners=False, antialias=True)
    cropped = resized[..., out_pad : out_pad + width]
    return cropped[0].clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def parse_size(text: str, option: str = "--size") -> tuple[int, int]:
    """``"4096x2048"`` → ``(4096, 2048)``; must be 2:1 and at most 8192×4096. ``option`` names it in errors."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise PanostudyError(f"{option} {text!r}: expected WIDTHxHEIGHT such as 4096x2048 or 8192x4096") from None
    if width != 2 * height or height < 16 or width > LARGE_SIZE[0]:
        raise PanostudyError(f"{option} {text}: must be 2:1 and at most 8192x4096, e.g. 4096x2048")
    return width, height


def upscale_panorama(
    image: np.ndarray,
    model=None,
    size: tuple[int, int] = DEFAULT_SIZE,
    tile: int | None = 256,
    overlap: int = 16,
    progress=None,
) -> np.ndarray:
    """Super-resolve (when a model is given; ``progress(done, total)`` per tile) and resize to exactly ``size``.

    Raises
    ------
    StimulusError
        If the input or the target is not 2:1.
    """
    width, height = size
    if width != 2 * height:
        raise StimulusError(f"target size {width}x{height}: must be 2:1, e.g. 4096x2048")
    if image.ndim != 3 or image.shape[1] != 2 * image.shape[0]:
        raise StimulusError(f"panorama of shape {image.shape}: must be 2:1 (H, 2H, 3) to be upscaled")
    if model is not None:
        image = super_resolve(image, model, tile=tile, overlap=overlap, progress=progress)
    return resize_equirect(image, width, height)
