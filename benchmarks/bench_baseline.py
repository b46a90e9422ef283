"""The paper's setting as the baseline: diffusers' StableDiffusionInstructPix2PixPipeline, 100 Euler-ancestral
steps, guidance 7.5 (text) and 1.5 (image), on the same model folder, machine and precision.

Where 100 steps would take too long (a CPU: about a minute per call even at 256 px), the call is timed at two
step counts and the time at 100 steps extrapolated with the line through the two medians,
t(n) = fixed + n * per_step; the output says so (`baseline_extrapolated`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench_stages import Timing, synchronizer, time_call

PAPER_STEPS = 100
PAPER_GUIDANCE = 7.5
PAPER_IMAGE_GUIDANCE = 1.5
PAPER_A100_MS = 5000.0  # the paper: about 5 s per 256x256 image on an A100


def linear_extrapolation(points: dict[int, float], target: int = PAPER_STEPS) -> tuple[float, float, float]:
    """(time at `target`, fixed part, per-step part) from the line through two (steps, ms) points."""
    if len(points) != 2:
        raise ValueError("linear extrapolation needs exactly two step counts")
    (n1, t1), (n2, t2) = sorted(points.items())
    if n1 == n2:
        raise ValueError("the two step counts must differ")
    per_step = (t2 - t1) / (n2 - n1)
    fixed = t1 - n1 * per_step
    return fixed + target * per_step, fixed, per_step


def load_diffusers_pipeline(model_dir: Path, device, dtype: torch.dtype):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        model_dir, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False, use_safetensors=True)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def time_baseline(model_dir: Path, image: np.ndarray, instruction: str, device, dtype: torch.dtype,
                  step_counts: tuple[int, ...], repeats: int, seed: int = 0, warmup: int = 1) -> dict:
    """Time the diffusers pipeline at each step count; extrapolate to 100 steps when 100 was not run."""
    from PIL import Image

    from bench_stages import PeakMemory

    pipe = load_diffusers_pipeline(model_dir, device, dtype)
    pil = Image.fromarray(image)
    sync = synchronizer(device)

    def call(steps):
        return pipe(instruction, image=pil, num_inference_steps=steps, guidance_scale=PAPER_GUIDANCE,
                    image_guidance_scale=PAPER_IMAGE_GUIDANCE, generator=torch.Generator("cpu").manual_seed(seed),
                    output_type="np")

    timings: dict[int, Timing] = {}
    with PeakMemory(device) as memory:
        for i, steps in enumerate(step_counts):  # one warm-up call in all: the pipeline is warm after it
            timings[steps], _ = time_call(lambda: call(steps), repeats, warmup if i == 0 else 0, sync)
    medians = {n: t.median for n, t in timings.items()}
    if PAPER_STEPS in medians:
        baseline_ms, extrapolated, fixed, per_step = medians[PAPER_STEPS], False, None, None
    else:
        baseline_ms, fixed, per_step = linear_extrapolation({n: medians[n] for n in sorted(medians)[-2:]})
        extrapolated = True
    del pipe
    return {
        "baseline_ms": baseline_ms, "baseline_extrapolated": extrapolated,
        "method": "diffusers StableDiffusionInstructPix2PixPipeline, EulerAncestralDiscreteScheduler, "
                  f"{PAPER_STEPS} steps, guidance {PAPER_GUIDANCE} / image guidance {PAPER_IMAGE_GUIDANCE}"
                  + (f"; extrapolated linearly from {', '.join(map(str, sorted(medians)))} steps" if extrapolated else ""),
        "fixed_ms": fixed, "per_step_ms": per_step,
        "timed_steps": {str(n): t.summary() for n, t in timings.items()},
        "memory": memory.summary(),
    }
