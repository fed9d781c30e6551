"""Mask-guided Stable Diffusion: the paper's Stage 1 (Eq. 1–3) as a diffusers pipeline.

During the first part of denoising (half the steps by default) each step starts with a *guidance pass*: the
UNet runs on the conditional prompt embedding alone, the cross-attention maps of every prompt object are read at
one spatial resolution, the mask-constraint loss (Eq. 3) compares them with the object masks, and the latents
take a gradient step against it. The ordinary classifier-free-guidance step follows at the same timestep. The
second part of denoising is plain Stable Diffusion, which refines the objects where they were placed.

The method follows the paper; the attention handling (temperature-100 token softmax without the start token,
3×3 Gaussian smoothing, step size ``20·√linspace(1, 0.5)``) follows BoxDiff (Xie et al., ICCV 2023), which the
paper cites as [10]. Everything runs on any ``StableDiffusionPipeline`` checkpoint — the same code path for the
offline tiny model (:mod:`generator.tiny`), SD 1.5 (``stable-diffusion-v1-5/stable-diffusion-v1-5``),
SD 2.1-base and local folders — via ``MaskGuidedStableDiffusionPipeline.from_pretrained(...)``.

References
----------
.. [1] The paper: "High-Quality 360-Degree Panoramic Image Generation based on Masks and Stable Diffusion
   Model", Stage 1, Eq. 1–3.
.. [2] J. Xie et al., "BoxDiff: Text-to-Image Synthesis with Training-Free Box-Constrained Diffusion", ICCV 2023.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from diffusers.utils import BaseOutput

from generator.attention import AttentionStore, cross_attention_resolutions, storing_cross_attention
from generator.scene_spec import phrase_span
from study.errors import SceneSpecError

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# The paper's equations
# ----------------------------------------------------------------------------------------------------------------


def top_k_count(region_size: torch.Tensor | float, fraction: float) -> int:
    """``k = max(1, ⌈fraction · region_size⌉)``; never 0, so the top-k mean of a tiny region is defined."""
    return max(1, math.ceil(fraction * float(region_size)))


def foreground_loss(attention: torch.Tensor, mask: torch.Tensor, top_k_fraction: float = 0.2) -> torch.Tensor:
    """Eq. 1: how weakly an object's attention fills its mask.

    Parameters
    ----------
    attention : torch.Tensor
        ``(h, w)`` attention map ``A_i`` of object i, values in [0, 1].
    mask : torch.Tensor
        ``(h, w)`` binary mask ``M_i`` at the same resolution (float or bool).
    top_k_fraction : float
        ``P``: share of the mask's cells that enter the mean.

    Returns
    -------
    torch.Tensor
        Scalar ``L_f``.

    Notes
    -----
    .. math:: L_{f,i} = 1 - \\frac{1}{k}\\sum \\operatorname{topk}(A_i \\cdot M_i, k),
              \\qquad k = \\max(1, \\lceil P\\,|M_i| \\rceil)
    """
    mask = mask.to(attention.dtype)
    k = top_k_count(mask.sum(), top_k_fraction)
    return 1.0 - (attention * mask).flatten().topk(k).values.mean()


def background_loss(attention: torch.Tensor, mask: torch.Tensor, top_k_fraction: float = 0.2) -> torch.Tensor:
    """Eq. 2: how strongly an object's attention leaks outside its mask.

    Parameters
    ----------
    attention : torch.Tensor
        ``(h, w)`` attention map ``A_i`` of object i.
    mask : torch.Tensor
        ``(h, w)`` binary mask ``M_i``.
    top_k_fraction : float
        ``P``: share of the complement's cells that enter the mean.

    Returns
    -------
    torch.Tensor
        Scalar ``L_b``.

    Notes
    -----
    .. math:: L_{b,i} = \\frac{1}{k}\\sum \\operatorname{topk}(A_i \\cdot (1 - M_i), k),
              \\qquad k = \\max(1, \\lceil P\\,|1 - M_i| \\rceil)

    The paper prints Eq. 2 with ``M_i`` where its text describes the background; as printed, it would equal
    ``1 − L_f`` and cancel Eq. 1. We implement the intended form with the complement ``1 − M_i``, as in
    BoxDiff's outer-box loss. A mask covering the whole map gives ``k = 1`` over zeros: ``L_b = 0``, not NaN.
    """
    outside = 1.0 - mask.to(attention.dtype)
    k = top_k_count(outside.sum(), top_k_fraction)
    return (attention * outside).flatten().topk(k).values.mean()


def mask_constraint_loss(
    attention_maps: torch.Tensor, masks: torch.Tensor, top_k_fraction: float = 0.2
) -> torch.Tensor:
    """Eq. 3: the total loss over all objects.

    Parameters
    ----------
    attention_maps : torch.Tensor
        ``(n_objects, h, w)`` maps ``A_i``.
    masks : torch.Tensor
        ``(n_objects, h, w)`` binary masks ``M_i``.
    top_k_fraction : float
        ``P`` of Eq. 1 and 2.

    Returns
    -------
    torch.Tensor
        Scalar ``L``.

    Notes
    -----
    .. math:: L = L_F + L_B = \\sum_i L_{f,i} + \\sum_i L_{b,i}
    """
    loss_f = sum(foreground_loss(a, m, top_k_fraction) for a, m in zip(attention_maps, masks))
    loss_b = sum(background_loss(a, m, top_k_fraction) for a, m in zip(attention_maps, masks))
    return loss_f + loss_b


# ----------------------------------------------------------------------------------------------------------------
# From attention probabilities and masks to the loss's inputs
# ----------------------------------------------------------------------------------------------------------------


def gaussian_smooth(maps: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """``(n, h, w)`` maps blurred by a normalised 3×3 Gaussian with reflect padding (``sigma <= 0``: unchanged).

    BoxDiff's kernel computes ``exp(-((x-μ)/(2σ))²)``; we use the textbook ``exp(-(x-μ)²/(2σ²))``, which at
    σ = 0.5 gives the 1-D taps [0.107, 0.787, 0.107]: light smoothing.
    """
    if sigma <= 0:
        return maps
    x = torch.arange(3, dtype=maps.dtype, device=maps.device) - 1
    taps = torch.exp(-(x**2) / (2 * sigma**2))
    taps = taps / taps.sum()
    kernel = (taps[:, None] * taps[None, :])[None, None]
    padded = F.pad(maps[:, None], (1, 1, 1, 1), mode="reflect")
    return F.conv2d(padded, kernel)[:, 0]


def object_attention_maps(
    mean_map: torch.Tensor,
    num_prompt_tokens: int,
    token_groups: list[list[int]],
    temperature: float = 100.0,
    smoothing_sigma: float = 0.5,
) -> torch.Tensor:
    """Per-object attention maps ``A_i`` from averaged cross-attention probabilities.

    Parameters
    ----------
    mean_map : torch.Tensor
        ``(h, w, tokens)`` probabilities averaged over heads and layers; token 0 is the start token.
    num_prompt_tokens : int
        Tokens of the prompt itself (without start, end and padding tokens).
    token_groups : list of list of int
        Per object, the indices (start token = 0) of the tokens of its phrase.
    temperature : float
        Multiplies the probabilities before the softmax over tokens (BoxDiff: 100).
    smoothing_sigma : float
        Gaussian smoothing of each object's map, see :func:`gaussian_smooth`.

    Returns
    -------
    torch.Tensor
        ``(n_objects, h, w)`` float32 maps with values in [0, 1].

    Notes
    -----
    The start token, which takes most of the attention mass, is dropped; so are the end and padding tokens,
    so the softmax runs over the prompt's own tokens only (BoxDiff's ``normalize_eot``). A phrase spanning
    several tokens gets the **sum** of its tokens' maps after that softmax: the share of each pixel's attention
    given to the phrase, still in [0, 1] (a mean would cap multi-token objects below single-token ones).
    """
    tokens = mean_map[..., 1 : 1 + num_prompt_tokens].float()
    probabilities = torch.softmax(temperature * tokens, dim=-1)
    maps = torch.stack([probabilities[..., [i - 1 for i in group]].sum(-1) for group in token_groups])
    return gaussian_smooth(maps, smoothing_sigma)


def masks_at_resolution(masks: np.ndarray, resolution: tuple[int, int]) -> torch.Tensor:
    """``(n, H, W)`` bool masks → ``(n, h, w)`` float 0/1 masks at the attention resolution.

    A cell belongs to the mask when at least half of its area does (area pooling, then ``>= 0.5``); an object
    too small to fill half a cell keeps its best-covered cells, so no object loses its mask.
    """
    coverage = F.adaptive_avg_pool2d(torch.from_numpy(masks.astype(np.float32))[:, None], resolution)[:, 0]
    binary = coverage >= 0.5
    for i in range(len(coverage)):
        if not binary[i].any():
            binary[i] = coverage[i] == coverage[i].max()
    return binary.float()


def mask_alignment(attention_maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(n_objects,)`` share of each object's attention mass inside its mask, ``Σ A_i M_i / Σ A_i``."""
    return (attention_maps * masks).flatten(1).sum(1) / attention_maps.flatten(1).sum(1).clamp_min(1e-12)


