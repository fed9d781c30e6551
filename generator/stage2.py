"""Stage 2 as a whole: completion, super-resolution and tile refinement, in the order and with the settings of a
named preset.

Two presets:

``diffusion360``
    Diffusion360's image-to-panorama and super-resolution chain as published (``img2panoimg`` of
    ArcherFMY/SD-T2I-360PanoImage): the ``sd-i2p`` ControlNet on the ``sr-base`` model, Euler-ancestral,
    20 steps, CFG 7, img2img at strength 1.0 from the control image, the prompt as
    ``"<360panorama>, " + prompt + ", photorealistic, trend on artstation, ((best quality)), ((ultra high res))"``
    with ``(...)`` emphasis, its fixed negative prompt, no re-injection of the front face; then

    1. tile-ControlNet img2img (``sr-base`` + ``sr-control``) of the panorama resized to 3072×1536: strength 0.8,
       7 UniPC steps, CFG 15, 768-px tiles overlapping by half, the prompt without ``<360panorama>, ``;
    2. Real-ESRGAN ×2 (``RealESRGAN_x2plus.pth``) → 6144×3072;
    3. optionally (on by default, as published) the same img2img at 6144×3072 with CFG 17.

    The sizes scale with the completion width (3× and 6× of 1024 px); tile blending differs in one respect:
    the tiles' noise predictions are averaged before one scheduler step (MultiDiffusion), where Diffusion360
    steps each tile and cross-fades the latents, which a multistep scheduler cannot do exactly.

``panostudy``
    The chain this project ran before: DDIM, 20 steps, CFG 7 from pure noise, the known front face
    re-injected every step and pasted back; Real-ESRGAN to the final size (4096×2048), then an optional tile
    refinement there (strength 0.3, DDIM, CFG 7.5).

:func:`choose_preset` makes ``diffusion360`` the default when Diffusion360's models are given (its folder, or a
4-channel mask + RGB ControlNet), ``panostudy`` otherwise. :func:`run_stage2` runs a preset and returns, besides
the image, every resolved setting for the manifest.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from generator.panorama_pipeline import PanoramaSettings
from generator.tile_refine import TileRefineSettings
from study.errors import PanostudyError

DIFFUSION360_PREFIX = "<360panorama>, "
DIFFUSION360_SUFFIX = ", photorealistic, trend on artstation, ((best quality)), ((ultra high res))"
DIFFUSION360_NEGATIVE = (
    "persons, complex texture, small objects, sheltered, blur, worst quality, low quality, zombie, logo, text, "
    "watermark, username, monochrome, complex lighting"
)
#: The files of Diffusion360's model folder (``archerfmy0831/sd-t2i-360panoimage``) that its image-to-panorama
#: chain uses, by the role they play here.
DIFFUSION360_FILES = {
    "completion base (--panorama-model)": "sr-base",
    "completion ControlNet (--controlnet)": "sd-i2p",
    "refinement base (--sr-base)": "sr-base",
    "tile ControlNet (--sr-control)": "sr-control",
    "Real-ESRGAN (--sr-weights)": "RealESRGAN_x2plus.pth",
}


@dataclass(frozen=True)
class Upscale:
    """Real-ESRGAN (when weights are given), then a wrap-aware resize to ``scale`` × the completion width
    (None: to the final size)."""

    scale: float | None = None


@dataclass(frozen=True)
class Refine:
    """Tile-ControlNet img2img of the panorama resized to ``scale`` × the completion width (None: final size)."""

    settings: TileRefineSettings
    scale: float | None = None
    optional: bool = False


@dataclass(frozen=True)
class Preset:
    """A stage-2 recipe: completion settings, the SR chain in order, and the final size as a multiple of the
    completion width (``final_scale``) or in pixels (``final_size``)."""

    name: str
    completion: PanoramaSettings
    chain: tuple[Upscale | Refine, ...]
    final_size: tuple[int, int] | None = None
    final_scale: float | None = None
    needs_refiner: bool = False
    needs_sr_weights: bool = False

    def final(self) -> tuple[int, int]:
        """The final (width, height) for this preset's completion size."""
        if self.final_size is not None:
            return self.final_size
        width = round(self.completion.width * self.final_scale)
        return width, width // 2


def _diffusion360_refine(guidance: float) -> TileRefineSettings:
    return TileRefineSettings(
        strength=0.8, steps=7, guidance_scale=guidance, controlnet_scale=1.0, tile_size=768, tile_overlap=384,
        negative_prompt=DIFFUSION360_NEGATIVE, scheduler="unipc", weighted_prompt=True,
    )  # fmt: skip


