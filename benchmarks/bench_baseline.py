"""The paper's setting as the baseline: diffusers' StableDiffusionInstructPix2PixPipeline, 100 Euler-ancestral
steps, guidance 7.5 (text) and 1.5 (image), on the same model folder, machine and precision.

Where 100 steps would take too long (a CPU: about a minute per call even at 256 px), the call is timed at two
step counts and the time at 100 steps extrapolated with the line through the two medians,
t(n) = fixed + n * per_step; the output says so (`baseline_extrapolated`). The step counts are timed in interleaved
rounds (2 4 2 4 ...), so a burst of load cannot tilt the line, and a line that does not rise with the steps
(per_step <= 0, or a negative fixed part: noise, not a time) is measured again, `attempts` times in all, and then
refused (`baseline_ms` None, `refused` says why): never extrapolated into a negative or meaningless time.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from bench_stages import interleaved_rounds, synchronizer

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


def rises_with_steps(fixed: float, per_step: float) -> bool:
    """A line a time can be read from: each step costs something, and the fixed part is not negative."""
    return per_step > 0 and fixed >= 0


def measure_baseline(call, step_counts: tuple[int, ...], repeats: int, sync=lambda: None, warmup: int = 1,
                     attempts: int = 3, clock=time.perf_counter) -> dict:
    """Time `call(steps)` at each step count in interleaved rounds; the paper's 100 steps measured or extrapolated.

    An extrapolation whose line does not rise with the steps is measured again with fresh rounds, up to `attempts`
    times in all; if none rises, the baseline is refused (baseline_ms None) rather than printed as nonsense."""
    counts = sorted(set(step_counts))
    for _ in range(warmup):
        call(counts[0])
    rejected = []
    for _ in range(attempts):
        timings, _ = interleaved_rounds({n: (lambda n=n: call(n)) for n in counts}, repeats, sync, clock)
        medians = {n: timings[n].median for n in counts}
        result = {"timed_steps": {str(n): t.summary() for n, t in timings.items()}, "rejected_attempts": rejected,
                  "refused": None, "fixed_ms": None, "per_step_ms": None}
        if PAPER_STEPS in medians:
            return {**result, "baseline_ms": medians[PAPER_STEPS], "baseline_extrapolated": False}
        at_100, fixed, per_step = linear_extrapolation({n: medians[n] for n in counts[-2:]})
        if rises_with_steps(fixed, per_step):
            return {**result, "baseline_ms": at_100, "baseline_extrapolated": True, "fixed_ms": fixed, "per_step_ms": per_step}
        rejected.append({str(n): round(m, 3) for n, m in medians.items()})
    last = ", ".join(f"{n} steps {m:.1f} ms" for n, m in medians.items())
    return {**result, "baseline_ms": None, "baseline_extrapolated": True,
            "refused": f"the baseline's time does not rise with the steps in {attempts} attempts (last medians: {last}): "
                       "the machine is too busy for a line through them; no time at 100 steps is given (rerun on a quieter "
                       "machine, with more --repeats or --baseline-steps further apart)"}


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

    with PeakMemory(device) as memory:
        measured = measure_baseline(call, tuple(step_counts), repeats, sync, warmup)
    del pipe
    counts = ", ".join(measured["timed_steps"])
    return {
        **measured,
        "method": "diffusers StableDiffusionInstructPix2PixPipeline, EulerAncestralDiscreteScheduler, "
                  f"{PAPER_STEPS} steps, guidance {PAPER_GUIDANCE} / image guidance {PAPER_IMAGE_GUIDANCE}"
                  + (f"; extrapolated linearly from {counts} steps" if measured["baseline_extrapolated"] else ""),
        "memory": memory.summary(),
    }
