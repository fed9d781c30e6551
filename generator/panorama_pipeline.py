"""Stage 2: one RGB image → a seamless 360° equirectangular panorama (the paper's Stage 2, after Diffusion360).

The file reads top to bottom:

1. :func:`circular_blend` — the paper's Eq. 4, used on the latent after every scheduler step and on the decoded
   image at the seam.
2. :class:`PanoramaSettings` — every parameter of one completion.
3. :class:`PanoramaCompletionPipeline` — ControlNet completion of the front-face canvas, with

   * the latent extended by ``E`` columns copied from its left edge, Eq. 4 after every step, cropped at the end
     (Diffusion360's image-to-panorama variant; the text-to-panorama variant that overwrites column 0 of an
     unextended latent is *not* used);
   * the known front region kept faithful twice over: RePaint-style re-injection of the known region's latent,
     noised to the next timestep, after every step; and a paste-back of the input pixels after decoding, feathered
     *outward* into the completed region so that the known pixels themselves stay exact;
   * wrap-aware VAE decoding: the latent is extended by a quarter of its width from its own left edge, decoded
     in one piece, and the image's left edge is cross-faded (Eq. 4 again) from the decoded wrap-around.

4. :func:`load_panorama_pipeline` — loads real weights (local folders or hub ids) or the tiny offline model.

Two model configurations share the code path; the ControlNet's ``conditioning_channels`` chooses the control:

* 4 channels — ``[known mask, RGB]`` in [0, 1], the unknown RGB filled with the input stretched over the whole
  canvas (Diffusion360's ``sd-i2p`` layout), through the standard diffusers ControlNet forward, as in
  Diffusion360's own image-to-panorama run (its mask-gated forward is only active when a mask is passed, and its
  pipeline passes none).
* 3 channels — RGB in [0, 1] with unknown pixels set to −1 (``lllyasviel/control_v11p_sd15_inpaint``). When the
  UNet is an inpainting UNet (9 input channels, e.g. ``stable-diffusion-v1-5/stable-diffusion-inpainting``) it also
  receives the unknown-region mask and the masked image's latent, as in diffusers' inpainting pipelines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizerFast

from generator.mask_guided_pipeline import TINY_MODEL
from generator.projection import FrontFaceCanvas, front_face_canvas
from study.errors import PanostudyError, StimulusError


def circular_blend(extended: torch.Tensor, width: int, extent: int) -> torch.Tensor:
    """Blend the left edge of a horizontally extended tensor with its wrapped continuation (Eq. 4).

    Parameters
    ----------
    extended : (..., W + E') tensor
        A latent or image whose columns ``width ..`` continue the canvas past its right edge, i.e. they stand for
        columns ``0 ..`` again but were computed beside column ``width − 1``.
    width : int
        The canvas width W (columns ``:width`` are the canvas itself).
    extent : int
        The number E ≤ E' of blended columns.

    Returns
    -------
    tensor
        A copy of ``extended`` whose first ``extent`` columns are replaced by the blend B.

    Notes
    -----
    .. math:: B_x = w_x L_x + (1 - w_x) R_x, \\qquad w_x = x / E, \\quad x = 0, \\dots, E - 1

    with L the canvas' own left columns and R the wrapped columns ``width + x``. At x = 0 the canvas takes the
    wrapped column (which was generated next to the right edge, so the seam closes); by x = E it is its own again.
    This is the paper's Eq. 4 with the position-dependent weight of Diffusion360's ``blend_h``.

    References
    ----------
    M. Feng et al., "Diffusion360: Seamless 360 degree panoramic image generation based on diffusion models",
    arXiv:2311.13141, 2023.
    """
    weight = torch.arange(extent, device=extended.device, dtype=extended.dtype) / extent
    left = extended[..., :extent]
    right = extended[..., width : width + extent]
    blended = extended.clone()
    blended[..., :extent] = weight * left + (1 - weight) * right
    return blended


def extend_right(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """Append the first ``columns`` columns of ``tensor`` (…, W) to its right edge → (…, W + columns)."""
    return torch.cat([tensor, tensor[..., :columns]], dim=-1)


@dataclass(frozen=True)
class PanoramaSettings:
    """Every parameter of one completion (recorded in the manifest as is).

    Attributes
    ----------
    height, width : int
        Panorama size in pixels, 2:1; multiples of 8 × the VAE scale factor (64 for SD 1.5).
    steps : int
        Denoising steps.
    guidance_scale : float
        Classifier-free guidance; ≤ 1 runs the conditional branch only.
    controlnet_scale : float
        ControlNet conditioning scale.
    circular_blending : bool
        Extend the latent by ``blend_extend`` columns and apply Eq. 4 after every step.
    blend_extend : int or None
        E in latent columns; None gives Diffusion360's ``latent width // 32`` (4 at 1024 px), at least 2.
    wrap_decode : bool
        Decode with the latent extended by its own wrapped columns and cross-fade the seam.
    decode_wrap : int or None
        Latent columns wrapped for decoding; None gives a quarter of the latent width.
    keep_known : bool
        Re-inject the known region's noised latent after every step and paste the input back after decoding.
    feather : int
        Width in pixels of the paste-back's outward feather.
    prompt_prefix : str
        Put before the prompt (Diffusion360's trigger is ``"<360panorama>, "``; plain SD needs none).
    negative_prompt : str
        The unconditional branch's prompt.
    prompt_suffix : str
        Put after the prompt (Diffusion360: ``", photorealistic, trend on artstation, ((best quality)), ..."``).
    scheduler : str
        A key of :data:`SCHEDULERS`, built from the base model's scheduler config (``ddim``; Diffusion360:
        ``euler-ancestral``).
    init_from_control : bool
        Start from the control image's RGB noised to the first timestep (img2img at strength 1.0, as
        Diffusion360 does) instead of from pure noise.
    weighted_prompt : bool
        Encode ``(...)``/``[...]`` emphasis (:mod:`generator.prompt_weights`), as Diffusion360's pipelines do.
    final_blend : bool
        Apply Eq. 4 once more after the last step (Diffusion360 blends after every step and again at the end).
    """

    height: int = 512
    width: int = 1024
    steps: int = 20
    guidance_scale: float = 7.0
    controlnet_scale: float = 1.0
    circular_blending: bool = True
    blend_extend: int | None = None
    wrap_decode: bool = True
    decode_wrap: int | None = None
    keep_known: bool = True
    feather: int = 8
    prompt_prefix: str = ""
    negative_prompt: str = "blurry, lowres, distorted, text, watermark"
    prompt_suffix: str = ""
    scheduler: str = "ddim"
    init_from_control: bool = False
    weighted_prompt: bool = False
    final_blend: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


#: Schedulers a preset can name, each built from the base model's own scheduler config.
SCHEDULERS = {"ddim": "DDIMScheduler", "euler-ancestral": "EulerAncestralDiscreteScheduler",
              "unipc": "UniPCMultistepScheduler"}  # fmt: skip


def step_options(scheduler, generator: torch.Generator) -> dict:
    """``generator=`` for schedulers whose ``step`` draws noise (DDIM with eta, Euler-ancestral); UniPC takes none."""
    import inspect

    return {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}


def use_scheduler(pipeline, name: str) -> None:
    """Give ``pipeline`` the scheduler ``name`` (a key of :data:`SCHEDULERS`) from its scheduler's config."""
    import diffusers

    if name not in SCHEDULERS:
        raise PanostudyError(f"scheduler '{name}': use one of {', '.join(SCHEDULERS)}")
    wanted = getattr(diffusers, SCHEDULERS[name])
    if type(pipeline.scheduler) is not wanted:
        pipeline.scheduler = wanted.from_config(pipeline.scheduler.config)


