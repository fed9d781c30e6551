"""``panostudy generate panorama`` and ``panostudy generate sets`` (stage 2, super-resolution, batch scene sets).

Added to the ``generate`` group by :func:`add_stage2_commands`. torch and diffusers are imported inside the
commands only, so ``panostudy --help`` stays light. Options left at their default take the preset's value
(:mod:`generator.stage2`); given, they override it and the manifest records the resolved value.
"""

from __future__ import annotations

import json
import math
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from study.errors import PanostudyError, StimulusError

# Options shared by `generate panorama` and `generate sets`, defined once.
SizeOption = Annotated[
    Optional[str], typer.Option(help="Final size, 2:1 (e.g. 4096x2048, 8192x4096); default the preset's.")
]
PanoramaSizeOption = Annotated[Optional[str], typer.Option(help="Completion canvas size, 2:1; default the preset's.")]
StepsOption = Annotated[Optional[int], typer.Option(help="Completion denoising steps; default the preset's.", min=1)]
GuidanceOption = Annotated[Optional[float], typer.Option(help="Completion classifier-free guidance; default the preset's.")]
PromptPrefixOption = Annotated[
    Optional[str], typer.Option(help="Put before the prompt; default the preset's (Diffusion360: '<360panorama>, ').")
]
Fp16Option = Annotated[bool, typer.Option(help="Half precision (GPU).")]
CpuOffloadOption = Annotated[bool, typer.Option(help="Keep models on the CPU until used (GPU memory).")]
VaeTilingOption = Annotated[bool, typer.Option(help="Tiled VAE decoding (GPU memory).")]
SrTileOption = Annotated[int, typer.Option(help="Super-resolution tile size in input pixels.")]
SrWeightsOption = Annotated[
    Optional[Path], typer.Option(help="Real-ESRGAN .pth/.safetensors (Diffusion360: RealESRGAN_x2plus.pth).")
]
ControlNetOption = Annotated[
    Optional[str], typer.Option(help="Completion ControlNet: folder, hub id or .safetensors/.ckpt (Diffusion360 sd-i2p).")
]
SrBaseOption = Annotated[
    Optional[str], typer.Option(help="Tile-refinement base model (Diffusion360 sr-base; needs --sr-control).")
]
SrBaseConfigOption = Annotated[Optional[str], typer.Option(help="For a single-file --sr-base: its config source.")]
SrControlOption = Annotated[
    Optional[str], typer.Option(help="Tile ControlNet (Diffusion360 sr-control; needs --sr-base).")
]
RefineStrengthOption = Annotated[
    Optional[float], typer.Option(help="Strength of every tile refinement, 0..1; default the preset's (0.8 / 0.3).")
]
Diffusion360Option = Annotated[
    Optional[Path],
    typer.Option(help="Diffusion360's model folder (sd-i2p/, sr-base/, sr-control/, RealESRGAN_x2plus.pth): fills the "
                      "stage-2 models and makes diffusion360 the preset."),  # fmt: skip
]
PresetOption = Annotated[
    str,
    typer.Option(help="auto (diffusion360 when its models are given, else panostudy), diffusion360 or panostudy."),
]
SrOption = Annotated[bool, typer.Option("--sr/--no-sr", help="Run the super-resolution chain (off: completion only).")]
FinalPassOption = Annotated[
    bool, typer.Option("--final-pass/--no-final-pass", help="The chain's optional last refinement (Diffusion360: 6144 px).")
]

#: Shown by every generate command that runs the tiny model (the default without --model), once all checks passed.
PLACEHOLDER_NOTE = (
    "note: model 'tiny' (the default without --model): the offline random-weight model. Its images are "
    "PLACEHOLDERS, NOT MEANINGFUL (noise shaped by random weights), for checking the workflow only. For real "
    "stimuli pass --model (stage 1: stable-diffusion-v1-5/stable-diffusion-v1-5 or a local folder) and, for "
    "panoramas, --diffusion360 DIR or --controlnet."
)
SEAM_MEANING = (
    "seam at ±180°, lower is better: about 1 means the wrap is as smooth as any two neighbouring columns, a "
    "visible seam scores well above 1"
)


