"""Run by test_desktop.py in its own process with DISPLAY set: opens the desktop backend, checks the
drawn view against e2p and the key mapping, prints "ok". (An X server going away kills the process that
talked to it, so this stays out of the pytest process.)"""

import sys

import glfw
import numpy as np
import py360convert
from PIL import Image

from viewer.backends.base import Frame
from viewer.backends.desktop import DesktopBackend
from viewer.camera import view_rotation
from viewer.renderer import EyeView


def main(path: str) -> None:
    pixels = np.asarray(Image.open(path))
    reason = DesktopBackend.why_not()
    if reason is not None:
        print(f"skip: {reason}")
        return
    with DesktopBackend(160, 120, fov_deg=80) as backend:
        texture = backend.renderer.stimuli.get(path, block=True)
        backend.yaw, backend.pitch = 25.0, -10.0
        backend.draw(Frame(stimulus=texture))
        # draw once more without swapping, so the back buffer holds the view
        screen = backend.ctx.detect_framebuffer()
        eye = EyeView(backend._tangents(), view_rotation(backend.yaw, backend.pitch), np.zeros(3))
        backend.renderer.draw_eye(screen, eye, stimulus=texture)
        w, h = screen.size
        view = np.frombuffer(screen.read(components=3, alignment=1), np.uint8).reshape(h, w, 3)[::-1]
        # the desktop frustum spans the window edges, e2p's the centres of the edge pixels
        tx = np.tan(np.radians(40))
        h_fov = 2 * np.degrees(np.arctan(tx * (w - 1) / w))
        v_fov = 2 * np.degrees(np.arctan(tx * h / w * (h - 1) / h))
        reference = py360convert.e2p(pixels, (h_fov, v_fov), 25.0, -10.0, (h, w))
        error = np.abs(view.astype(float) - reference).mean()
        assert error <= 2.0, f"mean abs error {error:.2f} vs e2p"

        for key in (glfw.KEY_4, glfw.KEY_KP_2, glfw.KEY_RIGHT, glfw.KEY_ENTER, glfw.KEY_ESCAPE):
            backend._on_key(backend.window, key, 0, glfw.PRESS, 0)
        backend._on_key(backend.window, glfw.KEY_5, 0, glfw.RELEASE, 0)
        events = [(e.kind, e.key) for e in backend.poll_input().events]
        assert events == [("key", "4"), ("key", "2"), ("key", "right"), ("key", "enter"), ("key", "escape")], events
        backend._on_scroll(backend.window, 0, 100)
        assert backend.fov_deg == 30.0, backend.fov_deg
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1])
