"""`panostudy generate`: make stimuli. ``generate image`` runs stage 1 (mask-guided Stable Diffusion) once.

torch and diffusers are imported inside the commands only, so ``panostudy --help`` stays light.
"""

from __future__ import annotations

import json
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from panostudy.cli._generate_stage2 import PLACEHOLDER_NOTE, add_stage2_commands
from study.errors import PanostudyError

generate_app = typer.Typer(
    name="generate",
    help="Make stimuli: mask-guided images (stage 1), seamless 360° panoramas (stage 2), whole scene sets.",
    no_args_is_help=True,
)

#: Side of the offline tiny model's images: its native size; larger sizes cost time and mean nothing more.
TINY_SIDE = 64

#: Stage-1 image side and steps of ``--preview`` with real weights: enough to judge a layout, a fraction of the time.
PREVIEW_SIDE = 256
PREVIEW_STEPS = 10
PREVIEW_HINT = "--preview checks a scene spec at a small size in a few steps."

ModelConfigOption = Annotated[
    Optional[str],
    typer.Option(
        "--model-config",
        help="For a single-file --model: its configs and tokenizer (sd15, sd15-inpainting, sd21-base, a diffusers "
        "folder or a cached hub id); default from the architecture detected in the file.",
    ),
]
MaskFitOption = Annotated[
    Optional[str],
    typer.Option(
        "--mask-fit",
        help="Masks of another aspect than the image: crop (centre square, default) or letterbox; overrides the spec.",
    ),
]
GuideTokensOption = Annotated[
    str,
    typer.Option(
        "--guide-tokens",
        help="Guide each object's whole phrase (summed token maps, default) or only its head noun (BoxDiff-style).",
    ),
]


def load_spec_with_notices(scene: Path, mask_fit: str | None):
    """The scene spec, its mask-fitting notices printed as they come."""
    from generator.masks import MASK_FITS

    if mask_fit is not None and mask_fit not in MASK_FITS:
        raise PanostudyError(f"--mask-fit {mask_fit}: use one of {', '.join(MASK_FITS)}")
    from generator.scene_spec import MaskResizeWarning, load_scene_spec

    from panostudy.cli._console import err_console

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = load_scene_spec(scene, mask_fit=mask_fit)
    for warning in caught:  # mask fitting is a notice of what was done; anything else is a warning
        kind = "note" if issubclass(warning.category, MaskResizeWarning) else "warning"
        err_console.print(f"[yellow]{kind}:[/] {warning.message}", highlight=False, soft_wrap=True)
    return spec


def stage1_size(spec, side: int) -> tuple[int, int]:
    """``(height, width)`` with height ``side`` and the spec's aspect, width a multiple of 8."""
    return side, max(8, round(side * spec.width / spec.height / 8) * 8)