def _check_refine_options(sr_base: str | None, sr_control: str | None, sr_tile: int,
                          refine_strength: float | None) -> None:
    """The super-resolution options, checked before any model loads (they are used only at the chain's end)."""
    if (sr_base is None) != (sr_control is None):
        raise PanostudyError("--sr-base and --sr-control: give both (Diffusion360's sr-base and sr-control) or neither")
    if sr_tile < 8:
        raise PanostudyError(f"--sr-tile {sr_tile}: a tile needs at least 8 input pixels; 256 is the default")
    if refine_strength is not None and not 0 <= refine_strength <= 1:
        raise PanostudyError(f"--refine-strength {refine_strength:g}: give a strength in 0..1 (0.8 for Diffusion360's "
                             "sr-base, 0.3 for panostudy's), or leave it out for the preset's")


def _completion_overrides(panorama_size, steps, guidance, prompt_prefix, blend=None, wrap_decode=None) -> dict:
    """PanoramaSettings fields the user gave (None: keep the preset's)."""
    from generator.upscale import parse_size

    if guidance is not None and not 0 <= guidance < math.inf:
        raise PanostudyError(f"--guidance {guidance:g}: give a finite classifier-free guidance scale of 0 or more, "
                             "e.g. 7 (or leave it out for the preset's)")

    width, height = parse_size(panorama_size, "--panorama-size") if panorama_size else (None, None)
    return dict(width=width, height=height, steps=steps, guidance_scale=guidance, prompt_prefix=prompt_prefix,
                circular_blending=blend, wrap_decode=wrap_decode)  # fmt: skip


@contextmanager
def _notices_as_they_come():
    """Print mask-fitting notices raised inside at once as one-line ``note:``s; other warnings as usual."""
    from generator.scene_spec import MaskResizeWarning
    from panostudy.cli._console import err_console

    with warnings.catch_warnings():
        warnings.simplefilter("always", MaskResizeWarning)
        original = warnings.showwarning

        def show(message, category, *args, **kwargs):
            if issubclass(category, MaskResizeWarning):
                err_console.print(f"[yellow]note:[/] {message}", highlight=False, soft_wrap=True)
            else:
                original(message, category, *args, **kwargs)

        warnings.showwarning = show
        yield


def print_seams(final, completion, unblended=None) -> None:
    """The seam scores of the final panorama and of the completion with their meaning, and, if measured, those
    of the same-seed completion without blending."""
    from generator.seams import interior_discontinuity, seam_scores

    from panostudy.cli._console import console

    after, before = seam_scores(final), seam_scores(completion)
    console.print(SEAM_MEANING, soft_wrap=True, highlight=False)
    console.print(
        f"  final {final.shape[1]}x{final.shape[0]}: Discontinuity Score {after['discontinuity']:.2f}, wrap-L1 ratio "
        f"{after['wrap_l1_ratio']:.2f} (this panorama's interior column boundaries: DS median "
        f"{interior_discontinuity(final):.2f})",
        soft_wrap=True,
        highlight=False,
    )
    line = (f"  completion {completion.shape[1]}x{completion.shape[0]}: DS {before['discontinuity']:.2f}, wrap-L1 "
            f"{before['wrap_l1_ratio']:.2f}")  # fmt: skip
    if unblended is not None:
        off = seam_scores(unblended)
        line += f"; without Eq. 4 blending and wrap decoding (same seed): DS {off['discontinuity']:.2f}, " \
                f"wrap-L1 {off['wrap_l1_ratio']:.2f}"  # fmt: skip
    console.print(line, soft_wrap=True, highlight=False)


