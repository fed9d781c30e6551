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
from generator.panorama_pipeline import PanoramaSettings, check_completion_models, load_panorama_pipeline
from generator.projection import reprojection_error
from generator.scene_spec import Layout, SceneSpec, load_scene_spec
from generator.seams import seam_scores
from generator.tile_refine import load_tile_refiner
from generator.upscale import load_sr_model
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


def load_specs(scenes_dir: str | Path, mask_fit: str | None = None) -> list[SceneSpec]:
    """Every ``*.toml`` scene spec of a folder, validated (masks included), in file-name order."""
    scenes_dir = Path(scenes_dir)
    if not scenes_dir.is_dir():
        raise SceneSpecError(f"--scenes {scenes_dir}: no such folder; pass the folder of scene .toml files (data/scenes/)")
    paths = sorted(scenes_dir.glob("*.toml"))
    if not paths:
        raise SceneSpecError(f"--scenes {scenes_dir}: holds no .toml scene specs")
    specs = [load_scene_spec(path, mask_fit=mask_fit) for path in paths]
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


@dataclass(frozen=True)
class Stage1Options:
    """How stage 1 runs for every item: size and steps overrides (None: the spec's), mask fitting, guided tokens."""

    size: int | None = None
    steps: int | None = None
    guide_tokens: str = "phrase"


