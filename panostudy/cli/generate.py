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

from panostudy.cli._generate_stage2 import add_stage2_commands
from study.errors import PanostudyError

generate_app = typer.Typer(
    name="generate",
    help="Make stimuli: mask-guided images (stage 1), seamless 360° panoramas (stage 2), whole scene sets.",
    no_args_is_help=True,
)

#: Side of the offline tiny model's images: its native size; larger sizes cost time and mean nothing more.
TINY_SIDE = 64
PLACEHOLDER_NOTE = (
    "no --model given: using the offline tiny random-weight model. Its images are PLACEHOLDERS, NOT MEANINGFUL "
    "(noise shaped by random weights, for checking the workflow only). Pass --model "
    "stable-diffusion-v1-5/stable-diffusion-v1-5 or a local diffusers folder for real stimuli."
)


@generate_app.command("image")
def image(
    scene: Annotated[Path, typer.Option("--scene", help="Scene spec TOML (e.g. data/scenes/vehicle.toml).")],
    out: Annotated[Path, typer.Option("--out", help="PNG to write; a JSON sidecar with the metadata goes next to it.")],
    model: Annotated[
        Optional[str],
        typer.Option(help="Hub id or local diffusers folder; omit (or 'tiny') for the offline placeholder model."),
    ] = None,
    layout: Annotated[Optional[str], typer.Option(help="Layout name of the spec; default the spec's first job.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Noise seed; default the spec's seed for that layout.", min=0)] = None,
    steps: Annotated[Optional[int], typer.Option(help="Denoising steps; default the spec's.", min=1)] = None,
    guided_steps: Annotated[
        Optional[int], typer.Option(help="Steps with mask guidance; default half of the steps.", min=0)
    ] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Half precision (GPU only).")] = False,
    attention_slicing: Annotated[bool, typer.Option("--attention-slicing", help="Less GPU memory, a little slower.")] = False,
) -> None:
    """Generate one mask-guided image (stage 1) for a scene spec, with its mask-alignment scores."""
    from panostudy.cli._console import console, err_console

    if out.suffix.lower() != ".png":
        raise PanostudyError(f"--out {out}: write a .png file (the sidecar goes to {out.with_suffix('.json').name})")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from generator.scene_spec import load_scene_spec

        spec = load_scene_spec(scene)
    for warning in caught:
        err_console.print(f"[yellow]warning:[/] {warning.message}", highlight=False, soft_wrap=True)
    chosen_layout, chosen_seed = _layout_and_seed(spec, layout, seed)
    steps = steps or spec.steps
    guided_steps = steps // 2 if guided_steps is None else guided_steps
    if guided_steps > steps:
        raise PanostudyError(f"--guided-steps {guided_steps}: at most --steps ({steps})")
    placeholder = model in (None, "tiny")
    if placeholder:
        err_console.print(f"[bold yellow]note:[/] {PLACEHOLDER_NOTE}", highlight=False, soft_wrap=True)
        height = TINY_SIDE
        width = max(8, round(TINY_SIDE * spec.width / spec.height / 8) * 8)
    else:
        height, width = spec.height, spec.width
    masks = spec.masks(chosen_layout)
    if masks.shape != (height, width):
        masks = masks.resized(height, width)

    import torch
    from rich.progress import Progress

    from generator.mask_guided_pipeline import load_mask_guided_pipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipeline = load_mask_guided_pipeline(model, device=device, fp16=fp16, attention_slicing=attention_slicing)
    pipeline.set_progress_bar_config(disable=True)
    started = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{spec.scene}/{chosen_layout} seed {chosen_seed}", total=steps)

        def advance(pipe, step, timestep, tensors):
            progress.advance(task)
            return {}

        output = pipeline(
            prompt=spec.prompt,
            objects=spec.objects,
            masks=masks,
            negative_prompt=spec.negative_prompt or None,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=spec.guidance_scale,
            guided_steps=guided_steps,
            generator=torch.Generator("cpu").manual_seed(chosen_seed),
            callback_on_step_end=advance,
        )
    elapsed = time.perf_counter() - started

    sidecar = out.with_suffix(".json")
    metadata = _metadata(spec, chosen_layout, chosen_seed, model, placeholder, steps, guided_steps, height, width,
                         fp16, device, output, elapsed)
    out.parent.mkdir(parents=True, exist_ok=True)
    output.images[0].save(out)
    sidecar.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")

    console.print(f"wrote {out} and {sidecar.name} ({width}x{height}, {steps} steps, {elapsed:.1f} s)", soft_wrap=True)
    scores = ", ".join(f"{label} {share:.2f}" for label, share in output.mask_alignment.items())
    console.print(f"attention share inside each mask at the end of guidance: {scores}")
    if placeholder:
        err_console.print("[bold yellow]note:[/] placeholder image from the tiny random model, not meaningful")


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
