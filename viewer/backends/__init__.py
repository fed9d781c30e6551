"""Viewer backends: headless (EGL, arrays), desktop (GLFW window) and openvr (SteamVR headset)."""

from viewer.backends.base import BACKENDS, Backend, Capabilities, Frame, FrameInput, InputEvent, Ray, backend_class

__all__ = ["BACKENDS", "Backend", "Capabilities", "Frame", "FrameInput", "InputEvent", "Ray", "backend_class"]
