"""Per-stage timings of stage 2: projection, completion, decode, super-resolution; then the diffusion360 preset.

    python benchmarks/bench_panorama.py                 # tiny random-weight model, CPU (seconds)
    python benchmarks/bench_panorama.py --sd15          # SD 1.5-sized random weights: 1024×512 completion,
                                                        # Real-ESRGAN x4plus-sized SR to 4096×2048 (use a GPU)

The first block is the ``panostudy`` chain's arithmetic as before. The second runs the ``diffusion360`` preset
through :func:`generator.stage2.run_stage2`: Euler-ancestral completion from the control image, tile refinement
at 3× the completion width (7 UniPC steps at strength 0.8, CFG 15), Real-ESRGAN ×2 (x2plus-sized), and with
``--final-pass`` the refinement at 6× (CFG 17). ``--preset panostudy`` skips it.

Random weights give noise images but the same arithmetic as real weights of the same architecture, so the
timings are those of a real run. Prints one line per stage (median over ``--runs``) and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def sd15_pipeline(device: str, fp16: bool):
    """SD 1.5-sized random-weight components with a 4-channel (mask + RGB) ControlNet made from the UNet."""
    from diffusers import ControlNetModel

    from generator.panorama_pipeline import PanoramaCompletionPipeline
    from generator.tiny import sd15_sized_components

    parts = sd15_sized_components(0)
    controlnet = ControlNetModel.from_unet(parts["unet"], conditioning_channels=4)
    pipeline = PanoramaCompletionPipeline(parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["unet"],
                                          controlnet, parts["scheduler"])
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device, torch.float16 if fp16 else torch.float32)


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd15", action="store_true", help="SD 1.5-sized model, 1024x512 → 4096x2048")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (tiny: 4, sd15: 20)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fp16", action="store_true", help="half precision (GPU)")
    parser.add_argument("--sr-tile", type=int, default=None, help="SR tile size (tiny: 64, sd15: 512)")
    parser.add_argument("--width", type=int, default=None, help="completion width (tiny: 256, sd15: 1024)")
    parser.add_argument("--preset", choices=("all", "panostudy"), default="all", help="also time diffusion360")
    parser.add_argument("--final-pass", action="store_true", help="diffusion360: include the 6x refinement")
    args = parser.parse_args()

    from generator.panorama_pipeline import PanoramaSettings, load_panorama_pipeline
    from generator.projection import front_face_canvas
    from generator.seams import seam_scores
    from generator.tiny import tiny_rrdb_state_dict
    from generator.upscale import load_sr_model, resize_equirect, super_resolve

    if args.sd15:
        pipeline = sd15_pipeline(args.device, args.fp16)
        width = args.width or 1024
        settings = PanoramaSettings(height=width // 2, width=width, steps=args.steps or 20, guidance_scale=7.0)
        rrdb = tiny_rrdb_state_dict(scale=4, num_filters=64, num_blocks=23)  # RealESRGAN_x4plus's size
        target, tile, face = (4 * width, 2 * width), args.sr_tile or 512, width // 2
    else:
        torch.set_num_threads(1)
        pipeline = load_panorama_pipeline("tiny", None, device=args.device)
        width = args.width or 256
        settings = PanoramaSettings(height=width // 2, width=width, steps=args.steps or 4, guidance_scale=7.0)
        rrdb = tiny_rrdb_state_dict(scale=4)
        target, tile, face = (4 * width, 2 * width), args.sr_tile or 64, width // 4
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "RealESRGAN_x4plus.pth"
        torch.save(rrdb, weights)
        sr_model = load_sr_model(weights, device=args.device, fp16=args.fp16)

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (face, face, 3), dtype=np.uint8)
    stages: dict[str, list[float]] = {}
    for run in range(args.runs + 1):  # run 0 warms up (allocator, kernels) and is not counted
        start = time.perf_counter()
        front_face_canvas(image, settings.height, settings.width)
        projection = time.perf_counter() - start
        synchronise(args.device)
        result = pipeline(image, "a street", settings, seed=run)
        synchronise(args.device)
        start = time.perf_counter()
        upscaled = super_resolve(result.image, sr_model, tile=tile, overlap=16)
        synchronise(args.device)
        sr_seconds = time.perf_counter() - start
        start = time.perf_counter()
        final = resize_equirect(upscaled, *target)
        resize_seconds = time.perf_counter() - start
        if run == 0:
            continue
        timings = {
            "projection": projection,
            "prepare": result.timings["prepare"],
            "completion": result.timings["completion"],
            "decode": result.timings["decode"],
            "paste": result.timings["paste"],
            "super_resolution": sr_seconds,
            "resize": resize_seconds,
        }
        timings["total"] = sum(timings.values())
        for name, seconds in timings.items():
            stages.setdefault(name, []).append(seconds)

    label = "SD1.5-sized" if args.sd15 else "tiny"
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"{label} stage 2 on {device_name} ({'fp16' if args.fp16 else 'fp32'}): {settings.width}x{settings.height}, "
        f"{settings.steps} steps, CFG {settings.guidance_scale}, SR x{sr_model.scale} tile {tile} → "
        f"{target[0]}x{target[1]}; median of {args.runs} runs"
    )
    medians = {name: statistics.median(values) for name, values in stages.items()}
    for name, seconds in medians.items():
        print(f"  {name:<17}{seconds:9.3f} s")
    scores = seam_scores(final)
    print(f"  seam discontinuity {scores['discontinuity']:.3f}, wrap-L1 ratio {scores['wrap_l1_ratio']:.2f}")
    print(json.dumps({"model": label, "device": device_name, "fp16": args.fp16, "median_s": medians}))
    if args.preset == "all":
        diffusion360_run(args, pipeline, image, width, label, device_name)


def diffusion360_run(args, pipeline, image, width: int, label: str, device_name: str) -> None:
    """The diffusion360 preset end to end on the same components (median of ``--runs`` after a warm-up)."""
    from generator.stage2 import PRESETS, Stage2Models, customise, run_stage2
    from generator.tile_refine import TileRefinementPipeline
    from generator.tiny import tiny_rrdb_state_dict
    from generator.upscale import load_sr_model

    if args.sd15:
        from diffusers import ControlNetModel

        tile_control = ControlNetModel.from_unet(pipeline.unet, conditioning_channels=3)
        rrdb = tiny_rrdb_state_dict(scale=2, num_filters=64, num_blocks=23)  # RealESRGAN_x2plus's size
    else:
        from generator.tiny import tiny_controlnet

        tile_control = tiny_controlnet(1, conditioning_channels=3)
        rrdb = tiny_rrdb_state_dict(scale=2)
    refiner = TileRefinementPipeline(pipeline.vae, pipeline.text_encoder, pipeline.tokenizer, pipeline.unet,
                                     tile_control, pipeline.scheduler)  # fmt: skip
    refiner = refiner.to(args.device, torch.float16) if args.fp16 else refiner.to(args.device)
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "RealESRGAN_x2plus.pth"
        torch.save(rrdb, weights)
        sr_model = load_sr_model(weights, device=args.device, fp16=args.fp16)
    preset = customise(PRESETS["diffusion360"], width=width, height=width // 2, steps=args.steps)
    models = Stage2Models(completion=pipeline, sr_model=sr_model, refiner=refiner)
    stages: dict[str, list[float]] = {}
    for run in range(args.runs + 1):
        start = time.perf_counter()
        result = run_stage2(image, "a street", preset, models, seed=run, final_pass=args.final_pass,
                            sr_tile=args.sr_tile or (512 if args.sd15 else 64))  # fmt: skip
        synchronise(args.device)
        total = time.perf_counter() - start
        if run == 0:
            continue
        timings = {name: seconds for name, seconds in result.timings.items() if not name.endswith(("projection", "paste"))}
        timings["total"] = total
        for name, seconds in timings.items():
            stages.setdefault(name, []).append(seconds)
    chain = " → ".join(f"{step['step']} {step['size'][0]}x{step['size'][1]}" for step in result.record["chain"])
    print(f"{label} diffusion360 preset on {device_name} ({'fp16' if args.fp16 else 'fp32'}): completion "
          f"{preset.completion.width}x{preset.completion.height}, {preset.completion.steps} euler-ancestral steps, "
          f"CFG 7; {chain}; median of {args.runs} runs")  # fmt: skip
    medians = {name: statistics.median(values) for name, values in stages.items()}
    for name, seconds in medians.items():
        print(f"  {name:<26}{seconds:9.3f} s")
    print(json.dumps({"model": label, "preset": "diffusion360", "device": device_name, "fp16": args.fp16,
                      "median_s": medians}))  # fmt: skip


if __name__ == "__main__":
    main()
