"""Scene sets: stage 1 + stage 2 for every scene spec, resumable and sharded across processes.

Every (scene, layout, seed) item gets a global index (scene files in name order, then each spec's job order). A
process of a sharded run takes the items whose index modulo the world size equals its rank, so the union over
ranks is exactly the one-process set and every item is made with the same seeds wherever it runs. The rank and
world size come from Hugging Face accelerate (``accelerate launch -m panostudy generate sets ...``) or are given
explicitly (``--rank``/``--world-size``, e.g. one process per GPU started by hand or by a cluster scheduler).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from generator.manifest import (
    append_entry,
    file_sha256,
    finished_ids,
    merge_manifests,
    model_fingerprint,
    rank_manifest_path,
)
from generator.mask_guided_pipeline import load_mask_guided_pipeline
from generator.panorama_pipeline import PanoramaSettings, load_panorama_pipeline
from generator.projection import reprojection_error
from generator.scene_spec import Layout, SceneSpec, load_scene_spec
from generator.seams import seam_scores
from generator.tile_refine import TileRefineSettings, load_tile_refiner
from generator.upscale import DEFAULT_SIZE, load_sr_model, upscale_panorama
from generator.xmp import save_panorama
from study.errors import PanostudyError, SceneSpecError

MEMORY_ADVICE = (
    "cut memory with --fp16, --cpu-offload, --vae-tiling or a smaller --sr-tile, "
    "or spread the set over more GPUs with accelerate launch"
)


class GeneratorMemoryError(PanostudyError):
    """The accelerator ran out of memory; the message names the options that cut memory."""


@dataclass(frozen=True)
class SetItem:
    """One panorama of a scene set."""

    index: int
    spec: SceneSpec
    layout: Layout
    seed: int

    @property
    def id(self) -> str:
        return f"{self.spec.scene}/{self.layout.name}/s{self.seed}"

    def stem(self) -> str:
        return f"{self.spec.scene}/{self.layout.name}_s{self.seed}"


@dataclass
class SetRunResult:
    """What one process did: the entries it wrote, how many of its items were already done, the merged manifest."""

    written: list[dict]
    skipped: int
    manifest: Path
    rank: int
    world_size: int


def plan_items(specs: list[SceneSpec], per_scene: int) -> list[SetItem]:
    """All items of the set in global index order: the first ``per_scene`` jobs of each spec."""
    items: list[SetItem] = []
    for spec in specs:
        capacity = len(spec.layouts) * len(spec.seeds)
        jobs = dataclasses.replace(spec, count=min(per_scene, capacity)).jobs()
        for layout, seed in jobs:
            items.append(SetItem(index=len(items), spec=spec, layout=layout, seed=seed))
    return items


def shard(items: list[SetItem], rank: int, world_size: int) -> list[SetItem]:
    """The items process ``rank`` of ``world_size`` makes: those whose index is ``rank`` modulo ``world_size``."""
    return [item for item in items if item.index % world_size == rank]


def load_specs(scenes_dir: str | Path) -> list[SceneSpec]:
    """Every ``*.toml`` scene spec of a folder, validated (masks included), in file-name order."""
    scenes_dir = Path(scenes_dir)
    if not scenes_dir.is_dir():
        raise SceneSpecError(f"--scenes {scenes_dir}: no such folder; pass the folder of scene .toml files (data/scenes/)")
    paths = sorted(scenes_dir.glob("*.toml"))
    if not paths:
        raise SceneSpecError(f"--scenes {scenes_dir}: holds no .toml scene specs")
    specs = [load_scene_spec(path) for path in paths]
    names = [spec.scene for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SceneSpecError(f"--scenes {scenes_dir}: scene id(s) {duplicates} appear in more than one spec; make them unique")
    return specs


def _rank_and_world(rank: int | None, world_size: int | None):
    """Explicit rank/world size, or accelerate's (a plain process is rank 0 of 1); also the accelerate state."""
    if (rank is None) != (world_size is None):
        raise PanostudyError("--rank and --world-size: give both or neither (accelerate launch sets them itself)")
    if rank is not None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise PanostudyError(f"--rank {rank} --world-size {world_size}: need 0 <= rank < world size")
        return rank, world_size, None
    import torch
    from accelerate import PartialState

    # Without a GPU, accelerate only forms a multi-process group (gloo) when told to use the CPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state


