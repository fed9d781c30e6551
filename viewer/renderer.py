"""The backend-agnostic renderer: equirect panorama, fade to grey and the rating panel for one eye.

A backend owns the GL context and the eye framebuffers; :class:`Renderer` owns everything drawn into
them. Per eye it draws one full-screen triangle whose fragment shader turns the pixel's view direction
into equirect (u, v) (monoscopic: the panorama lies at infinity, so eye translation is ignored), then
the panel quad, if any, as a real object in the world.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np

from study.errors import StimulusError
from study.stimuli import MAX_WIDTH, NEUTRAL_GREY_SRGB
from viewer.camera import Tangents, projection_matrix, view_matrix, view_rotation
from viewer.textures import (
    GL_SRGB8_ALPHA8,
    DecodedStimulus,
    SpreadUpload,
    StimulusLoader,
    allocate_stimulus_texture,
)

#: sRGB code of the neutral grey shown between stimuli and behind the panel (and behind transparent pixels).
GREY_SRGB = NEUTRAL_GREY_SRGB
#: Angular radii of a validation target: its dark disc and its light centre (degrees).
TARGET_RADII_DEG = (0.6, 0.15)


def srgb_to_linear(code: float) -> float:
    """Linear light of an 8-bit sRGB code (IEC 61966-2-1)."""
    c = code / 255.0
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def finish(ctx) -> None:
    """Waits for the GL to finish, letting other Python threads run meanwhile.

    moderngl's ``ctx.finish()`` holds Python's interpreter lock while it waits; on a software renderer
    that wait is most of a frame, and the pose-sampling thread could not take a sample on time. PyOpenGL
    calls ``glFinish`` through ctypes, which releases the lock.
    """
    try:
        from OpenGL import GL
    except ImportError:
        ctx.finish()
        return
    GL.glFinish()


def load_shader(name: str) -> str:
    """Source of ``viewer/shaders/<name>`` with ``//#include <file>`` lines replaced by that file."""
    folder = resources.files("viewer") / "shaders"
    lines = []
    for line in (folder / name).read_text(encoding="utf-8").splitlines():
        if line.startswith("//#include "):
            lines.append((folder / line.split(maxsplit=1)[1].strip()).read_text(encoding="utf-8"))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PanelQuad:
    """Where the panel hangs in the world and what it shows.

    ``image`` is ``(H, W, 4) uint8`` sRGB; ``version`` changes whenever ``image`` does, so the texture is
    uploaded only then.
    """

    center: np.ndarray
    half_right: np.ndarray
    half_up: np.ndarray
    image: np.ndarray
    version: int


@dataclass(frozen=True)
class EyeView:
    """One eye: its frustum, world-from-eye rotation and world position (metres)."""

    tangents: Tangents
    rotation: np.ndarray
    position: np.ndarray