@dataclass
class PanoramaResult:
    """One completed panorama.

    Attributes
    ----------
    image : (H, W, 3) uint8
        The equirectangular panorama.
    canvas : FrontFaceCanvas
        The projected input and its known region.
    timings : dict
        Seconds per stage: ``projection``, ``prepare`` (text, control, known latent), ``completion`` (the
        denoising loop), ``decode``, ``paste``.
    """

    image: np.ndarray
    canvas: FrontFaceCanvas
    timings: dict[str, float] = field(default_factory=dict)


class PanoramaCompletionPipeline(DiffusionPipeline):
    """ControlNet completion of a front-face canvas into a seamless panorama (see the module docstring)."""

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizerFast,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        scheduler,
    ):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet, scheduler=scheduler
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def conditioning_channels(self) -> int:
        return self.controlnet.config.conditioning_channels

    @property
    def inpainting_unet(self) -> bool:
        return self.unet.config.in_channels == 9

    def size_multiple(self) -> int:
        """Pixel sizes must be multiples of this (VAE factor × the UNet's total downsampling)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def check_inputs(self, image: np.ndarray, settings: PanoramaSettings) -> None:
        """Raise a one-line :class:`PanostudyError` for any unusable input, before any work is done."""
        multiple = self.size_multiple()
        if settings.width != 2 * settings.height or settings.height % multiple or settings.width % 4:
            raise StimulusError(
                f"panorama size {settings.width}x{settings.height}: must be 2:1 with the height a multiple of "
                f"{multiple}; use e.g. {16 * multiple}x{8 * multiple}"
            )
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise StimulusError(
                f"input image: expected (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}"
            )
        if self.conditioning_channels not in (3, 4):
            raise PanostudyError(
                f"controlnet: conditioning_channels is {self.conditioning_channels}; stage 2 needs 4 (mask + RGB, "
                "Diffusion360 sd-i2p) or 3 (RGB with masked pixels at -1, control_v11p_sd15_inpaint)"
            )
        latent_width = settings.width // self.vae_scale_factor
        if settings.blend_extend is not None and not 1 <= settings.blend_extend <= latent_width // 2:
            raise PanostudyError(
                f"blend_extend={settings.blend_extend}: must be between 1 and {latent_width // 2} latent columns"
            )
        if settings.decode_wrap is not None and not 1 <= settings.decode_wrap <= latent_width // 2:
            raise PanostudyError(
                f"decode_wrap={settings.decode_wrap}: must be between 1 and {latent_width // 2} latent columns"
            )
        if settings.steps < 1:
            raise PanostudyError(f"steps={settings.steps}: must be at least 1")
        if settings.scheduler not in SCHEDULERS:
            raise PanostudyError(f"scheduler '{settings.scheduler}': use one of {', '.join(SCHEDULERS)}")

    def encode_prompt(self, prompt: str, negative_prompt: str, guided: bool, weighted: bool = False) -> torch.Tensor:
        """CLIP embeddings, (2, 77, D) with the negative first when ``guided``, else (1, 77, D); ``weighted``
        applies ``(...)`` emphasis (:func:`generator.prompt_weights.weighted_embeddings`)."""
        texts = [negative_prompt, prompt] if guided else [prompt]
        if weighted:
            from generator.prompt_weights import weighted_embeddings

            return weighted_embeddings(self.tokenizer, self.text_encoder, texts)
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        return self.text_encoder(tokens.input_ids.to(self._execution_device))[0]

    def control_image_rgb(self, image: np.ndarray, canvas: FrontFaceCanvas) -> torch.Tensor:
        """(1, 3, H, W) in [0, 1]: the projected front face, the rest filled with the input stretched over the
        whole canvas (Diffusion360's control RGB, and its img2img start image)."""
        from PIL import Image

        known = torch.from_numpy(canvas.known.astype(np.float32))[None, None]
        rgb = torch.from_numpy(canvas.rgb).permute(2, 0, 1)[None].float() / 255.0
        height, width = canvas.known.shape
        stretched = np.array(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))
        fill = torch.from_numpy(stretched).permute(2, 0, 1)[None].float() / 255.0
        return known * rgb + (1 - known) * fill

    def control_image(self, image: np.ndarray, canvas: FrontFaceCanvas) -> torch.Tensor:
        """The ControlNet conditioning, (1, C, H, W) in the layout the ControlNet expects (see module docstring)."""
        known = torch.from_numpy(canvas.known.astype(np.float32))[None, None]
        if self.conditioning_channels == 4:
            return torch.cat([known, self.control_image_rgb(image, canvas)], dim=1)
        rgb = torch.from_numpy(canvas.rgb).permute(2, 0, 1)[None].float() / 255.0
        return torch.where(known.bool(), rgb, torch.full_like(rgb, -1.0))

    def encode_image(self, rgb: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """VAE latent (scaled) of an image in [-1, 1]: the posterior's mean, or a sample drawn with ``generator``."""
        posterior = self.vae.encode(rgb.to(self._execution_device, self.vae.dtype)).latent_dist
        if generator is None:
            latents = posterior.mean
        else:
            latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(
                posterior.mean.device, posterior.mean.dtype
            )
        return latents * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor, settings: PanoramaSettings) -> torch.Tensor:
        """Wrap-aware VAE decoding of (1, 4, h, w) latents → (1, 3, H, W) in [-1, 1].

        With ``wrap_decode`` the latent is extended by ``decode_wrap`` of its own left columns, decoded in one
        piece, and the image's left edge is cross-faded from the decoded continuation by :func:`circular_blend`
        (so decoder padding never meets the seam); otherwise the latent is decoded as it is.
        """
        latent_width = latents.shape[-1]
        scaled = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        if not settings.wrap_decode:
            return self.vae.decode(scaled).sample
        wrap = settings.decode_wrap or max(1, latent_width // 4)
        decoded = self.vae.decode(extend_right(scaled, wrap)).sample
        width = latent_width * self.vae_scale_factor
        return circular_blend(decoded, width, wrap * self.vae_scale_factor)[..., :width]

    @torch.no_grad()
    def __call__(
        self,
        image: np.ndarray,
        prompt: str,
        settings: PanoramaSettings | None = None,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> PanoramaResult:
        """Complete ``image`` (the front face) into a 360° panorama.

        Parameters
        ----------
        image : (H, W, 3) uint8
            The input; centre-cropped to a square for the front face.
        prompt : str
            Text prompt (``settings.prompt_prefix`` is put before it).
        settings : PanoramaSettings, optional
        seed : int
            Seeds the initial noise, the re-injection noise and any stochastic scheduler.
        progress : callable, optional
            Called as ``progress(step, total)`` before the first and after every denoising step.

        Returns
        -------
        PanoramaResult
        """
        settings = settings or PanoramaSettings()
        # 1. Check inputs
        self.check_inputs(image, settings)
        use_scheduler(self, settings.scheduler)
        device = self._execution_device
        timings: dict[str, float] = {}
        generator = torch.Generator("cpu").manual_seed(seed)
        factor = self.vae_scale_factor
        latent_height, latent_width = settings.height // factor, settings.width // factor
        extent = (settings.blend_extend or max(2, latent_width // 32)) if settings.circular_blending else 0

        # 2. Project the input onto the front face of the canvas
        start = time.perf_counter()
        canvas = front_face_canvas(image, settings.height, settings.width)
        timings["projection"] = time.perf_counter() - start

        # 3. Encode prompt, control image and the known region's latent
        start = time.perf_counter()
        guided = settings.guidance_scale > 1.0
        full_prompt = settings.prompt_prefix + prompt + settings.prompt_suffix
        embeddings = self.encode_prompt(full_prompt, settings.negative_prompt, guided, settings.weighted_prompt)
        control_canvas = self.control_image(image, canvas)
        control = extend_right(control_canvas, extent * factor).to(device, self.controlnet.dtype)
        known_pixels = torch.from_numpy(canvas.known.astype(np.float32))[None, None]
        canvas_rgb = torch.from_numpy(canvas.rgb).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        known_latents = extend_right(self.encode_image(canvas_rgb * known_pixels), extent)
        # A latent cell is re-injected only when every pixel it decodes to is known.
        known_cells = extend_right(F.avg_pool2d(known_pixels, factor) >= 1.0, extent).to(device, known_latents.dtype)
        inpaint_inputs = None
        if self.inpainting_unet:
            unknown_cells = 1.0 - F.interpolate(known_pixels, size=(latent_height, latent_width), mode="area")
            inpaint_inputs = torch.cat([extend_right(unknown_cells.to(device), extent), known_latents], dim=1)
        timings["prepare"] = time.perf_counter() - start

        # 4. Initial latents: pure noise, or (img2img at strength 1) the control image's RGB noised to the first
        #    timestep; the extension starts as a copy of the left edge, as the wrapped canvas would
        start = time.perf_counter()
        self.scheduler.set_timesteps(settings.steps, device=device)
        timesteps = self.scheduler.timesteps
        noise = torch.randn((1, 4, latent_height, latent_width), generator=generator)
        noise = extend_right(noise, extent).to(device, known_latents.dtype)
        if settings.init_from_control:
            rgb = control_canvas[:, -3:] if self.conditioning_channels == 4 else self.control_image_rgb(image, canvas)
            initial = extend_right(self.encode_image(rgb * 2.0 - 1.0, generator), extent).to(device, noise.dtype)
            latents = self.scheduler.add_noise(initial, noise, timesteps[:1])
        else:
            latents = noise * self.scheduler.init_noise_sigma

        # 5. Denoising loop
        if progress is not None:
            progress(0, len(timesteps))
        for index, timestep in enumerate(timesteps):
            noise_pred = self._predict_noise(latents, control, timestep, embeddings, settings, inpaint_inputs)
            latents = self.scheduler.step(
                noise_pred, timestep, latents, **step_options(self.scheduler, generator), return_dict=False
            )[0]
            if settings.keep_known:
                latents = self._reinject_known(latents, known_latents, known_cells, timesteps, index, generator)
            if extent:
                latents = circular_blend(latents, latent_width, extent)
            if progress is not None:
                progress(index + 1, len(timesteps))
        if extent and settings.final_blend:
            latents = circular_blend(latents, latent_width, extent)
        latents = latents[..., :latent_width]
        timings["completion"] = time.perf_counter() - start

        # 6. Wrap-aware decoding
        start = time.perf_counter()
        decoded = self.decode(latents, settings)
        panorama = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        timings["decode"] = time.perf_counter() - start

        # 7. Paste the known pixels back, feathered outward into the completion
        start = time.perf_counter()
        if settings.keep_known:
            panorama = paste_known(panorama, canvas, settings.feather)
        timings["paste"] = time.perf_counter() - start
        self.maybe_free_model_hooks()
        return PanoramaResult(image=panorama, canvas=canvas, timings=timings)

    def _predict_noise(self, latents, control, timestep, embeddings, settings, inpaint_inputs=None) -> torch.Tensor:
        """ControlNet + UNet noise prediction, with classifier-free guidance when the embeddings are a
        (negative, prompt) pair: :math:`\\epsilon = \\epsilon_u + s\\,(\\epsilon_c - \\epsilon_u)`.

        ``inpaint_inputs`` (mask and masked-image latents) are appended to the UNet's input channels for
        an inpainting UNet; the ControlNet sees the plain latents.
        """
        guided = embeddings.shape[0] == 2
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = self.scheduler.scale_model_input(model_input, timestep)
        down_residuals, mid_residual = self.controlnet(
            model_input.to(self.controlnet.dtype),
            timestep,
            encoder_hidden_states=embeddings.to(self.controlnet.dtype),
            controlnet_cond=torch.cat([control] * 2) if guided else control,
            conditioning_scale=settings.controlnet_scale,
            return_dict=False,
        )
        if inpaint_inputs is not None:
            extra = torch.cat([inpaint_inputs] * 2) if guided else inpaint_inputs
            model_input = torch.cat([model_input, extra], dim=1)
        noise_pred = self.unet(
            model_input.to(self.unet.dtype),
            timestep,
            encoder_hidden_states=embeddings.to(self.unet.dtype),
            down_block_additional_residuals=down_residuals,
            mid_block_additional_residual=mid_residual,
            return_dict=False,
        )[0].to(latents.dtype)
        if guided:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + settings.guidance_scale * (cond - uncond)
        return noise_pred

    def _reinject_known(self, latents, known_latents, known_cells, timesteps, index, generator):
        """RePaint-style: replace the known cells by the known latent noised to the next timestep (clean at the end)."""
        if index + 1 < len(timesteps):
            fresh = torch.randn(known_latents.shape, generator=generator).to(known_latents.device, known_latents.dtype)
            target = self.scheduler.add_noise(known_latents, fresh, timesteps[index + 1 : index + 2])
        else:
            target = known_latents
        return known_cells * target + (1 - known_cells) * latents


def paste_known(panorama: np.ndarray, canvas: FrontFaceCanvas, feather: int) -> np.ndarray:
    """Put the known pixels back exactly, fading into the completion over ``feather`` pixels outside them.

    The fade weight is ``clip(1 − d / feather, 0, 1)`` with d the distance to the known region, measured on the
    horizontally wrapped canvas, so pixels of the known region keep their input values.
    """
    from scipy.ndimage import distance_transform_edt

    if feather <= 0:
        alpha = canvas.known.astype(np.float64)
    else:
        width = canvas.known.shape[1]
        tiled = np.concatenate([canvas.known] * 3, axis=1)
        distance = distance_transform_edt(~tiled)[:, width : 2 * width]
        alpha = np.clip(1.0 - distance / feather, 0.0, 1.0)
    # Outside the known region the projected canvas is black; take the known values from the nearest known pixel.
    _, (rows, cols) = distance_transform_edt(~canvas.known, return_indices=True)
    source = canvas.rgb[rows, cols].astype(np.float64)
    mixed = alpha[..., None] * source + (1 - alpha[..., None]) * panorama.astype(np.float64)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def check_completion_models(model: str, controlnet: str | None, option: str = "--model") -> None:
    """Refuses a completion base model without a ControlNet (only the tiny model brings its own), before any
    model is loaded; ``option`` names the option that gave ``model``."""
    if model != TINY_MODEL and controlnet is None:
        raise PanostudyError(
            f"--controlnet: {option} '{model}' needs a ControlNet (Diffusion360's sd-i2p folder or --diffusion360 DIR, "
            "or lllyasviel/control_v11p_sd15_inpaint with an inpainting model)"
        )


def load_panorama_pipeline(
    model: str,
    controlnet: str | None,
    *,
    device: str = "cpu",
    fp16: bool = False,
    cpu_offload: bool = False,
    vae_tiling: bool = False,
    seed: int = 0,
    config: str | None = None,
    option: str = "--model",
) -> PanoramaCompletionPipeline:
    """Load the completion pipeline.

    Parameters
    ----------
    model : str
        A Stable Diffusion folder or hub id with ``vae/``, ``unet/``, ``text_encoder/``, ``tokenizer/``,
        ``scheduler/`` (e.g. Diffusion360's ``sr-base`` folder, or ``stable-diffusion-v1-5/stable-diffusion-inpainting``),
        a single ``.safetensors``/``.ckpt`` checkpoint, or ``"tiny"`` for the offline random-weight model (with a
        4-channel tiny ControlNet).
    controlnet : str or None
        A ControlNet folder, hub id or single file (Diffusion360's ``sd-i2p``, or
        ``lllyasviel/control_v11p_sd15_inpaint``); required unless ``model`` is ``"tiny"``.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, …
    fp16 : bool
        Half-precision weights (GPU only); halves memory.
    cpu_offload : bool
        Keep each model on the CPU until it runs (diffusers' model CPU offload); cuts GPU memory further.
    vae_tiling : bool
        Decode in tiles (diffusers' VAE tiling); cuts decoder memory at high resolution.
    seed : int
        Weight seed of the tiny model (ignored otherwise).
    config : str, optional
        Config source of a single-file ``model`` (see :func:`generator.loading.load_base_components`).
    option : str
        The CLI option that named ``model``, for messages (``--panorama-model`` in ``generate sets``).

    Raises
    ------
    PanostudyError
        If a model cannot be loaded (the message names the option and the path or id).
    """
    check_completion_models(model, controlnet, option)
    return build_controlnet_pipeline(
        PanoramaCompletionPipeline, model, controlnet, tiny_conditioning_channels=4, options=(option, "--controlnet"),
        device=device, fp16=fp16, cpu_offload=cpu_offload, vae_tiling=vae_tiling, seed=seed, config=config,
    )


def build_controlnet_pipeline(
    cls,
    model: str,
    controlnet: str | None,
    *,
    tiny_conditioning_channels: int,
    options: tuple[str, str],
    device: str,
    fp16: bool,
    cpu_offload: bool,
    vae_tiling: bool,
    seed: int,
    config: str | None = None,
):
    """Builds a ControlNet pipeline class of this package from a base model and a ControlNet, or the tiny pair.

    ``options`` names the two CLI options in error messages; ``"tiny"`` builds the offline random-weight
    components with a tiny ControlNet of ``tiny_conditioning_channels``. Same device and memory options as
    :func:`load_panorama_pipeline`; every module is loaded in the requested dtype.
    """
    from diffusers import DDIMScheduler

    from generator.loading import check_device, load_base_components, load_controlnet

    check_device(device, fp16, cpu_offload)
    dtype = torch.float16 if fp16 else torch.float32
    if model == TINY_MODEL:
        from generator.tiny import tiny_controlnet, tiny_sd_components

        parts = tiny_sd_components(seed)
        control = tiny_controlnet(seed, conditioning_channels=tiny_conditioning_channels)
        if fp16:
            for module in (parts["vae"], parts["text_encoder"], parts["unet"], control):
                module.to(dtype)
        if controlnet not in (None, TINY_MODEL):
            control = load_controlnet(controlnet, dtype=dtype, unet_config=parts["unet"].config, option=options[1])
    else:
        parts = load_base_components(model, dtype=dtype, config=config, option=options[0])
        control = load_controlnet(controlnet, dtype=dtype, unet_config=parts["unet"].config, option=options[1])
    pipeline = cls(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        controlnet=control,
        scheduler=DDIMScheduler.from_config(parts["scheduler"].config),
    )
    if vae_tiling:
        pipeline.vae.enable_tiling()
    if cpu_offload:
        pipeline.enable_model_cpu_offload(device=device)
    else:
        pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