def _default_device(rank: int) -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{rank % torch.cuda.device_count()}"
    return "cpu"


def generate_sets(
    scenes_dir: str | Path,
    per_scene: int,
    model: str | None,
    out_dir: str | Path,
    rank: int | None = None,
    world_size: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    *,
    controlnet: str | None = None,
    panorama_model: str | None = None,
    sr_weights: str | Path | None = None,
    size: tuple[int, int] = DEFAULT_SIZE,
    settings: PanoramaSettings | None = None,
    stage1_size: int | None = None,
    stage1_steps: int | None = None,
    fp16: bool = False,
    cpu_offload: bool = False,
    vae_tiling: bool = False,
    sr_tile: int | None = 256,
    sr_overlap: int = 16,
    image_format: str = "png",
    device: str | None = None,
    sr_base: str | None = None,
    sr_control: str | None = None,
    refine_strength: float = TileRefineSettings.strength,
) -> SetRunResult:
    """Generate (this process's share of) a scene set into ``out_dir``.

    Parameters
    ----------
    scenes_dir : path
        Folder of scene specs (``data/scenes/``).
    per_scene : int
        Panoramas per scene (at most the spec's layouts × seeds).
    model : str or None
        Stage-1 model id or folder; None uses each spec's ``model``; ``"tiny"`` is the offline random model.
    out_dir : path
        Receives ``<scene>/<layout>_s<seed>.png`` (+ ``_front.png``), the per-rank manifests and ``manifest.jsonl``.
    rank, world_size : int, optional
        This process's share; default from accelerate (1 process when not launched by it).
    progress : callable, optional
        ``progress(done, total, item_id)`` after each item of this process (skipped ones included).
    controlnet : str, optional
        Stage-2 ControlNet (see :func:`generator.panorama_pipeline.load_panorama_pipeline`).
    panorama_model : str, optional
        Stage-2 base model; default the stage-1 model.
    sr_weights : path, optional
        Real-ESRGAN weights; without them the panorama is resized (wrap-aware bicubic) to ``size``.
    size : (width, height)
        Final panorama size, 2:1 (4096×2048 by default, 8192×4096 at most).
    settings : PanoramaSettings, optional
        Stage-2 parameters (canvas size, steps, blending, ...).
    stage1_size, stage1_steps : int, optional
        Override the specs' stage-1 image side and step count (tests and the tiny model).
    fp16, cpu_offload, vae_tiling : bool
        Memory options for GPUs.
    sr_tile, sr_overlap : int
        Super-resolution tiling (input pixels).
    image_format : "png" or "jpg"
    device : str, optional
        Default: this rank's GPU when there is one, else the CPU.
    sr_base, sr_control : str, optional
        Both or neither: Diffusion360's ``sr-base`` model and tile ControlNet ``sr-control`` (or ``"tiny"`` for
        both); given, the upscaled panorama gets the ControlNet-tile refinement of :mod:`generator.tile_refine`.
    refine_strength : float
        The refinement's img2img strength in [0, 1].

    Returns
    -------
    SetRunResult

    Raises
    ------
    PanostudyError
        For any bad argument or spec (before anything is written), and :class:`GeneratorMemoryError` when CUDA
        runs out of memory.
    """
    import torch

    # 1. Validate everything before writing anything
    if per_scene < 1:
        raise PanostudyError(f"--per-scene {per_scene}: must be at least 1")
    if image_format not in ("png", "jpg"):
        raise PanostudyError(f"--format {image_format}: must be png or jpg")
    settings = settings or PanoramaSettings()
    width, height = size
    if width != 2 * height or width > 8192:
        raise PanostudyError(f"--size {width}x{height}: must be 2:1 and at most 8192x4096")
    if (sr_base is None) != (sr_control is None):
        raise PanostudyError("--sr-base and --sr-control: give both (Diffusion360's sr-base and sr-control) or neither")
    refine_settings = TileRefineSettings(strength=refine_strength)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PanostudyError(f"--out {out_dir}: exists and is not a folder; choose a folder for the stimuli")
    specs = load_specs(scenes_dir)
    rank, world_size, state = _rank_and_world(rank, world_size)
    if device is None:
        multi = state is not None and state.num_processes > 1
        device = str(state.device) if multi and state.device.type == "cuda" else _default_device(rank)
    sr_model = load_sr_model(sr_weights, device=device, fp16=fp16) if sr_weights is not None else None
    refiner = None
    if sr_base is not None:
        refiner = load_tile_refiner(
            sr_base, sr_control, device=device, fp16=fp16, cpu_offload=cpu_offload, vae_tiling=vae_tiling
        )
        refiner.check_inputs(height, width, refine_settings)

    items = plan_items(specs, per_scene)
    mine = shard(items, rank, world_size)
    done = finished_ids(out_dir)
    todo = [item for item in mine if item.id not in done]
    skipped = len(mine) - len(todo)
    if progress is not None:
        for position in range(skipped):
            progress(position + 1, len(mine), "skipped")

    # 2. Load the models this process needs (stage 1 per model id, shared stage 2)
    written: list[dict] = []
    if todo:
        stage2_reference = panorama_model or model or todo[0].spec.model
        stage2 = load_panorama_pipeline(
            stage2_reference, controlnet, device=device, fp16=fp16, cpu_offload=cpu_offload, vae_tiling=vae_tiling
        )
        stage1_pipelines: dict[str, object] = {}
        manifest_path = rank_manifest_path(out_dir, rank)
        for position, item in enumerate(todo, start=skipped + 1):
            stage1_reference = model or item.spec.model
            if stage1_reference not in stage1_pipelines:
                stage1 = load_mask_guided_pipeline(stage1_reference, device=device, fp16=fp16, cpu_offload=cpu_offload)
                stage1.set_progress_bar_config(disable=True)  # the set's own progress bar covers it
                stage1_pipelines[stage1_reference] = stage1
            try:
                entry = _make_item(
                    item,
                    stage1_pipelines[stage1_reference],
                    stage1_reference,
                    stage2,
                    stage2_reference,
                    controlnet,
                    sr_model,
                    sr_weights,
                    out_dir,
                    refiner=refiner,
                    refine=None if refiner is None else (sr_base, sr_control, refine_settings),
                    settings=settings,
                    size=size,
                    stage1_size=stage1_size,
                    stage1_steps=stage1_steps,
                    sr_tile=sr_tile,
                    sr_overlap=sr_overlap,
                    image_format=image_format,
                )
            except torch.OutOfMemoryError:
                raise GeneratorMemoryError(
                    f"out of GPU memory on {device} while making {item.id}; {MEMORY_ADVICE}"
                ) from None
            entry.update(rank=rank, world_size=world_size, device=device)
            append_entry(manifest_path, entry)
            written.append(entry)
            if progress is not None:
                progress(position, len(mine), item.id)

    # 3. Merge the per-rank manifests (under accelerate: once, after every process is done)
    if state is not None and state.num_processes > 1:
        state.wait_for_everyone()
        if not state.is_main_process:
            return SetRunResult(written, skipped, out_dir / "manifest.jsonl", rank, world_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = merge_manifests(out_dir)
    return SetRunResult(written, skipped, manifest, rank, world_size)


def _make_item(
    item: SetItem,
    stage1,
    stage1_reference: str,
    stage2,
    stage2_reference: str,
    controlnet: str | None,
    sr_model,
    sr_weights,
    out_dir: Path,
    *,
    settings: PanoramaSettings,
    size: tuple[int, int],
    stage1_size: int | None,
    stage1_steps: int | None,
    sr_tile: int | None,
    sr_overlap: int,
    image_format: str,
    refiner=None,
    refine: tuple[str, str, TileRefineSettings] | None = None,
) -> dict:
    """Run both stages and super-resolution for one item, write its images, return its manifest entry."""
    import torch
    from PIL import Image

    spec = item.spec
    timings: dict[str, float] = {}
    side_h, side_w = (stage1_size, stage1_size) if stage1_size else (spec.height, spec.width)
    masks = spec.masks(item.layout.name)
    if masks.shape != (side_h, side_w):
        masks = masks.resized(side_h, side_w)
    steps = stage1_steps or spec.steps

    start = time.perf_counter()
    output = stage1(
        prompt=spec.prompt,
        objects=spec.objects,
        masks=masks,
        negative_prompt=spec.negative_prompt,
        height=side_h,
        width=side_w,
        num_inference_steps=steps,
        guidance_scale=spec.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(item.seed),
        output_type="np",
    )
    front = (np.clip(output.images[0], 0, 1) * 255).round().astype(np.uint8)
    timings["stage1"] = time.perf_counter() - start

    result = stage2(front, spec.prompt, settings, seed=item.seed)
    timings.update({f"stage2_{name}": seconds for name, seconds in result.timings.items()})
    before = seam_scores(result.image)
    faithfulness = reprojection_error(result.image, result.canvas.face)

    start = time.perf_counter()
    final = upscale_panorama(result.image, sr_model, size=size, tile=sr_tile, overlap=sr_overlap)
    timings["super_resolution"] = time.perf_counter() - start
    refinement = None
    if refiner is not None:
        sr_base, sr_control, refine_settings = refine
        refined = refiner(final, spec.prompt, refine_settings, seed=item.seed)
        final = refined.image
        timings.update({f"tile_refine_{name}": seconds for name, seconds in refined.timings.items()})
        refinement = {
            "base": model_fingerprint(sr_base),
            "controlnet": model_fingerprint(sr_control),
            "settings": refine_settings.as_dict(),
        }
    after = seam_scores(final)

    stem = item.stem()
    front_path = out_dir / f"{stem}_front.png"
    pano_path = out_dir / f"{stem}.{image_format}"
    front_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(front).save(front_path)
    save_panorama(final, pano_path)

    return {
        "id": item.id,
        "index": item.index,
        "path": str(pano_path.relative_to(out_dir)),
        "front_path": str(front_path.relative_to(out_dir)),
        "scene": spec.scene,
        "spec": str(spec.path),
        "spec_sha256": file_sha256(spec.path),
        "layout": item.layout.name,
        "masks": {
            "format": item.layout.format,
            "path": str(item.layout.path),
            "image": item.layout.image,
            "legend": None if item.layout.legend is None else str(item.layout.legend),
            "sha256": file_sha256(item.layout.path),
            "labels": list(spec.objects),
        },
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "objects": dict(spec.objects),
        "seeds": {"stage1": item.seed, "stage2": item.seed},
        "stage1": {
            "model": model_fingerprint(stage1_reference),
            "height": side_h,
            "width": side_w,
            "steps": steps,
            "guidance_scale": spec.guidance_scale,
            "mask_alignment": output.mask_alignment,
            "end_of_guidance_loss": output.end_of_guidance_loss,
        },
        "stage2": {
            "model": model_fingerprint(stage2_reference),
            "controlnet": None if controlnet is None else model_fingerprint(controlnet),
            "conditioning_channels": stage2.conditioning_channels,
            "settings": settings.as_dict(),
            "front_reprojection_mae": faithfulness,
        },
        "super_resolution": {
            "weights": None if sr_weights is None else model_fingerprint(str(sr_weights)),
            "scale": None if sr_model is None else sr_model.scale,
            "tile": sr_tile,
            "overlap": sr_overlap,
            "size": list(size),
            "refinement": refinement,
        },
        "seams_before_sr": before,
        "seams": after,
        "timings": timings,
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
