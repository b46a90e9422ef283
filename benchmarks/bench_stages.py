"""Where the time of one InstructCV call goes: per-stage timings of a loaded pipeline, and peak memory.

Stages (each timed `repeats` times after one warm-up call, reported as median and spread):
    text            tokenize + text encoder for the K instructions (the empty-prompt embedding is cached by the
                    pipeline after its first call, as in a warm service)
    vae_encoder     the image latent (once per image, whatever K)
    unet_step       one step at the model's guidance scales: the UNet on a batch of 3K plus the guidance arithmetic
                    (K rows when both scales are 1; a one-pass model,
                    pipe.one_pass set: its single UNet call of batch K, which is the whole sampling)
    sampler         everything in `pipeline.sample` except the UNet itself, for the whole call (schedule,
                    per-instruction noise generators, guidance batch, sampler updates): measured by running the
                    sampler with a zero-cost stand-in for `predict_noise`
    vae_decoder     latents -> v(y) image
    postprocess     v(y) -> the task's answer (from the pipeline's own `timings_ms`)
    end_to_end      the whole `run_many` call, as a user sees it

The two stages engines are compared on, unet_step and end_to_end, are timed in rounds (`interleaved_rounds`): with
several engines loaded, each round runs every engine once in turn (A B A B ...), so a burst of load on a shared
machine lands on both sides of a comparison, and `paired_ratio` compares engines round by round (the median of
the per-round ratios), which one disturbed round cannot move. `prepare_pipeline` times the other stages and warms
an engine up; `measure_pipeline` is both steps for one engine.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

STAGES = ("text", "vae_encoder", "unet_step", "sampler", "vae_decoder", "postprocess", "end_to_end")


@dataclass
class Timing:
    samples_ms: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms) if self.samples_ms else float("nan")

    @property
    def spread(self) -> float:
        """Half the range (max - min) / 2: with a handful of repeats, more honest than a standard deviation."""
        return (max(self.samples_ms) - min(self.samples_ms)) / 2 if len(self.samples_ms) > 1 else 0.0

    def summary(self) -> dict:
        return {"median_ms": round(self.median, 3), "spread_ms": round(self.spread, 3),
                "min_ms": round(min(self.samples_ms), 3) if self.samples_ms else None, "n": len(self.samples_ms),
                "samples_ms": [round(x, 3) for x in self.samples_ms]}


def synchronizer(device) -> callable:
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def interleaved_rounds(calls: dict, repeats: int, sync=lambda: None, clock=time.perf_counter) -> tuple[dict, dict]:
    """Time every call of `calls` once per round, in their order, for `repeats` rounds (A B A B ...).

    Returns ({key: Timing}, {key: the call's last result}). Warm the calls up before: rounds have no warm-up."""
    timings, results = {key: Timing() for key in calls}, {}
    for _ in range(repeats):
        for key, fn in calls.items():
            sync()
            t0 = clock()
            results[key] = fn()
            sync()
            timings[key].samples_ms.append((clock() - t0) * 1000)
    return timings, results


def paired_ratio(numerator: Timing, denominator: Timing) -> dict | None:
    """numerator / denominator round by round (samples from the same `interleaved_rounds`): the median of the
    per-round ratios, and their range. None when there is nothing to pair."""
    pairs = [a / b for a, b in zip(numerator.samples_ms, denominator.samples_ms) if b > 0]
    if not pairs or len(numerator.samples_ms) != len(denominator.samples_ms):
        return None
    return {"median": round(statistics.median(pairs), 3), "min": round(min(pairs), 3), "max": round(max(pairs), 3),
            "pairs": len(pairs)}


def time_call(fn, repeats: int, warmup: int = 1, sync=lambda: None) -> tuple[Timing, object]:
    """Run fn() warmup + repeats times; return the timings of the repeats and fn's last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    sync()
    timing = Timing()
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        sync()
        timing.samples_ms.append((time.perf_counter() - t0) * 1000)
    return timing, result


class PeakMemory:
    """Peak resident memory (CPU, sampled every `interval` s by a thread) and peak CUDA memory of a block.

    The CPU figure is the process's RSS, so it includes everything loaded before the block (the model):
    `baseline_mb` says how much was resident when the block began.
    """

    def __init__(self, device="cpu", interval: float = 0.02):
        self.device, self.interval = torch.device(device), interval
        self.peak_rss_mb = self.baseline_mb = 0.0
        self.cuda_peak_mb = None
        self._stop = threading.Event()

    @staticmethod
    def rss_mb() -> float:
        import psutil

        return psutil.Process().memory_info().rss / 2**20

    def _watch(self):
        while not self._stop.wait(self.interval):
            self.peak_rss_mb = max(self.peak_rss_mb, self.rss_mb())

    def __enter__(self):
        self.baseline_mb = self.peak_rss_mb = self.rss_mb()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_rss_mb = max(self.peak_rss_mb, self.rss_mb())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        return False

    def summary(self) -> dict:
        out = {"peak_rss_mb": round(self.peak_rss_mb, 1), "rss_at_start_mb": round(self.baseline_mb, 1)}
        if self.cuda_peak_mb is not None:
            out["cuda_peak_allocated_mb"] = round(self.cuda_peak_mb, 1)
        return out


@contextlib.contextmanager
def stub_predict_noise(backend):
    """Replace backend.predict_noise by a zero-cost stand-in (zeros of the UNet's output shape) for a block."""
    channels = backend.info.latent_channels

    def free(sample, timestep, text_embeddings):
        return torch.zeros((sample.shape[0], channels, *sample.shape[2:]), device=sample.device, dtype=sample.dtype)

    backend.predict_noise = free  # an instance attribute shadows the method
    try:
        yield
    finally:
        del backend.predict_noise


@dataclass
class Prepared:
    """One engine after `prepare_pipeline`: its small stages timed, and the two calls the rounds time."""

    timings: dict  # text, vae_encoder, sampler, vae_decoder
    memory: dict
    latent_shape: list
    unet_step: Callable
    end_to_end: Callable  # also appends each call's postprocessing time to `postprocess`
    sync: Callable
    postprocess: Timing = field(default_factory=Timing)


def prepare_pipeline(pipe, image: np.ndarray, instructions: list[str], steps: int, sampler: str, repeats: int,
                     task: str | None = None, resolution: int = 256, seed: int = 0, warmup: int = 1) -> Prepared:
    """Time the stages other than unet_step and end_to_end for `pipe` (an InstructCVPipeline) and K =
    len(instructions) instructions on one image, and warm up the two calls that `interleaved_rounds` times.
    Peak memory covers all of it, one end-to-end call included."""
    from icv_deploy import images as imgs
    from icv_deploy.guidance import GuidedDenoiser, guidance_batch, is_unguided
    from icv_deploy.sampling import SAMPLERS
    from icv_deploy.schedules import make_schedule

    backend = pipe.backend
    sync = synchronizer(backend.device)
    pipe.progress = False
    gs, igs = pipe.defaults["guidance_scale"], pipe.defaults["image_guidance_scale"]  # the model's (icv_config.json)
    timings: dict[str, Timing] = {}
    memory = PeakMemory(backend.device)
    with memory:
        size = imgs.working_size(*image.shape[:2], resolution, backend.info.vae_scale_factor)
        model_input = imgs.resize(image, size)
        timings["text"], (text_emb, empty_emb) = time_call(lambda: pipe.encode_instructions(list(instructions)), repeats, warmup, sync)
        timings["vae_encoder"], image_latents = time_call(lambda: pipe.encode_image(model_input), repeats, warmup, sync)

        k, (_, c, h, w) = len(instructions), image_latents.shape
        if getattr(pipe, "one_pass", None) is not None:  # one UNet call of batch K: no guidance batch, no sampler loop
            def unet_step():
                return pipe.one_pass_sample(text_emb, image_latents)

            sample, call_settings = unet_step, {}
        else:
            sample_fn, spacing = SAMPLERS[sampler]
            schedule = make_schedule(pipe.scheduler_config, steps, spacing)
            text_batch, image_batch = guidance_batch(text_emb, empty_emb, image_latents, guided=not is_unguided(gs, igs))
            denoiser = GuidedDenoiser(backend.predict_noise, schedule, text_batch, image_batch, gs, igs)
            x = torch.randn((k, c, h, w), generator=torch.Generator().manual_seed(seed)).to(backend.device) * schedule.init_sigma

            def unet_step():
                return denoiser(x, 0)

            def sample():
                return pipe.sample(text_emb, empty_emb, image_latents, steps, sampler, seed, gs, igs)

            call_settings = {"steps": steps, "sampler": sampler, "guidance_scale": gs, "image_guidance_scale": igs}
        for _ in range(warmup):
            unet_step()

        with stub_predict_noise(backend):
            timings["sampler"], latents = time_call(sample, repeats, warmup, sync)
        timings["vae_decoder"], _ = time_call(lambda: pipe.decode_latents(latents), repeats, warmup, sync)

        postprocess = Timing()

        def call():
            results = pipe.run_many(image, list(instructions), seed=seed, resolution=resolution, task=task, **call_settings)
            postprocess.samples_ms.append(results[0].settings["timings_ms"]["postprocess_ms"])
            return results

        call()  # every network has run by now; this one is for the memory peak of a whole call
        sync()
        postprocess.samples_ms.clear()
    return Prepared(timings, memory.summary(), [k, c, h, w], unet_step, call, sync, postprocess)


def finish(prepared: Prepared, unet_step: Timing, end_to_end: Timing, results: list) -> dict:
    """An engine's measurements: its prepared stages plus its rounds (postprocessing from the pipeline's own timings)."""
    timings = {**prepared.timings, "unet_step": unet_step, "postprocess": prepared.postprocess, "end_to_end": end_to_end}
    return {"timings": {s: timings[s] for s in STAGES}, "memory": prepared.memory, "results": results,
            "latent_shape": prepared.latent_shape}


def measure_pipeline(pipe, image: np.ndarray, instructions: list[str], steps: int, sampler: str, repeats: int,
                     task: str | None = None, resolution: int = 256, seed: int = 0, warmup: int = 1) -> dict:
    """Per-stage timings of one engine: `prepare_pipeline`, then `repeats` rounds of its UNet step and whole call."""
    prepared = prepare_pipeline(pipe, image, instructions, steps, sampler, repeats, task, resolution, seed, warmup)
    timings, results = interleaved_rounds({"unet_step": prepared.unet_step, "end_to_end": prepared.end_to_end},
                                          repeats, prepared.sync)
    return finish(prepared, timings["unet_step"], timings["end_to_end"], results["end_to_end"])


def outside_unet_fraction(medians: dict[str, float], steps: int) -> float:
    """Share of a call spent outside the UNet steps, from the stage medians (the issue's 15% target)."""
    outside = sum(medians[s] for s in ("text", "vae_encoder", "sampler", "vae_decoder", "postprocess"))
    return outside / (outside + steps * medians["unet_step"])