def guidance_step_sizes(num_inference_steps: int, scale: float = 20.0, scale_range=(1.0, 0.5)) -> np.ndarray:
    """``(num_inference_steps,)`` BoxDiff step sizes ``scale · √linspace(range[0], range[1], T)``."""
    return scale * np.sqrt(np.linspace(scale_range[0], scale_range[1], num_inference_steps))


#: Which tokens of a phrase are guided: all of them, their maps summed ("phrase"), or its head noun ("head").
GUIDE_TOKENS = ("phrase", "head")


def phrase_token_indices(tokenizer, prompt: str, phrase: str, guide_tokens: str = "phrase") -> list[int]:
    """Indices (start token = 0) of the prompt's tokens that spell ``phrase`` (first whole-word occurrence).

    With ``guide_tokens="head"`` only the tokens of the phrase's head noun, taken as its last word ("car" of
    "a red car", as in English noun phrases without a trailing modifier), as BoxDiff and Attend-and-Excite guide
    one token per object.

    Raises
    ------
    study.errors.SceneSpecError
        The phrase is not in the prompt, or lies past the text encoder's token limit.
    """
    span = phrase_span(prompt, phrase)
    if span is None:
        raise SceneSpecError(f"phrase \"{phrase}\" is not in the prompt \"{prompt}\"; use the prompt's own words")
    if guide_tokens == "head":
        last_word = list(re.finditer(r"\w+", prompt[span[0] : span[1]]))[-1]
        span = (span[0] + last_word.start(), span[0] + last_word.end())
    offsets = tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"]
    indices = [i for i, (start, end) in enumerate(offsets) if end > start and start < span[1] and end > span[0]]
    limit = tokenizer.model_max_length - 1
    if not indices or indices[-1] >= limit:
        raise SceneSpecError(
            f"phrase \"{phrase}\" lies past the {limit - 1}-token limit of the text encoder; shorten the prompt"
        )
    return indices