PRESETS: dict[str, Preset] = {
    "diffusion360": Preset(
        name="diffusion360",
        completion=PanoramaSettings(
            height=512, width=1024, steps=20, guidance_scale=7.0, controlnet_scale=1.0, keep_known=False,
            prompt_prefix=DIFFUSION360_PREFIX, prompt_suffix=DIFFUSION360_SUFFIX, negative_prompt=DIFFUSION360_NEGATIVE,
            scheduler="euler-ancestral", init_from_control=True, weighted_prompt=True, final_blend=True,
        ),  # fmt: skip
        chain=(Refine(_diffusion360_refine(15.0), scale=3.0), Upscale(scale=6.0),
               Refine(_diffusion360_refine(17.0), scale=6.0, optional=True)),  # fmt: skip
        final_scale=6.0,
        needs_refiner=True,
        needs_sr_weights=True,
    ),
    "panostudy": Preset(
        name="panostudy",
        completion=PanoramaSettings(),
        chain=(Upscale(), Refine(TileRefineSettings(), optional=True)),
        final_size=(4096, 2048),
    ),
}


def check_preset_name(name: str) -> None:
    """Refuse an unknown ``--preset`` before any model is loaded."""
    if name != "auto" and name not in PRESETS:
        raise PanostudyError(f"--preset {name}: use one of auto, {', '.join(PRESETS)}")


def choose_preset(name: str, *, diffusion360_folder: bool, conditioning_channels: int, tiny: bool) -> Preset:
    """The preset ``name``, or for ``"auto"``: ``diffusion360`` when its models are given (its folder, or a
    non-tiny 4-channel mask + RGB ControlNet, the ``sd-i2p`` layout), else ``panostudy``."""
    check_preset_name(name)
    if name == "auto":
        name = "diffusion360" if diffusion360_folder or (conditioning_channels == 4 and not tiny) else "panostudy"
    return PRESETS[name]


def diffusion360_models(folder: str | Path) -> dict[str, str]:
    """The paths of Diffusion360's models in its downloaded folder, by option name; refuses a folder that lacks one."""
    folder = Path(folder)
    paths = {role: folder / name for role, name in DIFFUSION360_FILES.items()}
    missing = [f"{name} ({role})" for (role, path), name in zip(paths.items(), DIFFUSION360_FILES.values()) if not path.exists()]
    if missing:
        raise PanostudyError(
            f"--diffusion360 {folder}: lacks {', '.join(missing)}; give the folder of archerfmy0831/sd-t2i-360panoimage "
            "that holds sd-i2p/, sr-base/, sr-control/ and RealESRGAN_x2plus.pth"
        )
    return {
        "panorama_model": str(paths["completion base (--panorama-model)"]),
        "controlnet": str(paths["completion ControlNet (--controlnet)"]),
        "sr_base": str(paths["refinement base (--sr-base)"]),
        "sr_control": str(paths["tile ControlNet (--sr-control)"]),
        "sr_weights": str(paths["Real-ESRGAN (--sr-weights)"]),
    }


def customise(preset: Preset, *, refine_strength: float | None = None, **completion) -> Preset:
    """The preset with completion settings (``steps=…``, ``width=…``, …; None keeps the preset's) and every
    refinement's strength replaced."""
    changes = {key: value for key, value in completion.items() if value is not None}
    chain = preset.chain
    if refine_strength is not None:
        chain = tuple(
            dataclasses.replace(step, settings=dataclasses.replace(step.settings, strength=refine_strength))
            if isinstance(step, Refine) else step
            for step in chain
        )  # fmt: skip
    return dataclasses.replace(preset, completion=dataclasses.replace(preset.completion, **changes), chain=chain)


def check_chain(preset: Preset, *, sr: bool, has_sr_weights: bool, has_refiner: bool) -> None:
    """Refuse, before any work, a preset whose SR chain lacks the models it needs."""
    if not sr:
        return
    lacking = []
    if preset.needs_refiner and not has_refiner:
        lacking.append("--sr-base and --sr-control (Diffusion360's sr-base and sr-control)")
    if preset.needs_sr_weights and not has_sr_weights:
        lacking.append("--sr-weights (RealESRGAN_x2plus.pth)")
    if lacking:
        raise PanostudyError(
            f"--preset {preset.name}: its super-resolution chain needs {' and '.join(lacking)}; give them, give "
            "--diffusion360 DIR, or --no-sr for the completion alone"
        )


@dataclass
class Stage2Models:
    """The loaded models a preset runs on; ``sr_model`` and ``refiner`` may be None."""

    completion: object
    sr_model: object = None
    refiner: object = None


@dataclass
class Stage2Result:
    """A finished panorama and what made it.

    Attributes
    ----------
    image : (H, W, 3) uint8
        The final panorama.
    completion : PanoramaResult
        The completion's result (its image before super-resolution, the canvas, timings).
    timings : dict
        Seconds per stage.
    record : dict
        The preset and every resolved setting, in order, for the manifest.
    """

    image: np.ndarray
    completion: object
    timings: dict[str, float] = field(default_factory=dict)
    record: dict = field(default_factory=dict)


def _scaled(width: int, scale: float | None, final: tuple[int, int]) -> tuple[int, int]:
    if scale is None:
        return final
    scaled = round(width * scale / 16) * 16
    return scaled, scaled // 2


