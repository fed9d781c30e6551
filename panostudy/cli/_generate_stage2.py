"""``panostudy generate panorama`` and ``panostudy generate sets`` (stage 2, super-resolution, batch scene sets).

Added to the ``generate`` group by :func:`add_stage2_commands`. torch and diffusers are imported inside the
commands only, so ``panostudy --help`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from study.errors import PanostudyError, StimulusError

# Options shared by `generate panorama` and `generate sets`, defined once.
SizeOption = Annotated[str, typer.Option(help="Final size, 2:1 (4096x2048 or 8192x4096).")]
PanoramaSizeOption = Annotated[str, typer.Option(help="Completion canvas size, 2:1.")]
Fp16Option = Annotated[bool, typer.Option(help="Half precision (GPU).")]
CpuOffloadOption = Annotated[bool, typer.Option(help="Keep models on the CPU until used (GPU memory).")]
VaeTilingOption = Annotated[bool, typer.Option(help="Tiled VAE decoding (GPU memory).")]
SrTileOption = Annotated[int, typer.Option(help="Super-resolution tile size in input pixels.")]
SrBaseOption = Annotated[
    Optional[str], typer.Option(help="Tile-refinement base model (Diffusion360 sr-base; needs --sr-control).")
]
SrControlOption = Annotated[Optional[str], typer.Option(help="Tile ControlNet (Diffusion360 sr-control; needs --sr-base).")]
RefineStrengthOption = Annotated[float, typer.Option(help="Tile-refinement img2img strength, 0..1.")]

TINY_NOTE = (
    "model 'tiny': the offline random-weight model; its panoramas are PLACEHOLDERS (noise), for checking the "
    "workflow only. Pass real weights with --model/--controlnet for stimuli."
)


def _panorama_settings(panorama_size: str, steps: int, guidance: float, blend: bool, wrap_decode: bool, prefix: str):
    from generator.panorama_pipeline import PanoramaSettings
    from generator.upscale import parse_size

    width, height = parse_size(panorama_size)
    return PanoramaSettings(
        height=height,
        width=width,
        steps=steps,
        guidance_scale=guidance,
        circular_blending=blend,
        wrap_decode=wrap_decode,
        prompt_prefix=prefix,
    )


def _check_refine_options(sr_base: str | None, sr_control: str | None) -> None:
    if (sr_base is None) != (sr_control is None):
        raise PanostudyError("--sr-base and --sr-control: give both (Diffusion360's sr-base and sr-control) or neither")


def add_stage2_commands(generate_app: typer.Typer) -> None:
    """Add the ``panorama`` and ``sets`` commands to the ``generate`` group."""

    @generate_app.command("panorama")
    def panorama(
        image: Path = typer.Argument(..., help="Input RGB image; becomes the front face (centre-cropped to a square)."),
        out: Path = typer.Option(..., "--out", help="Output .png/.jpg, written with GPano XMP metadata."),
        prompt: str = typer.Option("a detailed 360 degree panorama", help="Text prompt for the completion."),
        model: str = typer.Option("tiny", help="Base model folder or hub id ('tiny' = offline random weights)."),
        controlnet: str | None = typer.Option(None, help="ControlNet folder or hub id (sd-i2p or control_v11p_sd15_inpaint)."),
        sr_weights: Path | None = typer.Option(None, help="Real-ESRGAN .pth/.safetensors; without it the panorama is resized."),
        size: SizeOption = "4096x2048",
        panorama_size: PanoramaSizeOption = "1024x512",
        steps: int = typer.Option(20, help="Denoising steps."),
        guidance: float = typer.Option(7.0, help="Classifier-free guidance scale."),
        seed: int = typer.Option(0, help="Seed of the completion."),
        prompt_prefix: str = typer.Option("", help="Put before the prompt (Diffusion360: '<360panorama>, ')."),
        blend: bool = typer.Option(True, "--blend/--no-blend", help="Eq. 4 circular blending of the latent."),
        wrap_decode: bool = typer.Option(True, "--wrap-decode/--no-wrap-decode", help="Wrap-aware VAE decoding."),
        fp16: Fp16Option = False,
        cpu_offload: CpuOffloadOption = False,
        vae_tiling: VaeTilingOption = False,
        sr_tile: SrTileOption = 256,
        sr_base: SrBaseOption = None,
        sr_control: SrControlOption = None,
        refine_strength: RefineStrengthOption = 0.3,
    ) -> None:
        """Complete one image into a seamless 360° panorama (stage 2) and upscale it."""
        import numpy as np
        from PIL import Image

        from panostudy.cli._console import console, err_console

        _check_refine_options(sr_base, sr_control)
        if not image.is_file():
            raise StimulusError(f"{image}: no such image file")
        if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            raise StimulusError(f"--out {out}: must end in .png, .jpg or .jpeg")
        settings = _panorama_settings(panorama_size, steps, guidance, blend, wrap_decode, prompt_prefix)
        from generator.panorama_pipeline import load_panorama_pipeline
        from generator.seams import seam_scores
        from generator.upscale import load_sr_model, parse_size, upscale_panorama
        from generator.xmp import save_panorama

        target = parse_size(size)
        if model == "tiny":
            err_console.print(TINY_NOTE, style="yellow", highlight=False)
        try:
            picture = np.asarray(Image.open(image).convert("RGB"))
        except OSError as exc:
            raise StimulusError(f"{image}: cannot read the image ({exc})") from None
        device = "cuda" if _cuda_available() else "cpu"
        sr_model = load_sr_model(sr_weights, device=device, fp16=fp16) if sr_weights else None
        pipeline = load_panorama_pipeline(
            model, controlnet, device=device, fp16=fp16, cpu_offload=cpu_offload, vae_tiling=vae_tiling
        )
        pipeline.check_inputs(picture, settings)
        refiner = None
        if sr_base is not None:
            from generator.tile_refine import TileRefineSettings, load_tile_refiner

            refine_settings = TileRefineSettings(strength=refine_strength)
            refiner = load_tile_refiner(
                sr_base, sr_control, device=device, fp16=fp16, cpu_offload=cpu_offload, vae_tiling=vae_tiling
            )
            refiner.check_inputs(target[1], target[0], refine_settings)
        with _progress_bar("completing") as advance:
            result = pipeline(picture, prompt, settings, seed=seed, progress=lambda done, total: advance(done, total))
        final = upscale_panorama(result.image, sr_model, size=target, tile=sr_tile)
        if refiner is not None:
            final = refiner(final, prompt, refine_settings, seed=seed).image
        save_panorama(final, out)
        scores = seam_scores(final)
        console.print(
            f"wrote {out} ({target[0]}x{target[1]}); seam discontinuity {scores['discontinuity']:.3f}, "
            f"wrap-L1 ratio {scores['wrap_l1_ratio']:.2f}",
            soft_wrap=True,
        )

    @generate_app.command("sets")
    def sets(
        scenes: Path = typer.Option(Path("data/scenes"), help="Folder of scene spec .toml files."),
        per_scene: int = typer.Option(..., "--per-scene", help="Panoramas per scene."),
        out: Path = typer.Option(..., "--out", help="Output folder (stimuli/); holds manifest.jsonl."),
        model: str | None = typer.Option(None, help="Stage-1 model (default: each spec's); 'tiny' = offline random."),
        controlnet: str | None = typer.Option(None, help="Stage-2 ControlNet folder or hub id."),
        panorama_model: str | None = typer.Option(None, help="Stage-2 base model (default: the stage-1 model)."),
        sr_weights: Path | None = typer.Option(None, help="Real-ESRGAN weights; without them panoramas are resized."),
        size: SizeOption = "4096x2048",
        panorama_size: PanoramaSizeOption = "1024x512",
        steps: int = typer.Option(20, help="Stage-2 denoising steps."),
        guidance: float = typer.Option(7.0, help="Stage-2 classifier-free guidance scale."),
        prompt_prefix: str = typer.Option("", help="Put before stage-2 prompts."),
        stage1_size: int | None = typer.Option(None, help="Override the specs' stage-1 image side."),
        stage1_steps: int | None = typer.Option(None, help="Override the specs' stage-1 step count."),
        rank: int | None = typer.Option(None, help="This process's rank (default: from accelerate, else 0)."),
        world_size: int | None = typer.Option(None, help="Number of processes (default: from accelerate, else 1)."),
        fp16: Fp16Option = False,
        cpu_offload: CpuOffloadOption = False,
        vae_tiling: VaeTilingOption = False,
        sr_tile: SrTileOption = 256,
        sr_base: SrBaseOption = None,
        sr_control: SrControlOption = None,
        refine_strength: RefineStrengthOption = 0.3,
        image_format: str = typer.Option("png", "--format", help="png or jpg."),
    ) -> None:
        """Stage 1 + stage 2 for every scene spec: resumable, shardable (accelerate launch or --rank/--world-size)."""
        from generator.batch import generate_sets
        from generator.upscale import parse_size
        from panostudy.cli._console import console, err_console

        _check_refine_options(sr_base, sr_control)
        settings = _panorama_settings(panorama_size, steps, guidance, True, True, prompt_prefix)
        target = parse_size(size)
        if model == "tiny":
            err_console.print(TINY_NOTE, style="yellow", highlight=False)
        with _progress_bar("scene set") as advance:
            result = generate_sets(
                scenes,
                per_scene,
                model,
                out,
                rank=rank,
                world_size=world_size,
                progress=lambda done, total, item: advance(done, total),
                controlnet=controlnet,
                panorama_model=panorama_model,
                sr_weights=sr_weights,
                size=target,
                settings=settings,
                stage1_size=stage1_size,
                stage1_steps=stage1_steps,
                fp16=fp16,
                cpu_offload=cpu_offload,
                vae_tiling=vae_tiling,
                sr_tile=sr_tile,
                image_format=image_format,
                sr_base=sr_base,
                sr_control=sr_control,
                refine_strength=refine_strength,
            )
        console.print(
            f"rank {result.rank}/{result.world_size}: made {len(result.written)}, skipped {result.skipped} "
            f"already finished; manifest {result.manifest}",
            soft_wrap=True,
        )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class _progress_bar:
    """A rich progress bar whose ``advance(done, total)`` sets the completed count."""

    def __init__(self, label: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from panostudy.cli._console import err_console

        self._progress = Progress(
            TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console, transient=True
        )
        self._task = None

    def __enter__(self):
        self._progress.start()
        self._task = self._progress.add_task("", total=None)

        def advance(done: int, total: int) -> None:
            self._progress.update(self._task, completed=done, total=total)

        return advance

    def __exit__(self, *exc_info) -> None:
        self._progress.stop()