class StimulusTextures:
    """Stimulus textures by path, filled in the background and uploaded a strip per frame.

    Parameters
    ----------
    ctx : moderngl.Context
    loader : StimulusLoader
    slots : int
        Textures kept per image size: the one on screen plus the ones being prepared.
    """

    def __init__(self, ctx, loader: StimulusLoader, *, slots: int = 2):
        self._ctx = ctx
        self.loader = loader
        self._slots = slots
        self._textures: list[list] = []   # [path | None, texture, complete]
        self._upload: SpreadUpload | None = None
        self._upload_path: str | None = None
        self._wanted: list[str] = []
        self._failed: dict[str, StimulusError] = {}
        self.on_screen: str | None = None

    @property
    def uploading(self) -> str | None:
        """The stimulus whose texture is being filled, strip by strip, if any."""
        return self._upload_path

    def want(self, paths: list[str]) -> None:
        """Sets the stimuli to prepare, most urgent first; they decode at once and upload in
        :meth:`update` as frames go by. Textures of stimuli no longer wanted may be reused."""
        self._wanted = list(dict.fromkeys(paths))
        for path in self._wanted:
            if not self._complete(path) and path not in self._failed:
                self.loader.request(path)

    def _slot_for(self, size: tuple[int, int], path: str):
        for slot in self._textures:
            if slot[0] == path:
                return slot
        rank = self._wanted.index(path) if path in self._wanted else len(self._wanted)
        busy = {self.on_screen, self._upload_path} - {None}

        def expendability(slot) -> tuple[int, int]:
            # an empty slot first, then one no longer wanted, then the least urgent of the rest
            if slot[0] is None:
                return (0, 0)
            if slot[0] not in self._wanted:
                return (1, 0)
            return (2, -self._wanted.index(slot[0]))

        reusable = [
            slot for slot in self._textures
            if slot[1].size == size and slot[0] not in busy and expendability(slot) < (2, -rank)
        ]
        if reusable:
            return min(reusable, key=expendability)
        if sum(s[1].size == size for s in self._textures) >= self._slots:
            return None
        slot = [None, allocate_stimulus_texture(self._ctx, size), False]
        self._textures.append(slot)
        return slot

    def reserve(self, size: tuple[int, int]) -> None:
        """Allocates every texture slot of ``size`` now (slow once), instead of at the first switch."""
        while len([s for s in self._textures if s[1].size == size]) < self._slots:
            self._textures.append([None, allocate_stimulus_texture(self._ctx, size), False])

    def update(self) -> None:
        """One frame's share of work: continue the running upload or start the next finished decode."""
        if self._upload is None:
            for path in self._wanted:
                if self._complete(path) or path in self._failed:
                    continue
                try:
                    decoded = self.loader.ready(path)
                except StimulusError as error:
                    # raised by get() when this stimulus is due, not in the frames of an earlier one
                    self._failed[path] = error
                    continue
                if decoded is None:
                    break
                slot = self._slot_for(decoded.size, path)
                if slot is None:
                    break
                slot[0], slot[2] = path, False
                self._upload, self._upload_path = SpreadUpload(self._ctx, slot[1], decoded), path
                break
        if self._upload is not None and self._upload.step():
            for slot in self._textures:
                if slot[0] == self._upload_path:
                    slot[2] = True
            self.loader.forget(self._upload_path)
            self._upload = self._upload_path = None

    def _complete(self, path: str) -> bool:
        return any(s[0] == path and s[2] for s in self._textures)

    def hurry(self, path: str) -> None:
        """``path`` is due and not ready: its decode runs at normal priority (see StimulusLoader.hurry)."""
        self.loader.hurry(path)

    def get(self, path: str, *, block: bool = False):
        """The finished texture of ``path``, or None while it is still being prepared.

        With ``block`` it decodes and uploads at once, stalling the caller (the no-preload baseline and
        one-off views).

        Raises
        ------
        StimulusError
            If the stimulus could not be decoded (also when the failure happened during its preload).
        """
        if path in self._failed:
            raise self._failed.pop(path)
        if not self._complete(path) and block:
            if self._upload is not None and self._upload_path == path:
                while not self._upload.step():
                    pass
                self.update()
            else:
                decoded: DecodedStimulus = self.loader.wait(path)
                slot = self._slot_for(decoded.size, path)
                if slot is None:
                    slot = [None, allocate_stimulus_texture(self._ctx, decoded.size), False]
                    self._textures.append(slot)
                upload = SpreadUpload(self._ctx, slot[1], decoded, budget=1 << 62)
                upload.step()
                slot[0], slot[2] = path, True
                self.loader.forget(path)
        for slot in self._textures:
            if slot[0] == path and slot[2]:
                return slot[1]
        return None

    def show(self, path: str | None) -> None:
        """Marks ``path`` as on screen: its texture is not reused until another one is shown."""
        self.on_screen = path

    def release(self) -> None:
        if self._upload is not None:
            self._upload.release()
        for slot in self._textures:
            slot[1].release()
        self._textures.clear()