@generate_app.command("image")
def image(
    scene: Annotated[Path, typer.Option("--scene", help="Scene spec TOML (e.g. data/scenes/vehicle.toml).")],
    out: Annotated[Path, typer.Option("--out", help="PNG to write; a JSON sidecar with the metadata goes next to it.")],
    model: Annotated[
        Optional[str],
        typer.Option(
            help="Hub id, local diffusers folder or .safetensors/.ckpt file; omit (or 'tiny') for the offline "
            "placeholder model."
        ),
    ] = None,
    model_config: ModelConfigOption = None,
    layout: Annotated[Optional[str], typer.Option(help="Layout name of the spec; default the spec's first job.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Noise seed; default the spec's seed for that layout.", min=0)] = None,
    steps: Annotated[Optional[int], typer.Option(help="Denoising steps; default the spec's.", min=1)] = None,
    guided_steps: Annotated[
        Optional[int], typer.Option(help="Steps with mask guidance; default half of the steps.", min=0)
    ] = None,
    size: Annotated[
        Optional[int], typer.Option(help="Image height in pixels (width keeps the spec's aspect); default the spec's.", min=8)
    ] = None,
    mask_fit: MaskFitOption = None,
    guide_tokens: GuideTokensOption = "phrase",
    preview: Annotated[
        bool, typer.Option("--preview", help=f"Quick check of a spec: {PREVIEW_SIDE} px, {PREVIEW_STEPS} steps (real weights).")
    ] = False,
    compare_unguided: Annotated[
        bool,
        typer.Option("--compare-unguided", help="Also run the same seed without guidance and print both alignments."),
    ] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Half precision (GPU only).")] = False,
    attention_slicing: Annotated[bool, typer.Option("--attention-slicing", help="Less GPU memory, a little slower.")] = False,
) -> None:
    """Generate one mask-guided image (stage 1) for a scene spec, with its mask-alignment scores."""
    from panostudy.cli._console import console, err_console

    if out.suffix.lower() != ".png":
        raise PanostudyError(f"--out {out}: write a .png file (the sidecar goes to {out.with_suffix('.json').name})")
    from generator.mask_guided_pipeline import GUIDE_TOKENS

    if guide_tokens not in GUIDE_TOKENS:
        raise PanostudyError(f"--guide-tokens {guide_tokens}: use one of {', '.join(GUIDE_TOKENS)}")
    spec = load_spec_with_notices(scene, mask_fit)
    chosen_layout, chosen_seed = _layout_and_seed(spec, layout, seed)
    placeholder = model in (None, "tiny")
    steps = steps or spec.steps
    if preview:
        steps = min(steps, 4 if placeholder else PREVIEW_STEPS)
    guided_steps = steps // 2 if guided_steps is None else guided_steps
    if guided_steps > steps:
        raise PanostudyError(f"--guided-steps {guided_steps}: at most --steps ({steps})")
    side = size or (TINY_SIDE if placeholder else min(spec.height, PREVIEW_SIDE) if preview else spec.height)
    height, width = stage1_size(spec, side)
    if height % 8:
        raise PanostudyError(f"--size {size}: must be a multiple of 8, e.g. 512")

    import torch

    from generator.masks import fit_masks
    from generator.mask_guided_pipeline import load_mask_guided_pipeline
    from panostudy.cli._progress import GenerationProgress

    masks, _ = fit_masks(spec.masks(chosen_layout), height, width, spec.mask_fit)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipeline = load_mask_guided_pipeline(
        model, device=device, fp16=fp16, attention_slicing=attention_slicing, config=model_config
    )
    pipeline.set_progress_bar_config(disable=True)
    if placeholder:  # every option and the model checked: nothing but the note before the bars
        err_console.print(PLACEHOLDER_NOTE, style="yellow", highlight=False, soft_wrap=True)

    def generate(progress, stage: str, step_size: float):
        progress(stage, 0, steps)
        return pipeline(
            prompt=spec.prompt,
            objects=spec.objects,
            masks=masks,
            negative_prompt=spec.negative_prompt or None,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=spec.guidance_scale,
            guided_steps=guided_steps,
            step_size=step_size,
            guide_tokens=guide_tokens,
            generator=torch.Generator("cpu").manual_seed(chosen_seed),
            callback_on_step_end=lambda pipe, step, timestep, tensors: progress(stage, step + 1, steps) or {},
        )

    started = time.perf_counter()
    with GenerationProgress(device, hint="" if preview or placeholder else PREVIEW_HINT) as progress:
        output = generate(progress, f"stage 1 {spec.scene}/{chosen_layout}", 20.0)
        elapsed = time.perf_counter() - started
        unguided = generate(progress, "stage 1 unguided reference", 0.0) if compare_unguided else None

    sidecar = out.with_suffix(".json")
    area = {label: float(masks[label].mean()) for label in spec.objects}
    metadata = _metadata(spec, chosen_layout, chosen_seed, model, placeholder, steps, guided_steps, height, width,
                         fp16, device, output, elapsed)  # fmt: skip
    metadata.update(
        model_config=model_config,
        preview=preview,
        guide_tokens=guide_tokens,
        mask_fit=spec.mask_fit,
        mask_area=area,
        unguided_mask_alignment=None if unguided is None else unguided.mask_alignment,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    output.images[0].save(out)
    sidecar.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")

    console.print(f"wrote {out} and {sidecar.name} ({width}x{height}, {steps} steps, {elapsed:.1f} s)", soft_wrap=True)
    print_alignment(output.mask_alignment, area, None if unguided is None else unguided.mask_alignment)
    if preview:
        err_console.print("[bold yellow]note:[/] preview: small and few steps, for checking the spec, not a stimulus")
    if placeholder:
        err_console.print("[bold yellow]note:[/] placeholder image from the tiny random model, not meaningful")


def print_alignment(alignment: dict[str, float], area: dict[str, float], unguided: dict[str, float] | None) -> None:
    """Mask alignment per object with its meaning: the share of the object's attention inside its mask, beside
    the mask's area (what attention spread evenly over the image would give) and, if measured, the unguided run."""
    from rich.table import Table

    from panostudy.cli._console import console

    console.print(
        "mask alignment: the share of each object's cross-attention that lies inside its mask at the end of "
        "guidance (1.00 = all inside; attention spread evenly would give the mask's share of the image)",
        soft_wrap=True,
    )
    table = Table(box=None, pad_edge=False)
    for column in ("object", "alignment", "mask area", *(["unguided, same seed"] if unguided else [])):
        table.add_column(column, justify="left" if column == "object" else "right")
    for label, share in alignment.items():
        table.add_row(label, f"{share:.2f}", f"{area[label]:.2f}", *([f"{unguided[label]:.2f}"] if unguided else []))
    console.print(table)


def _layout_and_seed(spec, layout: str | None, seed: int | None) -> tuple[str, int]:
    """The layout and seed to use: given ones, else the spec's first job (for that layout)."""
    jobs = [(job_layout.name, job_seed) for job_layout, job_seed in spec.jobs()]
    if layout is None:
        layout = jobs[0][0]
    else:
        spec.layout(layout)  # raises with the known names
    if seed is None:
        seed = next((job_seed for name, job_seed in jobs if name == layout), spec.seeds[0])
    return layout, seed


def _metadata(spec, layout, seed, model, placeholder, steps, guided_steps, height, width, fp16, device, output,
              elapsed) -> dict:
    import diffusers
    import torch

    from generator.manifest import file_sha256

    chosen = spec.layout(layout)
    return {
        "kind": "stage1_image",
        "placeholder_not_meaningful": placeholder,
        "scene": spec.scene,
        "spec": str(spec.path),
        "spec_sha256": file_sha256(spec.path),
        "layout": layout,
        "masks": {
            "format": chosen.format,
            "path": str(chosen.path),
            "image": chosen.image,
            "legend": None if chosen.legend is None else str(chosen.legend),
            "sha256": file_sha256(chosen.path),
        },
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "objects": dict(spec.objects),
        "model": "tiny" if placeholder else model,
        "seed": seed,
        "height": height,
        "width": width,
        "steps": steps,
        "guided_steps": guided_steps,
        "guidance_scale": spec.guidance_scale,
        "attention_resolution": list(output.attention_resolution),
        "mask_alignment": output.mask_alignment,
        "end_of_guidance_loss": output.end_of_guidance_loss,
        "loss_history": output.loss_history,
        "fp16": fp16,
        "device": device,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "elapsed_s": round(elapsed, 3),
        "created_at": datetime.now(timezone.utc).isoformat(),
    }


add_stage2_commands(generate_app)  # ``generate panorama`` and ``generate sets`` (stage 2, batch scene sets)


def register(app: typer.Typer) -> None:
    """Adds the ``generate`` group to the root app."""
    app.add_typer(generate_app, name="generate")