# ----------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class MaskGuidedPipelineOutput(BaseOutput):
    """Output of :class:`MaskGuidedStableDiffusionPipeline`.

    Attributes
    ----------
    images : list of PIL.Image.Image or numpy.ndarray
        The generated image (one per call), as ``output_type`` asked.
    mask_alignment : dict[str, float]
        Per object label, the share of its attention mass inside its mask at the end of guidance.
    loss_history : list of float
        Eq. 3 at each guided step, before that step's update.
    end_of_guidance_loss : float
        Eq. 3 on the attention maps at the end of guidance (after the last update).
    attention_maps : dict[str, numpy.ndarray]
        Per object label, its ``(h, w)`` attention map at the end of guidance.
    attention_resolution : tuple of int
        ``(h, w)`` of the attention maps used.
    nsfw_content_detected : list of bool or None
        The safety checker's verdict, ``None`` without one.
    """

    images: list[PIL.Image.Image] | np.ndarray
    mask_alignment: dict[str, float]
    loss_history: list[float]
    end_of_guidance_loss: float
    attention_maps: dict[str, np.ndarray]
    attention_resolution: tuple[int, int]
    nsfw_content_detected: list[bool] | None


@functools.cache
def _warn_coarse_attention(wanted: tuple[int, int], chosen: tuple[int, int]) -> None:
    # once per size and process: a set of 100 images would otherwise repeat it 100 times
    logger.warning(
        "no cross-attention at %sx%s (image/32) in this UNet; guiding its coarsest cross-attention maps, %sx%s",
        *wanted,
        *chosen,
    )