def _scaled_tiles(settings: TileRefineSettings, completion_width: int, multiple: int) -> TileRefineSettings:
    """Tile size and overlap scaled with the completion width (768 and 384 px at the published 1024 px)."""
    if settings.tile_size is None or completion_width == 1024:
        return settings
    tile = max(multiple, round(settings.tile_size * completion_width / 1024 / multiple) * multiple)
    overlap = max(8, round(settings.tile_overlap * completion_width / 1024 / 8) * 8)
    return dataclasses.replace(settings, tile_size=tile, tile_overlap=min(overlap, tile - 8))


def planned_chain(preset: Preset, *, sr: bool, final_pass: bool, has_refiner: bool) -> list[Upscale | Refine]:
    """The chain steps that will run: none without ``sr``; optional refinements only with ``final_pass`` (and,
    for ``panostudy``, only with a refiner)."""
    if not sr:
        return []
    steps = []
    for step in preset.chain:
        if isinstance(step, Refine) and (not has_refiner or step.optional and not final_pass):
            continue
        steps.append(step)
    return steps


def run_stage2(
    front: np.ndarray,
    prompt: str,
    preset: Preset,
    models: Stage2Models,
    *,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    sr: bool = True,
    final_pass: bool = True,
    sr_tile: int | None = 256,
    sr_overlap: int = 16,
    progress: Callable[[str, int, int], None] | None = None,
) -> Stage2Result:
    """Complete ``front`` into a panorama and run the preset's SR chain.

    Parameters
    ----------
    front : (H, W, 3) uint8
        The front face (the stage-1 image).
    prompt : str
        The scene prompt; the preset adds its prefix and suffix.
    preset : Preset
    models : Stage2Models
    seed : int
        Seeds the completion and every refinement.
    size : (width, height), optional
        Final size; default the preset's (6144×3072 for ``diffusion360``, 4096×2048 for ``panostudy``, or the
        completion's own size without ``sr``).
    sr : bool
        Run the SR chain (False: the completion alone, as Diffusion360 with ``upscale=False``).
    final_pass : bool
        Run the chain's optional last refinement.
    sr_tile, sr_overlap : int
        Real-ESRGAN tiling (input pixels).
    progress : callable, optional
        ``progress(stage, done, total)`` for denoising steps and tiles of every stage.

    Returns
    -------
    Stage2Result
    """
    from generator.upscale import resize_equirect, super_resolve

    report = progress or (lambda stage, done, total: None)
    settings = preset.completion
    chain = planned_chain(preset, sr=sr, final_pass=final_pass, has_refiner=models.refiner is not None)
    final = size or (preset.final() if sr else (settings.width, settings.height))
    timings: dict[str, float] = {}

    result = models.completion(front, prompt, settings, seed=seed,
                               progress=lambda done, total: report("stage 2 completion", done, total))  # fmt: skip
    timings.update({f"stage2_{name}": seconds for name, seconds in result.timings.items()})
    image = result.image
    record_chain: list[dict] = []
    refine_prompt = prompt + settings.prompt_suffix
    for step in chain:
        target = _scaled(settings.width, step.scale, final)
        start = time.perf_counter()
        if isinstance(step, Upscale):
            scale = None
            if models.sr_model is not None:
                scale = models.sr_model.scale
                image = super_resolve(image, models.sr_model, tile=sr_tile, overlap=sr_overlap,
                                      progress=lambda done, total: report("super-resolution tiles", done, total))  # fmt: skip
            image = resize_equirect(image, *target)
            record_chain.append({"step": "super_resolution", "scale": scale, "tile": sr_tile, "overlap": sr_overlap,
                                 "size": list(target)})  # fmt: skip
            timings["super_resolution"] = time.perf_counter() - start
        else:
            refine_settings = _scaled_tiles(step.settings, settings.width, models.refiner.size_multiple())
            image = resize_equirect(image, *target)
            label = f"refine {target[0]}x{target[1]} tiles"
            refined = models.refiner(image, refine_prompt, refine_settings, seed=seed,
                                     progress=lambda done, total, label=label: report(label, done, total))  # fmt: skip
            image = refined.image
            record_chain.append({"step": "tile_refine", "size": list(target), "prompt": refine_prompt,
                                 "settings": refine_settings.as_dict()})  # fmt: skip
            passes = sum(1 for done in record_chain if done["step"] == "tile_refine")
            key = "tile_refine" if passes == 1 else f"tile_refine{passes}"
            timings.update({f"{key}_{name}": seconds for name, seconds in refined.timings.items()})
    if image.shape[:2] != (final[1], final[0]):
        image = resize_equirect(image, *final)
    record = {
        "preset": preset.name,
        "prompt": settings.prompt_prefix + prompt + settings.prompt_suffix,
        "settings": settings.as_dict(),
        "chain": record_chain,
        "sr": sr,
        "final_pass": final_pass,
        "size": list(final),
    }
    return Stage2Result(image=image, completion=result, timings=timings, record=record)