def generate_sets(
    scenes_dir: str | Path,
    per_scene: int,
    model: str | None,
    out_dir: str | Path,
    rank: int | None = None,
    world_size: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    *,
    controlnet: str | None = None,
    panorama_model: str | None = None,
    sr_weights: str | Path | None = None,
    size: tuple[int, int] | None = None,
    preset: str = "auto",
    settings: PanoramaSettings | None = None,
    overrides: dict | None = None,
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
    refine_strength: float | None = None,
    diffusion360: str | Path | None = None,
    model_config: str | None = None,
    panorama_model_config: str | None = None,
    sr_base_config: str | None = None,
    sr: bool = True,
    final_pass: bool = True,
    mask_fit: str | None = None,
    guide_tokens: str = "phrase",
    preview: bool = False,
) -> SetRunResult:
    """Generate (this process's share of) a scene set into ``out_dir``.

    Parameters
    ----------
    scenes_dir : path
        Folder of scene specs (``data/scenes/``).
    per_scene : int
        Panoramas per scene (at most the spec's layouts × seeds).
    model : str or None
        Stage-1 model id, folder or single file; None uses each spec's ``model``; ``"tiny"`` is the offline
        random model.
    out_dir : path
        Receives ``<scene>/<layout>_s<seed>.png`` (+ ``_front.png``), the per-rank manifests and ``manifest.jsonl``.
    rank, world_size : int, optional
        This process's share; default from accelerate (1 process when not launched by it).
    progress : callable, optional
        ``progress(stage, done, total)``: ``"panoramas"`` after each item of this process (skipped ones
        included), and the denoising steps and tiles of every stage of the item in progress.
    controlnet : str, optional
        Stage-2 ControlNet (see :func:`generator.panorama_pipeline.load_panorama_pipeline`).
    panorama_model : str, optional
        Stage-2 base model; default the stage-1 model.
    sr_weights : path, optional
        Real-ESRGAN weights; without them the panorama is resized (wrap-aware bicubic).
    size : (width, height), optional
        Final panorama size, 2:1, at most 8192×4096; default the preset's.
    preset : str
        ``auto``, ``diffusion360`` or ``panostudy`` (see :mod:`generator.stage2`).
    settings : PanoramaSettings, optional
        Replaces the preset's completion settings as a whole (tests, the tiny model).
    overrides : dict, optional
        Completion settings replaced one by one (``{"steps": 30, "width": None, ...}``; None keeps the preset's).
    stage1_size, stage1_steps : int, optional
        Override the specs' stage-1 image height (the width keeps the spec's aspect) and step count.
    fp16, cpu_offload, vae_tiling : bool
        Memory options for GPUs.
    sr_tile, sr_overlap : int
        Super-resolution tiling (input pixels).
    image_format : "png" or "jpg"
    device : str, optional
        Default: this rank's GPU when there is one, else the CPU.
    sr_base, sr_control : str, optional
        Both or neither: the tile-refinement base model and tile ControlNet (Diffusion360's ``sr-base`` and
        ``sr-control``, or ``"tiny"`` for both).
    refine_strength : float, optional
        Replaces the strength of every refinement of the preset.
    diffusion360 : path, optional
        Diffusion360's model folder: fills the stage-2 models, the refinement models and the Real-ESRGAN weights
        (see :data:`generator.stage2.DIFFUSION360_FILES`) and makes ``diffusion360`` the ``auto`` preset.
    model_config, panorama_model_config, sr_base_config : str, optional
        Config sources of single-file base models (see :func:`generator.loading.load_base_components`).
    sr, final_pass : bool
        Run the SR chain; run its optional last refinement.
    mask_fit : str, optional
        Overrides the specs' ``mask_fit``.
    guide_tokens : str
        ``phrase`` or ``head`` (see :func:`generator.mask_guided_pipeline.phrase_token_indices`).
    preview : bool
        Quick check: stage 1 at 256 px (64 for the tiny model) in at most 10 steps, stage 2 at most 512×256 in at
        most 8 steps, no SR chain; recorded in the manifest.

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

    from generator.stage2 import (
        Stage2Models,
        check_chain,
        check_preset_name,
        choose_preset,
        customise,
        diffusion360_models,
        planned_chain,
    )

    # 1. Validate everything before writing anything
    if per_scene < 1:
        raise PanostudyError(f"--per-scene {per_scene}: must be at least 1")
    if image_format not in ("png", "jpg"):
        raise PanostudyError(f"--format {image_format}: must be png or jpg")
    check_preset_name(preset)
    if size is not None and (size[0] != 2 * size[1] or size[0] > 8192):
        raise PanostudyError(f"--size {size[0]}x{size[1]}: must be 2:1 and at most 8192x4096")
    if diffusion360 is not None:
        found = diffusion360_models(diffusion360)
        panorama_model, controlnet = panorama_model or found["panorama_model"], controlnet or found["controlnet"]
        sr_base, sr_control = sr_base or found["sr_base"], sr_control or found["sr_control"]
        sr_weights = sr_weights or found["sr_weights"]
    if (sr_base is None) != (sr_control is None):
        raise PanostudyError("--sr-base and --sr-control: give both (Diffusion360's sr-base and sr-control) or neither")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PanostudyError(f"--out {out_dir}: exists and is not a folder; choose a folder for the stimuli")
    specs = load_specs(scenes_dir, mask_fit)
    rank, world_size, state = _rank_and_world(rank, world_size)
    if device is None:
        multi = state is not None and state.num_processes > 1
        device = str(state.device) if multi and state.device.type == "cuda" else _default_device(rank)
    if preview:
        sr, stage1_steps = False, min(stage1_steps or 10, 10)
    stage1 = Stage1Options(size=stage1_size, steps=stage1_steps, guide_tokens=guide_tokens)

    items = plan_items(specs, per_scene)
    mine = shard(items, rank, world_size)
    done = finished_ids(out_dir)
    todo = [item for item in mine if item.id not in done]
    skipped = len(mine) - len(todo)
    report = progress or (lambda stage, done, total: None)
    stage2_reference = panorama_model or model or (todo[0].spec.model if todo else None)
    if todo:
        check_completion_models(stage2_reference, controlnet, "--panorama-model" if panorama_model else "--model")

    # 2. Load the models this process needs (stage 1 per model id, shared stage 2), check the chain's needs; the
    #    first progress report comes after, so that a model that cannot be used stops the run before any output.
    written: list[dict] = []
    if todo:
        stage2_config = panorama_model_config if panorama_model else model_config
        completion = load_panorama_pipeline(
            stage2_reference, controlnet, device=device, fp16=fp16, cpu_offload=cpu_offload, vae_tiling=vae_tiling,
            config=stage2_config, option="--panorama-model" if panorama_model else "--model",
        )  # fmt: skip
        chosen = choose_preset(
            preset, diffusion360_folder=diffusion360 is not None,
            conditioning_channels=completion.conditioning_channels, tiny=stage2_reference == "tiny",
        )  # fmt: skip
        if settings is not None:
            chosen = dataclasses.replace(chosen, completion=settings)
        chosen = customise(chosen, refine_strength=refine_strength, **(overrides or {}))
        if preview:
            width = min(chosen.completion.width, 512)
            chosen = customise(chosen, height=width // 2, width=width, steps=min(chosen.completion.steps, 8))
        completion.check_inputs(np.zeros((8, 8, 3), np.uint8), chosen.completion)
        check_chain(chosen, sr=sr, has_sr_weights=sr_weights is not None, has_refiner=sr_base is not None)
        final = size or (chosen.final() if sr else (chosen.completion.width, chosen.completion.height))
        sr_model = load_sr_model(sr_weights, device=device, fp16=fp16) if sr_weights is not None and sr else None
        refiner = None
        if sr_base is not None and sr:
            refiner = load_tile_refiner(
                sr_base, sr_control, device=device, fp16=fp16, cpu_offload=cpu_offload, vae_tiling=vae_tiling,
                config=sr_base_config,
            )  # fmt: skip
            for step in planned_chain(chosen, sr=sr, final_pass=final_pass, has_refiner=True):
                if hasattr(step, "settings"):
                    refiner.check_inputs(final[1], final[0], step.settings)
        models = Stage2Models(completion=completion, sr_model=sr_model, refiner=refiner)
        references = {"stage2": stage2_reference, "controlnet": controlnet, "sr_weights": sr_weights,
                      "sr_base": sr_base, "sr_control": sr_control}  # fmt: skip
        stage1_pipelines: dict[str, object] = {}
        for item in todo:
            stage1_reference = model or item.spec.model
            if stage1_reference not in stage1_pipelines:
                pipeline = load_mask_guided_pipeline(
                    stage1_reference, device=device, fp16=fp16, cpu_offload=cpu_offload, config=model_config
                )
                pipeline.set_progress_bar_config(disable=True)  # the set's own progress display covers it
                stage1_pipelines[stage1_reference] = pipeline
        manifest_path = rank_manifest_path(out_dir, rank)
        report("panoramas", skipped, len(mine))
        for position, item in enumerate(todo, start=skipped + 1):
            stage1_reference = model or item.spec.model
            try:
                entry = _make_item(
                    item, stage1_pipelines[stage1_reference], stage1_reference, stage1, chosen, models, references,
                    out_dir, size=final, sr=sr, final_pass=final_pass, sr_tile=sr_tile, sr_overlap=sr_overlap,
                    image_format=image_format, progress=report, preview=preview,
                )  # fmt: skip
            except torch.OutOfMemoryError:
                raise GeneratorMemoryError(
                    f"out of GPU memory on {device} while making {item.id}; {MEMORY_ADVICE}"
                ) from None
            entry.update(rank=rank, world_size=world_size, device=device)
            append_entry(manifest_path, entry)
            written.append(entry)
            report("panoramas", position, len(mine))
    else:
        report("panoramas", skipped, len(mine))

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
    options: Stage1Options,
    preset,
    models,
    references: dict,
    out_dir: Path,
    *,
    size: tuple[int, int],
    sr: bool,
    final_pass: bool,
    sr_tile: int | None,
    sr_overlap: int,
    image_format: str,
    progress: Callable[[str, int, int], None],
    preview: bool,
) -> dict:
    """Run both stages and the SR chain for one item, write its images, return its manifest entry."""
    import torch
    from PIL import Image

    from generator.masks import fit_masks
    from generator.stage2 import run_stage2

    spec = item.spec
    timings: dict[str, float] = {}
    side = options.size or (min(spec.height, 256 if stage1_reference != "tiny" else 64) if preview else spec.height)
    side_h, side_w = side, max(8, round(side * spec.width / spec.height / 8) * 8)
    masks, _ = fit_masks(spec.masks(item.layout.name), side_h, side_w, spec.mask_fit)
    steps = options.steps or spec.steps

    start = time.perf_counter()
    stage = "stage 1"
    progress(stage, 0, steps)
    output = stage1(
        prompt=spec.prompt,
        objects=spec.objects,
        masks=masks,
        negative_prompt=spec.negative_prompt,
        height=side_h,
        width=side_w,
        num_inference_steps=steps,
        guidance_scale=spec.guidance_scale,
        guide_tokens=options.guide_tokens,
        generator=torch.Generator("cpu").manual_seed(item.seed),
        output_type="np",
        callback_on_step_end=lambda pipe, step, timestep, tensors: progress(stage, step + 1, steps) or {},
    )
    front = (np.clip(output.images[0], 0, 1) * 255).round().astype(np.uint8)
    timings["stage1"] = time.perf_counter() - start

    result = run_stage2(front, spec.prompt, preset, models, seed=item.seed, size=size, sr=sr, final_pass=final_pass,
                        sr_tile=sr_tile, sr_overlap=sr_overlap, progress=progress)  # fmt: skip
    timings.update(result.timings)
    before = seam_scores(result.completion.image)
    faithfulness = reprojection_error(result.completion.image, result.completion.canvas.face)
    final = result.image
    after = seam_scores(final)

    stem = item.stem()
    front_path = out_dir / f"{stem}_front.png"
    pano_path = out_dir / f"{stem}.{image_format}"
    front_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(front).save(front_path)
    save_panorama(final, pano_path)

    def fingerprint(reference):
        return None if reference is None else model_fingerprint(str(reference))

    chain = result.record["chain"]
    upscale = next((step for step in chain if step["step"] == "super_resolution"), None)
    refinements = [step for step in chain if step["step"] == "tile_refine"]
    return {
        "id": item.id,
        "index": item.index,
        "path": str(pano_path.relative_to(out_dir)),
        "front_path": str(front_path.relative_to(out_dir)),
        "scene": spec.scene,
        "spec": str(spec.path),
        "spec_sha256": file_sha256(spec.path),
        "layout": item.layout.name,
        "preview": preview,
        "masks": {
            "format": item.layout.format,
            "path": str(item.layout.path),
            "image": item.layout.image,
            "legend": None if item.layout.legend is None else str(item.layout.legend),
            "sha256": file_sha256(item.layout.path),
            "labels": list(spec.objects),
            "fit": spec.mask_fit,
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
            "guided_steps": steps // 2,
            "guidance_scale": spec.guidance_scale,
            "guide_tokens": options.guide_tokens,
            "mask_alignment": output.mask_alignment,
            "mask_area": {label: float(masks[label].mean()) for label in spec.objects},
            "end_of_guidance_loss": output.end_of_guidance_loss,
        },
        "stage2": {
            "preset": preset.name,
            "model": model_fingerprint(references["stage2"]),
            "controlnet": fingerprint(references["controlnet"]),
            "conditioning_channels": models.completion.conditioning_channels,
            "prompt": result.record["prompt"],
            "settings": result.record["settings"],
            "front_reprojection_mae": faithfulness,
        },
        "super_resolution": {
            "chain": chain,
            "weights": fingerprint(references["sr_weights"]) if upscale and upscale["scale"] else None,
            "scale": upscale["scale"] if upscale else None,
            "tile": sr_tile,
            "overlap": sr_overlap,
            "size": list(size),
            "final_pass": final_pass,
            "refinement": None if not refinements else {
                "base": fingerprint(references["sr_base"]),
                "controlnet": fingerprint(references["sr_control"]),
                "settings": refinements[-1]["settings"],
                "passes": len(refinements),
            },
        },  # fmt: skip
        "seams_before_sr": before,
        "seams": after,
        "timings": timings,
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