class MaskGuidedStableDiffusionPipeline(StableDiffusionPipeline):
    """Stable Diffusion whose objects appear where their masks are (the paper's Stage 1, Eq. 1–3).

    Same components and ``from_pretrained`` as ``StableDiffusionPipeline``; one prompt, one image per call.
    """

    #: Warn when guidance cannot use image/32 maps. Off for the tiny model, which never has them by design.
    warn_attention_fallback = True

    def check_inputs(
        self,
        prompt,
        objects,
        masks,
        height,
        width,
        num_inference_steps,
        guided_steps,
        top_k_fraction,
        step_size,
        attention_resolution,
        callback_on_step_end_tensor_inputs,
        guide_tokens="phrase",
    ) -> None:
        """Refuse bad arguments before any work, naming the argument, its value and the fix."""
        if guide_tokens not in GUIDE_TOKENS:
            raise SceneSpecError(f"`guide_tokens` must be one of {', '.join(GUIDE_TOKENS)} but is {guide_tokens!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise SceneSpecError(f"`prompt` must be a non-empty string but is {prompt!r}")
        if height % 8 or width % 8:
            raise SceneSpecError(f"`height` and `width` must be multiples of 8 but are {height} and {width}")
        if num_inference_steps < 1:
            raise SceneSpecError(f"`num_inference_steps` must be at least 1 but is {num_inference_steps}")
        if not 0 <= guided_steps <= num_inference_steps:
            raise SceneSpecError(
                f"`guided_steps` must be in 0..num_inference_steps={num_inference_steps} but is {guided_steps}"
            )
        if not 0 < top_k_fraction <= 1:
            raise SceneSpecError(f"`top_k_fraction` (P) must be in (0, 1] but is {top_k_fraction}")
        if step_size < 0:
            raise SceneSpecError(f"`step_size` must be >= 0 (0 measures without guiding) but is {step_size}")
        if not objects:
            raise SceneSpecError("`objects` is empty; map at least one mask label to a phrase of the prompt")
        for label, phrase in objects.items():
            if label not in masks:
                raise SceneSpecError(f"object '{label}' has no mask; `masks` has: {', '.join(masks)}")
            mask = np.asarray(masks[label])
            if mask.shape != (height, width):
                raise SceneSpecError(
                    f"mask '{label}' is {mask.shape} but the image is ({height}, {width}); "
                    "resize the masks first (NamedMasks.resized)"
                )
            if not mask.any():
                raise SceneSpecError(f"mask '{label}' is empty; draw the object or leave it out of `objects`")
            phrase_token_indices(self.tokenizer, prompt, phrase, guide_tokens)
        latent = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        available = cross_attention_resolutions(self.unet.config, *latent)
        if attention_resolution is not None and tuple(attention_resolution) not in available:
            raise SceneSpecError(
                f"`attention_resolution` {tuple(attention_resolution)} has no cross-attention layer at "
                f"{height}x{width}; choose one of {available}"
            )
        unknown = set(callback_on_step_end_tensor_inputs) - {"latents", "prompt_embeds"}
        if unknown:
            raise SceneSpecError(
                f"`callback_on_step_end_tensor_inputs` may hold 'latents' and 'prompt_embeds' but has {sorted(unknown)}"
            )

    def default_attention_resolution(self, height: int, width: int) -> tuple[int, int]:
        """``(height/32, width/32)`` (16×16 at 512², 16×32 at 512×1024) if the UNet attends there, else the
        coarsest cross-attention resolution it has (the tiny model's 16×16 at 64²)."""
        latent = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        available = cross_attention_resolutions(self.unet.config, *latent)
        wanted = (height // 32, width // 32)
        if wanted in available:
            return wanted
        if self.warn_attention_fallback:
            _warn_coarse_attention(wanted, available[-1])
        return available[-1]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        objects: Mapping[str, str],
        masks: Mapping[str, np.ndarray],
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        guided_steps: int | None = None,
        step_size: float = 20.0,
        step_size_range: tuple[float, float] = (1.0, 0.5),
        top_k_fraction: float = 0.2,
        temperature: float = 100.0,
        smoothing_sigma: float = 0.5,
        attention_resolution: tuple[int, int] | None = None,
        guide_tokens: str = "phrase",
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[StableDiffusionPipeline, int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
    ) -> MaskGuidedPipelineOutput | tuple:
        """Generate one image whose objects follow their masks.

        Parameters
        ----------
        prompt : str
            The scene description; it names every object of ``objects``.
        objects : Mapping[str, str]
            Mask label → the phrase of the prompt that names the object (e.g. ``{"car": "a red car"}``).
        masks : Mapping[str, numpy.ndarray]
            Mask label → ``(height, width)`` bool mask (a :class:`generator.masks.NamedMasks` fits).
        negative_prompt : str, optional
            What to steer away from in classifier-free guidance.
        height, width : int, optional
            Image size, multiples of 8; default the UNet's native size.
        num_inference_steps : int
            Denoising steps ``T``.
        guidance_scale : float
            Classifier-free guidance scale (``<= 1`` disables it).
        guided_steps : int, optional
            Steps that start with a mask-guidance update; default ``T // 2`` (the paper's first half).
        step_size : float
            Scale of the gradient step; the step at step ``t`` is ``step_size · √linspace(*step_size_range, T)[t]``.
            0 computes and records the loss without changing the latents (an unguided reference run).
        step_size_range : tuple of float
            Start and end of the step-size ``linspace`` (BoxDiff: 1.0 → 0.5).
        top_k_fraction : float
            ``P`` of Eq. 1–2.
        temperature : float
            Multiplier before the softmax over prompt tokens.
        smoothing_sigma : float
            Gaussian smoothing of the object maps (0 disables).
        attention_resolution : tuple of int, optional
            ``(h, w)`` of the cross-attention maps to constrain; default see :meth:`default_attention_resolution`.
        guide_tokens : {"phrase", "head"}
            ``phrase`` (default): an object's map is the sum over all tokens of its phrase, i.e. the share of
            attention given to the whole phrase; ``head``: the map of its head noun's tokens only (BoxDiff and
            Attend-and-Excite guide one token). See :func:`phrase_token_indices`.
        generator : torch.Generator, optional
            Seeds the initial noise; a fixed seed gives the same image.
        latents : torch.Tensor, optional
            Initial noise instead of drawing it.
        output_type : str
            ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
        return_dict : bool
            Return :class:`MaskGuidedPipelineOutput` (else a tuple of its fields).
        callback_on_step_end : callable, optional
            ``f(pipe, step, timestep, {name: tensor})`` after each step; may return replaced ``latents``.
        callback_on_step_end_tensor_inputs : tuple of str
            Which tensors the callback gets.

        Returns
        -------
        MaskGuidedPipelineOutput
        """
        # 0. Defaults
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        guided_steps = num_inference_steps // 2 if guided_steps is None else guided_steps

        # 1. Check inputs
        self.check_inputs(
            prompt,
            objects,
            masks,
            height,
            width,
            num_inference_steps,
            guided_steps,
            top_k_fraction,
            step_size,
            attention_resolution,
            callback_on_step_end_tensor_inputs,
            guide_tokens,
        )
        self._guidance_scale = guidance_scale
        self._guidance_rescale = 0.0
        self._clip_skip = None
        self._cross_attention_kwargs = None
        self._interrupt = False

        # 2. Define call parameters
        device = self._execution_device
        labels = list(objects)
        token_groups = [phrase_token_indices(self.tokenizer, prompt, objects[label], guide_tokens) for label in labels]
        num_prompt_tokens = len(self.tokenizer(prompt).input_ids) - 2
        resolution = tuple(attention_resolution or self.default_attention_resolution(height, width))
        object_masks = masks_at_resolution(np.stack([np.asarray(masks[label]) for label in labels]), resolution)
        object_masks = object_masks.to(device)

        # 3. Encode input prompt
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, 1, self.do_classifier_free_guidance, negative_prompt
        )
        # The guidance pass runs on the conditional embedding alone, as BoxDiff does.
        conditional_embeds = prompt_embeds
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])

        # 4. Prepare timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)

        # 5. Prepare latent variables
        latents = self.prepare_latents(
            1, self.unet.config.in_channels, height, width, prompt_embeds.dtype, device, generator, latents
        )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, 0.0)

        # 6. Guidance schedule: the maps are measured right after the last guided update ("end of guidance")
        step_sizes = guidance_step_sizes(num_inference_steps, step_size, step_size_range)
        measure_step = max(guided_steps, 1) - 1
        store = AttentionStore(resolution)
        loss_history: list[float] = []
        end_maps = None

        # 7. Denoising loop, with the storing processors installed and the UNet weights frozen
        trainable = [p for p in self.unet.parameters() if p.requires_grad]
        try:
            for p in trainable:
                p.requires_grad_(False)
            with storing_cross_attention(self.unet, store), self.progress_bar(total=num_inference_steps) as bar:
                for i, t in enumerate(timesteps):
                    # 7.1 Mask guidance: a gradient step on the latents against Eq. 3
                    if i < guided_steps:
                        latents, loss = self._guidance_update(
                            latents, t, conditional_embeds, store, num_prompt_tokens, token_groups, object_masks,
                            top_k_fraction, temperature, smoothing_sigma, float(step_sizes[i]),
                        )  # fmt: skip
                        loss_history.append(loss)

                    # 7.2 The ordinary classifier-free-guidance step
                    model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                    model_input = self.scheduler.scale_model_input(model_input, t)
                    store.reset()
                    store.active = i == measure_step
                    noise_pred = self.unet(model_input, t, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
                    store.active = False
                    if i == measure_step:
                        # The conditional half of the batch comes last.
                        end_maps = object_attention_maps(
                            store.mean_map()[-1], num_prompt_tokens, token_groups, temperature, smoothing_sigma
                        )
                    if self.do_classifier_free_guidance:
                        noise_uncond, noise_text = noise_pred.chunk(2)
                        noise_pred = noise_uncond + guidance_scale * (noise_text - noise_uncond)
                    latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                    # 7.3 Callback and progress
                    if callback_on_step_end is not None:
                        tensors = {"latents": latents, "prompt_embeds": prompt_embeds}
                        outputs = callback_on_step_end(
                            self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                        )
                        latents = outputs.pop("latents", latents)
                    bar.update()
        finally:
            for p in trainable:
                p.requires_grad_(True)

        # 8. Post-processing
        if output_type == "latent":
            image, has_nsfw = latents, None
        else:
            image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
            image, has_nsfw = self.run_safety_checker(image, device, prompt_embeds.dtype)
            denormalize = [True] * image.shape[0] if has_nsfw is None else [not nsfw for nsfw in has_nsfw]
            image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=denormalize)
        self.maybe_free_model_hooks()

        # 9. Alignment with the masks at the end of guidance
        alignment = mask_alignment(end_maps, object_masks)
        output = MaskGuidedPipelineOutput(
            images=image,
            mask_alignment={label: float(a) for label, a in zip(labels, alignment)},
            loss_history=loss_history,
            end_of_guidance_loss=float(mask_constraint_loss(end_maps, object_masks, top_k_fraction)),
            attention_maps={label: m.cpu().numpy() for label, m in zip(labels, end_maps)},
            attention_resolution=resolution,
            nsfw_content_detected=has_nsfw,
        )
        return output if return_dict else output.to_tuple()

    def _guidance_update(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        conditional_embeds: torch.Tensor,
        store: AttentionStore,
        num_prompt_tokens: int,
        token_groups: list[list[int]],
        object_masks: torch.Tensor,
        top_k_fraction: float,
        temperature: float,
        smoothing_sigma: float,
        step: float,
    ) -> tuple[torch.Tensor, float]:
        """One guidance pass: Eq. 3 on the conditional pass's maps, then ``latents − step · ∂L/∂latents``."""
        with torch.enable_grad():
            latents = latents.detach().requires_grad_(True)
            store.reset()
            store.active = True
            try:
                self.unet(
                    self.scheduler.scale_model_input(latents, t), t, encoder_hidden_states=conditional_embeds
                )
            finally:
                store.active = False
            maps = object_attention_maps(
                store.mean_map()[0], num_prompt_tokens, token_groups, temperature, smoothing_sigma
            )
            loss = mask_constraint_loss(maps, object_masks, top_k_fraction)
            if step > 0:
                (gradient,) = torch.autograd.grad(loss, latents)
                latents = latents - step * gradient
        store.reset()
        return latents.detach(), float(loss)