class Renderer:
    """Draws eyes into the framebuffers of whatever backend created ``ctx``.

    Parameters
    ----------
    ctx : moderngl.Context
        A current OpenGL ≥ 3.3 core context.
    downscale : bool
        Shrink stimuli wider than the texture limit instead of refusing them.
    """

    def __init__(self, ctx, *, downscale: bool = False):
        self.ctx = ctx
        vert = load_shader("fullscreen.vert")
        self._equirect = ctx.program(vertex_shader=vert, fragment_shader=load_shader("equirect.frag"))
        self._grey = ctx.program(vertex_shader=vert, fragment_shader=load_shader("grey.frag"))
        self._panel = ctx.program(vertex_shader=load_shader("panel.vert"), fragment_shader=load_shader("panel.frag"))
        self._target = ctx.program(vertex_shader=vert, fragment_shader=load_shader("target.frag"))
        self._empty = ctx.vertex_array(self._equirect, [])
        self._grey_vao = ctx.vertex_array(self._grey, [])
        self._target_vao = ctx.vertex_array(self._target, [])
        self._panel_vao = ctx.vertex_array(self._panel, [])
        self.max_texture_width = min(MAX_WIDTH, ctx.info["GL_MAX_TEXTURE_SIZE"])
        self.stimuli = StimulusTextures(ctx, StimulusLoader(max_width=self.max_texture_width, downscale=downscale))
        self.grey_linear = srgb_to_linear(GREY_SRGB)
        self._panel_texture = None
        self._panel_version: int | None = None
        self.panorama_yaw_deg = 0.0

    def turn_panorama(self, yaw_deg: float) -> None:
        """Turns the panorama about the vertical axis: the stimulus direction at yaw ``θ`` then appears at
        world yaw ``θ - yaw_deg``. A headset session uses it so that every stimulus starts with its start
        yaw straight ahead of the participant, wherever they face; the panel is not turned."""
        self.panorama_yaw_deg = float(yaw_deg)
        self._panorama_rotation = view_rotation(yaw_deg, 0.0)

    def draw_eye(self, fbo, eye: EyeView, *, stimulus=None, fade: float = 0.0, panel: PanelQuad | None = None,
                 target: np.ndarray | None = None) -> None:
        """Draws one eye into ``fbo`` (its full viewport).

        Parameters
        ----------
        fbo : moderngl.Framebuffer
        eye : EyeView
        stimulus : moderngl.Texture or None
            A texture from :attr:`stimuli`; None draws the neutral grey only.
        fade : float
            0 shows the panorama, 1 only the grey; mixed in linear light.
        panel : PanelQuad or None
        target : (3,) array or None
            A validation target on the grey instead of a stimulus: its unit direction in the world frame.
        """
        import moderngl

        fbo.use()
        self.ctx.disable(moderngl.DEPTH_TEST | moderngl.BLEND | moderngl.CULL_FACE)
        grey = (self.grey_linear,) * 3
        if target is not None:
            program = self._target
            program["u_rotation"].write(np.ascontiguousarray(np.asarray(eye.rotation).T, dtype="f4"))
            program["u_tangents"].value = eye.tangents.as_vec4()
            program["u_target"].value = tuple(map(float, np.asarray(target) / np.linalg.norm(target)))
            program["u_cos_radii"].value = tuple(float(np.cos(np.radians(r))) for r in TARGET_RADII_DEG)
            program["u_grey"].value = grey
            self._target_vao.render(moderngl.TRIANGLES, vertices=3)
        elif stimulus is None or fade >= 1.0:
            self._grey["u_grey"].value = grey
            self._grey_vao.render(moderngl.TRIANGLES, vertices=3)
        else:
            stimulus.use(0)
            program = self._equirect
            program["u_equirect"].value = 0
            rotation = eye.rotation if not self.panorama_yaw_deg else self._panorama_rotation @ eye.rotation
            program["u_rotation"].write(np.ascontiguousarray(rotation.T, dtype="f4"))
            program["u_tangents"].value = eye.tangents.as_vec4()
            program["u_fade"].value = float(max(0.0, fade))
            program["u_grey"].value = grey
            self._empty.render(moderngl.TRIANGLES, vertices=3)
        if panel is not None:
            self._draw_panel(eye, panel)

    def _draw_panel(self, eye: EyeView, panel: PanelQuad) -> None:
        import moderngl

        if self._panel_version != panel.version:
            h, w = panel.image.shape[:2]
            if self._panel_texture is None or self._panel_texture.size != (w, h):
                if self._panel_texture is not None:
                    self._panel_texture.release()
                self._panel_texture = self.ctx.texture((w, h), 4, internal_format=GL_SRGB8_ALPHA8)
                self._panel_texture.filter = (moderngl.LINEAR, moderngl.LINEAR)
            self._panel_texture.write(np.ascontiguousarray(panel.image))
            self._panel_version = panel.version
        clip = projection_matrix(eye.tangents, 0.05, 100.0) @ view_matrix(eye.rotation, eye.position)
        program = self._panel
        self._panel_texture.use(0)
        program["u_panel"].value = 0
        # moderngl matrices are column-major
        program["u_clip_from_world"].write(np.ascontiguousarray(clip.T, dtype="f4"))
        program["u_center"].value = tuple(map(float, panel.center))
        program["u_half_right"].value = tuple(map(float, panel.half_right))
        program["u_half_up"].value = tuple(map(float, panel.half_up))
        self._panel_vao.render(moderngl.TRIANGLE_STRIP, vertices=4)

    def release(self) -> None:
        """Frees every GL object the renderer made and stops the decode thread."""
        self.stimuli.release()
        self.stimuli.loader.close()
        if self._panel_texture is not None:
            self._panel_texture.release()
        for obj in (self._empty, self._grey_vao, self._panel_vao, self._target_vao, self._equirect, self._grey, self._panel,
                    self._target):
            obj.release()