def add_stage2_commands(generate_app: typer.Typer) -> None:
    """Add the ``panorama`` and ``sets`` commands to the ``generate`` group."""

    @generate_app.command("panorama")
    def panorama(
        image: Path = typer.Argument(..., help="Input RGB image; becomes the front face (centre-cropped to a square)."),
        out: Path = typer.Option(..., "--out", help="Output .png/.jpg with GPano XMP; a JSON sidecar goes next to it."),
        prompt: str = typer.Option("a detailed 360 degree panorama", help="Text prompt for the completion."),
        model: Optional[str] = typer.Option(
            None, help="Base model: folder, hub id or .safetensors/.ckpt; default 'tiny' (offline random weights), "
                       "or sr-base with --diffusion360."),  # fmt: skip
        model_config: Optional[str] = typer.Option(None, help="For a single-file --model: its config source."),
        controlnet: ControlNetOption = None,
        diffusion360: Diffusion360Option = None,
        preset: PresetOption = "auto",
        sr_weights: SrWeightsOption = None,
        size: SizeOption = None,
        panorama_size: PanoramaSizeOption = None,
        steps: StepsOption = None,
        guidance: GuidanceOption = None,
        seed: int = typer.Option(0, help="Seed of the completion and refinements."),
        prompt_prefix: PromptPrefixOption = None,
        blend: bool = typer.Option(True, "--blend/--no-blend", help="Eq. 4 circular blending of the latent."),
        wrap_decode: bool = typer.Option(True, "--wrap-decode/--no-wrap-decode", help="Wrap-aware VAE decoding."),
        sr: SrOption = True,
        final_pass: FinalPassOption = True,
        fp16: Fp16Option = False,
        cpu_offload: CpuOffloadOption = False,
        vae_tiling: VaeTilingOption = False,
        sr_tile: SrTileOption = 256,
        sr_base: SrBaseOption = None,
        sr_base_config: SrBaseConfigOption = None,
        sr_control: SrControlOption = None,
        refine_strength: RefineStrengthOption = None,
        preview: bool = typer.Option(False, "--preview", help="Quick check: 512x256, 8 steps, no super-resolution."),
        compare_unblended: bool = typer.Option(
            False, "--compare-unblended", help="Also complete the same seed without Eq. 4 blending and print its seam."
        ),
    ) -> None:
        """Complete one image into a seamless 360° panorama (stage 2) and run the preset's super-resolution chain."""
        import dataclasses

        import numpy as np
        from PIL import Image

        from panostudy.cli._console import console, err_console

        _check_refine_options(sr_base, sr_control, sr_tile, refine_strength)
        if not image.is_file():
            raise StimulusError(f"{image}: no such image file")
        if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            raise StimulusError(f"--out {out}: must end in .png, .jpg or .jpeg")
        overrides = _completion_overrides(panorama_size, steps, guidance, prompt_prefix,
                                          None if blend else False, None if wrap_decode else False)  # fmt: skip
        from generator.panorama_pipeline import load_panorama_pipeline
        from generator.stage2 import (
            Stage2Models,
            check_chain,
            check_preset_name,
            choose_preset,
            customise,
            diffusion360_models,
            planned_chain,
            run_stage2,
        )
        from generator.upscale import load_sr_model, parse_size
        from generator.xmp import save_panorama
        from panostudy.cli._progress import GenerationProgress

        target = parse_size(size) if size else None
        check_preset_name(preset)
        if diffusion360 is not None:
            found = diffusion360_models(diffusion360)
            model, controlnet = model or found["panorama_model"], controlnet or found["controlnet"]
            sr_base, sr_control = sr_base or found["sr_base"], sr_control or found["sr_control"]
            sr_weights = sr_weights or Path(found["sr_weights"])
        model = model or "tiny"
        try:
            picture = np.asarray(Image.open(image).convert("RGB"))
        except OSError as exc:
            raise StimulusError(f"{image}: cannot read the image ({exc})") from None
        if preview:
            sr = False
            width = min(overrides["width"] or 512, 512)
            overrides = {**overrides, "width": width, "height": width // 2, "steps": min(overrides["steps"] or 8, 8)}
        device = "cuda" if _cuda_available() else "cpu"
        pipeline = load_panorama_pipeline(
            model, controlnet, device=device, fp16=fp16, cpu_offload=cpu_offload, vae_tiling=vae_tiling,
            config=model_config,
        )  # fmt: skip
        chosen = choose_preset(preset, diffusion360_folder=diffusion360 is not None,
                               conditioning_channels=pipeline.conditioning_channels, tiny=model == "tiny")  # fmt: skip
        chosen = customise(chosen, refine_strength=refine_strength, **overrides)
        pipeline.check_inputs(picture, chosen.completion)
        check_chain(chosen, sr=sr, has_sr_weights=sr_weights is not None, has_refiner=sr_base is not None)
        final = target or (chosen.final() if sr else (chosen.completion.width, chosen.completion.height))
        sr_model = load_sr_model(sr_weights, device=device, fp16=fp16) if sr_weights and sr else None
        refiner = None
        if sr_base is not None and sr:
            from generator.tile_refine import load_tile_refiner

            refiner = load_tile_refiner(sr_base, sr_control, device=device, fp16=fp16, cpu_offload=cpu_offload,
                                        vae_tiling=vae_tiling, config=sr_base_config)  # fmt: skip
            for step in planned_chain(chosen, sr=sr, final_pass=final_pass, has_refiner=True):
                if hasattr(step, "settings"):
                    refiner.check_inputs(final[1], final[0], step.settings)
        if model == "tiny":
            err_console.print(PLACEHOLDER_NOTE, style="yellow", highlight=False, soft_wrap=True)
        err_console.print(
            f"preset {chosen.name}: completion {chosen.completion.width}x{chosen.completion.height}, "
            f"{chosen.completion.steps} {chosen.completion.scheduler} steps, CFG {chosen.completion.guidance_scale:g}"
            f" → {final[0]}x{final[1]}", highlight=False, soft_wrap=True,
        )  # fmt: skip
        models = Stage2Models(completion=pipeline, sr_model=sr_model, refiner=refiner)
        hint = "" if preview or model == "tiny" else "--preview checks the input in a few steps."
        with GenerationProgress(device, hint=hint) as progress:
            result = run_stage2(picture, prompt, chosen, models, seed=seed, size=final, sr=sr, final_pass=final_pass,
                                sr_tile=sr_tile, progress=progress)  # fmt: skip
            unblended = None
            if compare_unblended:
                settings = dataclasses.replace(chosen.completion, circular_blending=False, wrap_decode=False)
                unblended = pipeline(picture, prompt, settings, seed=seed,
                                     progress=lambda done, total: progress("completion without blending", done, total)).image  # fmt: skip
        save_panorama(result.image, out)
        sidecar = out.with_suffix(".json")
        sidecar.write_text(json.dumps(_panorama_sidecar(image, model, controlnet, sr_weights, sr_base, sr_control,
                                                        result, unblended, preview, device), indent=2) + "\n",
                           encoding="utf-8")  # fmt: skip
        console.print(f"wrote {out} ({final[0]}x{final[1]}) and {sidecar.name}", soft_wrap=True)
        print_seams(result.image, result.completion.image, unblended)
        if preview:
            err_console.print("[bold yellow]note:[/] preview: small and few steps, for checking the input, not a stimulus")

    @generate_app.command("sets")
    def sets(
        scenes: Path = typer.Option(Path("data/scenes"), help="Folder of scene spec .toml files."),
        per_scene: int = typer.Option(..., "--per-scene", help="Panoramas per scene."),
        out: Path = typer.Option(..., "--out", help="Output folder (stimuli/); holds manifest.jsonl."),
        model: Optional[str] = typer.Option(
            None, help="Stage-1 model: hub id, folder or .safetensors/.ckpt; default 'tiny' (offline random weights, "
                       "placeholder images)."),  # fmt: skip
        model_config: Optional[str] = typer.Option(None, help="For a single-file --model: its config source."),
        controlnet: ControlNetOption = None,
        panorama_model: Optional[str] = typer.Option(None, help="Stage-2 base model (default: the stage-1 model)."),
        panorama_model_config: Optional[str] = typer.Option(None, help="For a single-file --panorama-model: its config."),
        diffusion360: Diffusion360Option = None,
        preset: PresetOption = "auto",
        sr_weights: SrWeightsOption = None,
        size: SizeOption = None,
        panorama_size: PanoramaSizeOption = None,
        steps: StepsOption = None,
        guidance: GuidanceOption = None,
        prompt_prefix: PromptPrefixOption = None,
        stage1_size: Optional[int] = typer.Option(None, help="Override the specs' stage-1 image height."),
        stage1_steps: Optional[int] = typer.Option(None, help="Override the specs' stage-1 step count."),
        mask_fit: Optional[str] = typer.Option(None, help="Masks of another aspect: crop or letterbox (default: spec's)."),
        guide_tokens: str = typer.Option("phrase", help="Guide each object's whole phrase, or only its head noun."),
        rank: Optional[int] = typer.Option(None, help="This process's rank (default: from accelerate, else 0)."),
        world_size: Optional[int] = typer.Option(None, help="Number of processes (default: from accelerate, else 1)."),
        sr: SrOption = True,
        final_pass: FinalPassOption = True,
        fp16: Fp16Option = False,
        cpu_offload: CpuOffloadOption = False,
        vae_tiling: VaeTilingOption = False,
        sr_tile: SrTileOption = 256,
        sr_base: SrBaseOption = None,
        sr_base_config: SrBaseConfigOption = None,
        sr_control: SrControlOption = None,
        refine_strength: RefineStrengthOption = None,
        preview: bool = typer.Option(False, "--preview", help="Quick check of the specs: small sizes, few steps, no SR."),
        image_format: str = typer.Option("png", "--format", help="png or jpg."),
    ) -> None:
        """Stage 1 + stage 2 for every scene spec: resumable, shardable (accelerate launch or --rank/--world-size)."""
        from generator.batch import generate_sets
        from generator.mask_guided_pipeline import GUIDE_TOKENS
        from generator.masks import MASK_FITS
        from generator.upscale import parse_size
        from panostudy.cli._console import err_console
        from panostudy.cli._progress import GenerationProgress

        _check_refine_options(sr_base, sr_control, sr_tile, refine_strength)
        if stage1_size is not None and not (stage1_size >= 8 and stage1_size % 8 == 0):
            raise PanostudyError(f"--stage1-size {stage1_size}: the stage-1 height must be a positive multiple of 8, "
                                 "e.g. 512")
        if stage1_steps is not None and stage1_steps < 1:
            raise PanostudyError(f"--stage1-steps {stage1_steps}: give at least 1 denoising step, e.g. 50")
        if world_size is not None and world_size < 1:
            raise PanostudyError(f"--world-size {world_size}: give the number of processes, 1 or more")
        if mask_fit is not None and mask_fit not in MASK_FITS:
            raise PanostudyError(f"--mask-fit {mask_fit}: use one of {', '.join(MASK_FITS)}")
        if guide_tokens not in GUIDE_TOKENS:
            raise PanostudyError(f"--guide-tokens {guide_tokens}: use one of {', '.join(GUIDE_TOKENS)}")
        overrides = _completion_overrides(panorama_size, steps, guidance, prompt_prefix)
        target = parse_size(size) if size else None
        model = model or "tiny"
        placeholder = "tiny" in (model, panorama_model)
        device = "cuda" if _cuda_available() else "cpu"
        # The note comes with the first bar: after generate_sets has checked every option and loaded the models.
        # --preview is worth suggesting only when it is not on and real weights make the run long.
        hint = "" if preview or placeholder else "`panostudy generate sets --preview` checks the specs quickly."
        progress = GenerationProgress(device, hint=hint, notice=PLACEHOLDER_NOTE if placeholder else "")
        with _notices_as_they_come(), progress:
            result = generate_sets(
                scenes, per_scene, model, out, rank=rank, world_size=world_size, progress=progress,
                controlnet=controlnet, panorama_model=panorama_model, sr_weights=sr_weights, size=target,
                preset=preset, overrides=overrides, stage1_size=stage1_size, stage1_steps=stage1_steps, fp16=fp16,
                cpu_offload=cpu_offload, vae_tiling=vae_tiling, sr_tile=sr_tile, image_format=image_format,
                sr_base=sr_base, sr_control=sr_control, refine_strength=refine_strength, diffusion360=diffusion360,
                model_config=model_config, panorama_model_config=panorama_model_config, sr_base_config=sr_base_config,
                sr=sr, final_pass=final_pass, mask_fit=mask_fit, guide_tokens=guide_tokens, preview=preview,
            )  # fmt: skip
        _print_set(result)


def _print_set(result) -> None:
    """What one process made, with the meaning of its numbers."""
    from rich.table import Table

    from panostudy.cli._console import console

    shard = f"rank {result.rank}/{result.world_size}: " if result.world_size > 1 else ""  # only a sharded run has ranks
    console.print(
        f"{shard}made {len(result.written)}, skipped {result.skipped} already finished; manifest {result.manifest}",
        soft_wrap=True, highlight=False,
    )  # fmt: skip
    if not result.written:
        return
    console.print(
        "mask alignment = mean share of each object's attention inside its mask (attention spread evenly would "
        f"give the mask area); {SEAM_MEANING}",
        soft_wrap=True,
    )
    table = Table(box=None, pad_edge=False)
    # Nothing is cut at 80 columns: ids and presets keep their width, the headers take two lines.
    table.add_column("panorama", no_wrap=True, min_width=max(len(entry["id"]) for entry in result.written))
    table.add_column("preset", no_wrap=True, min_width=max(len(entry["stage2"]["preset"]) for entry in result.written))
    for header in ("mask\nalignment", "mask\narea", "seam DS", "seam DS\nbefore SR"):
        table.add_column(header, justify="right", no_wrap=True)
    for entry in result.written:
        alignment = entry["stage1"]["mask_alignment"]
        area = entry["stage1"]["mask_area"]
        table.add_row(
            entry["id"], entry["stage2"]["preset"], f"{sum(alignment.values()) / len(alignment):.2f}",
            f"{sum(area.values()) / len(area):.2f}", f"{entry['seams']['discontinuity']:.2f}",
            f"{entry['seams_before_sr']['discontinuity']:.2f}",
        )  # fmt: skip
    console.print(table)


def _panorama_sidecar(image, model, controlnet, sr_weights, sr_base, sr_control, result, unblended, preview, device):
    """The JSON sidecar of ``generate panorama``: input, models, the preset and every resolved setting, seams."""
    import diffusers
    import torch

    from generator.manifest import file_sha256, model_fingerprint
    from generator.seams import seam_scores

    def fingerprint(reference):
        return None if reference is None else model_fingerprint(str(reference))

    return {
        "kind": "panorama",
        "placeholder_not_meaningful": model == "tiny",
        "preview": preview,
        "input": {"path": str(image), "sha256": file_sha256(image)},
        "models": {"base": fingerprint(model), "controlnet": fingerprint(controlnet),
                   "sr_weights": fingerprint(sr_weights), "sr_base": fingerprint(sr_base),
                   "sr_control": fingerprint(sr_control)},  # fmt: skip
        "stage2": result.record,
        "seams_before_sr": seam_scores(result.completion.image),
        "seams": seam_scores(result.image),
        "seams_without_blending": None if unblended is None else seam_scores(unblended),
        "timings": result.timings,
        "device": device,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "created_at": datetime.now(timezone.utc).isoformat(),
    }


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