TINY_MODEL = "tiny"


def load_mask_guided_pipeline(
    model: str | None = None,
    *,
    device: str = "cpu",
    fp16: bool = False,
    attention_slicing: bool = False,
    cpu_offload: bool = False,
    config: str | None = None,
) -> MaskGuidedStableDiffusionPipeline:
    """Load the stage-1 pipeline: the offline tiny model or real Stable Diffusion weights.

    Parameters
    ----------
    model : str or None
        ``None`` or ``"tiny"``: :func:`generator.tiny.tiny_mask_guided_pipeline` (placeholder images, not
        meaningful). Otherwise a hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5``,
        ``stabilityai/stable-diffusion-2-1-base``; must already be in the local cache when offline), a local
        diffusers folder, or a single ``.safetensors``/``.ckpt`` checkpoint (see :mod:`generator.loading`).
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, …
    fp16 : bool
        Half-precision weights; needs a GPU.
    attention_slicing : bool
        diffusers' attention slicing (less GPU memory, a little slower); the cross-attention layers read by
        the guidance use their own processor during a call.
    cpu_offload : bool
        diffusers' model CPU offload onto ``device`` (GPU only).
    config : str, optional
        A single file's config source (``sd15``, ``sd21-base``, a diffusers folder or a cached hub id); default
        from the architecture detected in the file.

    Returns
    -------
    MaskGuidedStableDiffusionPipeline
        With the safety checker off: it blanks false positives, which would silently spoil study stimuli.
    """
    from generator.loading import check_device, load_base_components

    check_device(device, fp16, cpu_offload)
    dtype = torch.float16 if fp16 else torch.float32
    if model in (None, TINY_MODEL):
        from generator.tiny import tiny_mask_guided_pipeline

        pipeline = tiny_mask_guided_pipeline(seed=0)
        if fp16:
            pipeline.to(dtype=dtype)
    else:
        components = load_base_components(model, dtype=dtype, config=config, option="--model")
        pipeline = MaskGuidedStableDiffusionPipeline(
            **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    if attention_slicing:
        pipeline.enable_attention_slicing()
    if cpu_offload:
        pipeline.enable_model_cpu_offload(device=device)
    else:
        pipeline.to(device)
    return pipeline
