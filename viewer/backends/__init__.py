"""Viewer backends: headless (EGL, arrays), desktop (GLFW window), openvr (SteamVR) and openxr (any OpenXR runtime)."""

from viewer.backends.base import (
    BACKENDS,
    Backend,
    Capabilities,
    Frame,
    FrameInput,
    HeadSample,
    InputEvent,
    Ray,
    backend_class,
)

__all__ = ["BACKENDS", "Backend", "Capabilities", "Frame", "FrameInput", "HeadSample", "InputEvent", "Ray", "backend_class"]
