"""`panostudy view`: look at one panorama in a window, or render one view of it to a PNG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from study.errors import PanostudyError


def view(
    image: Annotated[Path, typer.Argument(help="Equirectangular panorama (2:1, at most 8192x4096).")],
    backend: Annotated[
        str, typer.Option("--backend", help="desktop (window: drag to look, scroll to zoom, Esc to quit) or headless (render --out).")
    ] = "desktop",
    out: Annotated[Optional[Path], typer.Option("--out", help="PNG to write the rendered view to (headless).")] = None,
    yaw: Annotated[float, typer.Option(help="Degrees; 0 = image centre, positive looks right.")] = 0.0,
    pitch: Annotated[float, typer.Option(help="Degrees; positive looks up.")] = 0.0,
    fov: Annotated[float, typer.Option(help="Horizontal field of view in degrees (as py360convert.e2p).")] = 90.0,
    width: Annotated[int, typer.Option(help="View width in pixels.")] = 1024,
    height: Annotated[int, typer.Option(help="View height in pixels.")] = 768,
    downscale: Annotated[bool, typer.Option(help="Shrink images above 8192x4096 instead of refusing them.")] = False,
) -> None:
    """Show IMAGE as the participant would see it."""
    _check(backend, out, yaw, pitch, fov, width, height)
    if backend == "headless":
        _render_to_file(image, out, yaw, pitch, fov, width, height, downscale)
    else:
        _show_in_window(image, yaw, pitch, fov, width, height, downscale)


def _check(backend: str, out: Path | None, yaw: float, pitch: float, fov: float, width: int, height: int) -> None:
    if backend not in ("desktop", "headless"):
        raise PanostudyError(f"--backend {backend!r}: choose desktop or headless (the headset is for 'panostudy session run')")
    if backend == "headless" and out is None:
        raise PanostudyError("--backend headless renders to a file; pass --out view.png")
    if backend == "desktop" and out is not None:
        raise PanostudyError("--out works with --backend headless only; drop it or add --backend headless")
    if not math.isfinite(yaw):
        raise PanostudyError(f"--yaw {yaw:g}: must be a finite number of degrees")
    if not -90.0 <= pitch <= 90.0:
        raise PanostudyError(f"--pitch {pitch:g}: must be within -90..90 degrees")
    if not 1.0 <= fov < 180.0:
        raise PanostudyError(f"--fov {fov:g}: must be within 1..179 degrees")
    if not (2 <= width <= 8192 and 2 <= height <= 8192):
        raise PanostudyError(f"--width/--height {width}x{height}: each must be within 2..8192 pixels")
    if out is not None and out.suffix.lower() != ".png":
        raise PanostudyError(f"--out {out}: write a .png file")


def _render_to_file(image: Path, out: Path, yaw: float, pitch: float, fov: float, width: int, height: int, downscale: bool) -> None:
    from PIL import Image

    from panostudy.cli._console import console
    from viewer.backends.base import Frame
    from viewer.backends.headless import HeadlessBackend
    from viewer.camera import view_rotation

    with HeadlessBackend(width, height, fov_deg=fov, downscale=downscale) as backend:
        texture = backend.renderer.stimuli.get(str(image), block=True)
        pixels = backend.draw(Frame(stimulus=texture, head=view_rotation(yaw, pitch)))[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(out)
    console.print(f"wrote {out} ({width}x{height}, yaw {yaw:g}°, pitch {pitch:g}°, fov {fov:g}°)", soft_wrap=True)


def _show_in_window(image: Path, yaw: float, pitch: float, fov: float, width: int, height: int, downscale: bool) -> None:
    from viewer.backends.base import Frame
    from viewer.backends.desktop import DesktopBackend

    with DesktopBackend(width, height, fov_deg=fov, downscale=downscale, title=f"panostudy view {image.name}") as backend:
        backend.yaw, backend.pitch = yaw, pitch
        texture = backend.renderer.stimuli.get(str(image), block=True)
        while not any(e.kind == "quit" for e in backend.poll_input().events):
            backend.draw(Frame(stimulus=texture))


def register(app: typer.Typer) -> None:
    """Adds ``view`` to the root app."""
    app.command("view")(view)
