"""Optional ControlNet-tile refinement of an upscaled panorama (Diffusion360's ``sr-base`` / ``sr-control`` step).

After Real-ESRGAN (:mod:`generator.upscale`) the panorama is sharp but can look plasticky; Diffusion360 re-adds
detail with an img2img pass of an SD 1.5-architecture base model (``sr-base``) steered by a tile ControlNet
(``sr-control``, a 3-channel RGB control) that is conditioned on the upscaled image itself. This file does that
pass at any panorama size:

1. The image is VAE-encoded with its own wrapped columns on both sides (so the encoder's zero padding never
   meets the ±180° seam) and noised to ``strength``: with T denoising steps, the last ``⌊T · strength⌋``
   timesteps of the schedule are run, starting from ``z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε``.
2. Every step predicts the noise MultiDiffusion-style on overlapping latent tiles and averages the predictions
   with linear (pyramid) weights normalised to sum to 1 at every latent cell,

   .. math:: \\hat ε(x) = \\sum_k w_k(x)\\, ε_θ(z[T_k], c[T_k])(x), \\qquad \\sum_k w_k(x) = 1,

   before one scheduler step on the whole latent. Tiles are *periodic* in x: a tile that runs past the right
   edge continues at column 0 (the latent is wrap-padded), so the seam is an interior column of some tile and is
   denoised like any other column — no seam can form.
3. The latent is decoded with the completion pipeline's wrap-aware decoder (Eq. 4 cross-fade of the wrapped
   continuation at the left edge, :meth:`generator.panorama_pipeline.PanoramaCompletionPipeline.decode`).

Strengths below ``1 / steps`` run no step; the pass is then the identity and returns the input unchanged.
The pipeline shares the completion pipeline's components, prompt encoding and decoding by subclassing it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from math import ceil

import numpy as np
import torch

from generator.mask_guided_pipeline import TINY_MODEL
from generator.panorama_pipeline import (
    SCHEDULERS,
    PanoramaCompletionPipeline,
    build_controlnet_pipeline,
    step_options,
    use_scheduler,
)
from generator.upscale import _wrap_pad
from study.errors import PanostudyError, StimulusError


@dataclass(frozen=True)
class TileRefineSettings:
    """Every parameter of one refinement pass (recorded in the manifest as is).

    Attributes
    ----------
    strength : float
        In [0, 1]: how far the image is noised before denoising (0 keeps it, 1 regenerates it).
    steps : int
        Steps of the full schedule; ``⌊steps · strength⌋`` of them are run.
    guidance_scale : float
        Classifier-free guidance; ≤ 1 runs the conditional branch only.
    controlnet_scale : float
        Tile ControlNet conditioning scale.
    tile_size : int or None
        Tile side in pixels (Diffusion360: 768); None makes each tile the whole panorama (two of them across the
        width, half a turn apart, so the seam lies inside one).
    tile_overlap : int
        Minimum overlap of neighbouring tiles in pixels; > 0 (clipped to half a tile on small panoramas).
    wrap_decode : bool
        Wrap-aware VAE decoding (see :meth:`PanoramaCompletionPipeline.decode`).
    decode_wrap : int or None
        Latent columns wrapped for decoding; None gives a quarter of the latent width.
    negative_prompt : str
        The unconditional branch's prompt.
    scheduler : str
        A key of :data:`generator.panorama_pipeline.SCHEDULERS` (Diffusion360: ``unipc``).
    weighted_prompt : bool
        Encode ``(...)`` emphasis (:mod:`generator.prompt_weights`), as Diffusion360 does.
    """

    strength: float = 0.3
    steps: int = 20
    guidance_scale: float = 7.5
    controlnet_scale: float = 1.0
    tile_size: int | None = 768
    tile_overlap: int = 256
    wrap_decode: bool = True
    decode_wrap: int | None = None
    negative_prompt: str = "blurry, lowres, distorted, text, watermark"
    scheduler: str = "ddim"
    weighted_prompt: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RefinementResult:
    """The refined panorama, (H, W, 3) uint8, and seconds per stage (``encode``, ``denoise``, ``decode``)."""

    image: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TileWindow:
    """One latent tile: rows ``top : top + height``, columns ``(left + arange(width)) mod W`` (periodic in x)."""

    top: int
    height: int
    left: int
    width: int

    def columns(self, canvas_width: int, scale: int = 1) -> torch.Tensor:
        """The tile's column indices on a canvas ``scale`` times the latent's size (pixels: the VAE factor)."""
        return (self.left * scale + torch.arange(self.width * scale)) % (canvas_width * scale)


def tile_windows(height: int, width: int, tile: int | None, overlap: int) -> list[TileWindow]:
    """Overlapping latent tiles covering an (height, width) latent, periodic in x.

    Across the width ``n = ⌈W / (t − o)⌉`` tiles of width ``t = min(tile, W)`` start at ``round(k W / n)``, so
    neighbours (the last and the first included, across the seam) overlap by at least ``o``; down the height
    tiles of ``min(tile, H)`` rows are spread evenly from the top row to the bottom row.
    """
    tile_height = min(tile or height, height)
    tile_width = min(tile or width, width)
    rows = 1 if tile_height == height else ceil((height - overlap) / (tile_height - overlap))
    tops = np.rint(np.linspace(0, height - tile_height, rows)).astype(int) if rows > 1 else [0]
    across = ceil(width / (tile_width - overlap))
    lefts = [round(k * width / across) for k in range(across)]
    return [TileWindow(int(top), tile_height, left, tile_width) for top in tops for left in lefts]


def tile_weights(windows: list[TileWindow], height: int, width: int, overlap: int) -> list[torch.Tensor]:
    """Linear blending weights, (1, 1, h_k, w_k) per tile, that sum to 1 at every latent cell.

    Notes
    -----
    A tile's raw weight is the outer product of ramps ``r(i) = min(1, (i + 1)/(o + 1), (n − i)/(o + 1))``
    over its rows and columns (n its height or width), so it fades out linearly over the overlap; the weights
    are then divided by their sum over all tiles at each cell (on the wrapped canvas).
    """

    def ramp(length: int) -> torch.Tensor:
        index = torch.arange(length, dtype=torch.float64)
        return torch.clamp(torch.minimum((index + 1) / (overlap + 1), (length - index) / (overlap + 1)), max=1.0)

    raw = [ramp(window.height)[:, None] * ramp(window.width)[None, :] for window in windows]
    total = torch.zeros(height, width, dtype=torch.float64)
    for window, weight in zip(windows, raw):
        total[window.top : window.top + window.height].index_add_(1, window.columns(width), weight)
    return [
        (weight / total[window.top : window.top + window.height][:, window.columns(width)]).float()[None, None]
        for window, weight in zip(windows, raw)
    ]


class TileRefinementPipeline(PanoramaCompletionPipeline):
    """Tile-ControlNet img2img refinement of a panorama (see the module docstring); 3-channel RGB control."""

    def check_inputs(self, height: int, width: int, settings: TileRefineSettings) -> None:
        """Raise a one-line :class:`PanostudyError` for an unusable size or setting, before any work is done."""
        multiple = self.size_multiple()
        if width != 2 * height or height % multiple:
            raise StimulusError(
                f"refinement size {width}x{height}: must be 2:1 with the height a multiple of {multiple}, "
                f"e.g. {32 * multiple}x{16 * multiple}"
            )
        if self.conditioning_channels != 3:
            raise PanostudyError(
                f"--sr-control: the ControlNet takes {self.conditioning_channels} conditioning channels; a tile "
                "ControlNet (3-channel RGB, e.g. Diffusion360's sr-control) is needed"
            )
        if not 0.0 <= settings.strength <= 1.0:
            raise PanostudyError(f"--refine-strength {settings.strength}: must be between 0 and 1")
        if settings.steps < 1:
            raise PanostudyError(f"refinement steps={settings.steps}: must be at least 1")
        if settings.scheduler not in SCHEDULERS:
            raise PanostudyError(f"refinement scheduler '{settings.scheduler}': use one of {', '.join(SCHEDULERS)}")
        if settings.tile_size is not None and (settings.tile_size % multiple or settings.tile_size < multiple):
            raise PanostudyError(
                f"refinement tile_size={settings.tile_size}: must be a positive multiple of {multiple}"
            )
        tile = settings.tile_size or 2 * height
        if settings.tile_overlap % self.vae_scale_factor or not 0 < settings.tile_overlap < tile:
            raise PanostudyError(
                f"refinement tile_overlap={settings.tile_overlap}: must be a multiple of {self.vae_scale_factor} "
                f"above 0 and below the tile size ({tile})"
            )

    def encode_wrapped(self, rgb: torch.Tensor) -> torch.Tensor:
        """VAE latent of a (1, 3, H, W) image in [-1, 1], encoded with wrapped columns (replicated rows) around it."""
        pad = self.size_multiple()
        latents = self.encode_image(_wrap_pad(rgb, pad))
        cells = pad // self.vae_scale_factor
        return latents[..., cells:-cells, cells:-cells]

    @torch.no_grad()
    def __call__(
        self,
        image: np.ndarray,
        prompt: str,
        settings: TileRefineSettings | None = None,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> RefinementResult:
        """Refine ``image`` with the tile ControlNet.

        Parameters
        ----------
        image : (H, 2H, 3) uint8
            The upscaled panorama; also the control image.
        prompt : str
            Text prompt (the scene's).
        settings : TileRefineSettings, optional
        seed : int
            Seeds the noise and any stochastic scheduler.
        progress : callable, optional
            Called as ``progress(done, total)`` before the first and after every tile of every step (``total`` is
            steps × tiles).

        Returns
        -------
        RefinementResult
            The refined image has the input's size; with no step to run it is a copy of the input.
        """
        settings = settings or TileRefineSettings()
        # 1. Check inputs
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise StimulusError(f"panorama to refine: expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        height, width = image.shape[:2]
        self.check_inputs(height, width, settings)
        use_scheduler(self, settings.scheduler)
        device = self._execution_device
        timings: dict[str, float] = {}
        self.scheduler.set_timesteps(settings.steps, device=device)
        run = min(int(settings.steps * settings.strength), settings.steps)
        if run == 0:
            return RefinementResult(image=image.copy(), timings={"encode": 0.0, "denoise": 0.0, "decode": 0.0})
        begin = len(self.scheduler.timesteps) - run * self.scheduler.order
        timesteps = self.scheduler.timesteps[begin:]
        if hasattr(self.scheduler, "set_begin_index"):  # multistep and sigma schedulers start mid-schedule here
            self.scheduler.set_begin_index(begin)
        generator = torch.Generator("cpu").manual_seed(seed)
        factor = self.vae_scale_factor

        # 2. Encode prompt, the control image and the image's latent; noise the latent to the first timestep
        start = time.perf_counter()
        guided = settings.guidance_scale > 1.0
        embeddings = self.encode_prompt(prompt, settings.negative_prompt, guided, settings.weighted_prompt)
        rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
        control = rgb.to(device, self.controlnet.dtype)  # the tile ControlNet sees the image itself, in [0, 1]
        clean = self.encode_wrapped(rgb * 2.0 - 1.0)
        noise = torch.randn(clean.shape, generator=generator).to(device, clean.dtype)
        latents = self.scheduler.add_noise(clean, noise, timesteps[:1])
        timings["encode"] = time.perf_counter() - start

        # 3. Tiles, their blending weights and control crops (fixed for the whole loop)
        start = time.perf_counter()
        latent_height, latent_width = latents.shape[-2:]
        tile = settings.tile_size // factor if settings.tile_size else None
        # A small panorama gets a smaller overlap (at most half a tile) rather than an error.
        overlap = min(settings.tile_overlap // factor, min(tile or latent_height, latent_height) // 2)
        windows = tile_windows(latent_height, latent_width, tile, overlap)
        weights = tile_weights(windows, latent_height, latent_width, overlap)
        weights = [weight.to(device, latents.dtype) for weight in weights]
        controls = [
            control[..., w.top * factor : (w.top + w.height) * factor, :][..., w.columns(latent_width, factor).to(device)]
            for w in windows
        ]

        # 4. Denoising loop: MultiDiffusion average of the tiles' noise predictions, one scheduler step per timestep
        total = len(timesteps) * len(windows)
        if progress is not None:
            progress(0, total)
        for index, timestep in enumerate(timesteps):
            noise_pred = torch.zeros_like(latents)
            for number, (window, weight, tile_control) in enumerate(zip(windows, weights, controls), start=1):
                columns = window.columns(latent_width).to(device)
                rows = slice(window.top, window.top + window.height)
                tile_latents = latents[:, :, rows][..., columns]
                prediction = self._predict_noise(tile_latents, tile_control, timestep, embeddings, settings)
                noise_pred[:, :, rows].index_add_(3, columns, prediction * weight)
                if progress is not None:
                    progress(index * len(windows) + number, total)
            latents = self.scheduler.step(
                noise_pred, timestep, latents, **step_options(self.scheduler, generator), return_dict=False
            )[0]
        timings["denoise"] = time.perf_counter() - start

        # 5. Wrap-aware decoding
        start = time.perf_counter()
        decoded = self.decode(latents, settings)
        refined = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        timings["decode"] = time.perf_counter() - start
        self.maybe_free_model_hooks()
        return RefinementResult(image=refined, timings=timings)


def load_tile_refiner(
    base: str,
    controlnet: str,
    *,
    device: str = "cpu",
    fp16: bool = False,
    cpu_offload: bool = False,
    vae_tiling: bool = False,
    seed: int = 0,
    config: str | None = None,
) -> TileRefinementPipeline:
    """Load the refinement pipeline.

    Parameters
    ----------
    base : str
        An SD 1.5-architecture folder or hub id in diffusers layout (Diffusion360's ``sr-base`` folder), a single
        ``.safetensors``/``.ckpt`` checkpoint, or ``"tiny"`` for the offline random-weight model (with a
        3-channel tiny ControlNet).
    controlnet : str
        A tile ControlNet folder, hub id or single file (Diffusion360's ``sr-control``, ``control_v11f1e_sd15_tile``);
        ``"tiny"`` with a tiny base.
    device, fp16, cpu_offload, vae_tiling
        As in :func:`generator.panorama_pipeline.load_panorama_pipeline`.
    seed : int
        Weight seed of the tiny model (ignored otherwise).
    config : str, optional
        Config source of a single-file ``base`` (see :func:`generator.loading.load_base_components`).

    Raises
    ------
    PanostudyError
        If a model cannot be loaded, or the ControlNet does not take a 3-channel control.
    """
    if (base == TINY_MODEL) != (controlnet == TINY_MODEL):
        raise PanostudyError(
            f"--sr-base '{base}' / --sr-control '{controlnet}': the tiny model has its own ControlNet; "
            "pass 'tiny' for both or real weights for both"
        )
    pipeline = build_controlnet_pipeline(
        TileRefinementPipeline, base, controlnet, tiny_conditioning_channels=3, options=("--sr-base", "--sr-control"),
        device=device, fp16=fp16, cpu_offload=cpu_offload, vae_tiling=vae_tiling, seed=seed, config=config,
    )
    if pipeline.conditioning_channels != 3:
        raise PanostudyError(
            f"--sr-control '{controlnet}': takes {pipeline.conditioning_channels} conditioning channels; "
            "a tile ControlNet takes 3 (RGB)"
        )
    return pipeline
