"""What mask guidance costs: wall time and peak memory of guided vs unguided stage-1 generation.

Three modes run on the same components, each in its own process (so peak memory is per mode):

- ``plain``: diffusers' ``StableDiffusionPipeline`` (SDPA attention everywhere),
- ``unguided``: ``MaskGuidedStableDiffusionPipeline`` with ``guided_steps=0`` (our processors, no gradient),
- ``guided``: the same with ``guided_steps`` steps of mask guidance (default 25 of 50),
- ``guided-head``: the same guiding each object's head noun only (``guide_tokens="head"``).

Default: the offline tiny model at 64×64 on the CPU (goal: guided / plain ≤ 2.0×). ``--sd15`` builds an SD-1.5-sized
random-weight model (UNet 320-640-1280-1280, CLIP-L-sized text encoder, SD VAE) at 512×512, fp16 on a GPU
(goal: peak ≤ 8 GB). Random weights change nothing about the cost. Usage::

    .venv/bin/python benchmarks/bench_guidance.py                       # tiny, CPU
    .venv/bin/python benchmarks/bench_guidance.py --sd15 --repeats 2    # GPU machine
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "a red car driving on an asphalt road between tall buildings under a blue sky"
MODES = ("plain", "unguided", "guided", "guided-head")


def worker(mode: str, sd15: bool, steps: int, guided: int, repeats: int, threads: int) -> dict:
    """Build one pipeline, run ``repeats`` timed generations after a warm-up, return times and peak memory."""
    import torch
    from diffusers import StableDiffusionPipeline

    from generator.mask_guided_pipeline import MaskGuidedStableDiffusionPipeline
    from generator.scene_spec import load_scene_spec
    from generator.tiny import sd15_sized_components, tiny_sd_components

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if sd15 and torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    components = sd15_sized_components(device=device, dtype=dtype) if sd15 else tiny_sd_components(0)
    cls = StableDiffusionPipeline if mode == "plain" else MaskGuidedStableDiffusionPipeline
    pipe = cls(**components, requires_safety_checker=False).to(device)
    pipe.set_progress_bar_config(disable=True)
    size = 512 if sd15 else 64
    spec = load_scene_spec(ROOT / "data/scenes/vehicle.toml")
    masks = spec.masks(spec.layouts[0].name).resized(size, size)

    def generate(seed: int):
        generator = torch.Generator("cpu").manual_seed(seed)
        if mode == "plain":
            return pipe(PROMPT, height=size, width=size, num_inference_steps=steps, generator=generator,
                        output_type="np")  # fmt: skip
        return pipe(PROMPT, spec.objects, masks, height=size, width=size, num_inference_steps=steps,
                    guided_steps=0 if mode == "unguided" else guided, generator=generator, output_type="np",
                    guide_tokens="head" if mode == "guided-head" else "phrase")  # fmt: skip

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    generate(0)  # warm-up: kernels, allocator, lazy imports
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before_kib = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() // 1024
    times = []
    for repeat in range(repeats):
        start = time.perf_counter()
        generate(repeat + 1)
        sync()
        times.append(time.perf_counter() - start)
    result = {
        "mode": mode,
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "times_s": times,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_warmup_mib": rss_before_kib / 1024,
    }
    if device == "cuda":
        result["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sd15", action="store_true", help="SD-1.5-sized random model at 512x512 (GPU, fp16)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guided", type=int, default=25, help="guided steps of the guided mode")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.sd15, args.steps, args.guided, args.repeats, args.threads)))
        return

    results = {}
    for mode in MODES:
        command = [sys.executable, __file__, "--worker", mode, "--steps", str(args.steps), "--guided",
                   str(args.guided), "--repeats", str(args.repeats), "--threads", str(args.threads)]  # fmt: skip
        if args.sd15:
            command.append("--sd15")
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"{mode} worker failed:\n{done.stderr[-3000:]}")
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])

    model = "SD-1.5-sized random weights, 512x512" if args.sd15 else "tiny offline model, 64x64"
    print(f"mask guidance cost — {model}, {args.steps} steps, {args.guided} guided, "
          f"median of {args.repeats} — {results['guided']['device']}")  # fmt: skip
    print(f"{'mode':<11} {'median s':>9} {'min s':>8} {'peak RSS MiB':>13} {'peak CUDA MiB':>14}")
    medians = {}
    for mode, result in results.items():
        medians[mode] = statistics.median(result["times_s"])
        cuda = result.get("peak_cuda_allocated_mib")
        print(f"{mode:<11} {medians[mode]:>9.3f} {min(result['times_s']):>8.3f} {result['peak_rss_mib']:>13.0f} "
              f"{'-' if cuda is None else f'{cuda:.0f}':>14}")  # fmt: skip
    print(f"guided / plain    = {medians['guided'] / medians['plain']:.2f}x  (goal <= 2.0x)")
    print(f"guided / unguided = {medians['guided'] / medians['unguided']:.2f}x")
    print(f"guided-head / guided = {medians['guided-head'] / medians['guided']:.2f}x  (head noun only vs phrase sum)")
    print(f"unguided / plain  = {medians['unguided'] / medians['plain']:.2f}x  (cost of explicit cross-attention)")


if __name__ == "__main__":
    main()
