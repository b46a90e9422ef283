"""The InstructCV pipeline: image + instruction -> painted answer v(y) -> decoded task output.

`__call__` reads like the paper's algorithm: route the instruction, encode text and image, sample the
latent with guidance, decode it to an image, decode that image into the task's answer. The backend
(torch, onnx, trt) does the four network calls; samplers and guidance are shared by all backends.
A one-pass model (icv_config.json "mode": "one_pass", see one_pass.py) replaces the guided sampling by one UNet
call of batch K: no guidance batch, no sampler loop.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from . import images as imgs
from .backends import load_backend
from .errors import IcvError, InstructionError, ModelFilesError
from .guidance import PREDICTION_TYPES, GuidedDenoiser, guidance_batch, is_unguided
from .model_files import default_model, model_config, read_json, resolve_model
from .result import Result
from .one_pass import OnePass, one_pass_latents
from .sampling import CONSISTENCY_SAMPLERS, SAMPLERS, lcm_scalings
from .schedules import SPACINGS, make_schedule
from .tasks.decoders import decode
from .tasks.encodings import check_box_line_fraction
from .tasks.painted import read_task
from .tasks.routing import route

log = logging.getLogger("icv_deploy")

# The paper's setting; a model folder's icv_config.json may override these defaults.
# spacing None: the sampler's own (sampling.SAMPLERS), else the scheduler config's timestep_spacing.
DEFAULTS = {"sampler": "euler_a", "steps": 100, "spacing": None, "resolution": 256, "guidance_scale": 7.5,
            "image_guidance_scale": 1.5}


class InstructCVPipeline:
    def __init__(self, backend, tokenizer, scheduler_config: dict, defaults: dict | None = None, source: str = "",
                 random_weights: bool = False, one_pass: OnePass | None = None, caveat: str = "",
                 box_line_fraction: float | None = None):
        self.backend, self.tokenizer, self.scheduler_config = backend, tokenizer, scheduler_config
        self.one_pass = one_pass  # a one-pass model's mode (icv_config.json), None for a sampled model
        self.defaults = {**DEFAULTS, **(defaults or {})}
        self.source = source
        self.random_weights = random_weights  # built from configs (icv_deploy.testing): the answers mean nothing
        self.caveat = caveat  # what a trained model is known to get wrong (its icv_config.json), for pictures to say
        self.box_line_fraction = box_line_fraction  # the width of the outlines it paints (None: the contract's 1/128)
        self.progress = True
        self._empty_embedding = None

    @classmethod
    def from_pretrained(cls, model=None, engine: str = "torch", device: str = "cpu", dtype=None, vae: str | None = None,
                        **options):
        """A bundled model's name, a diffusers model folder or hub id (torch), an exported ONNX folder (onnx) or an
        engine folder (trt); None means $ICV_MODEL, else the bundled `demo`.
        `vae="tiny"` encodes and decodes with the tiny autoencoder (TAESD, `vae_tiny/`; see load_backend)."""
        from transformers import CLIPTokenizer

        model = default_model() if model is None else model
        folder = resolve_model(model)
        for part in ("tokenizer", "scheduler"):
            if not (folder / part).is_dir():
                raise ModelFilesError(f"{folder}: missing the {part}/ folder")
        backend = load_backend(folder, engine=engine, device=device, dtype=dtype, vae=vae, **options)
        try:
            tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        except Exception as exc:
            raise ModelFilesError(f"{folder / 'tokenizer'}: cannot load the CLIP tokenizer ({type(exc).__name__})") from None
        scheduler_config = read_json(folder / "scheduler" / "scheduler_config.json")
        config = model_config(folder)
        random_weights = bool(config.get("random_weights", False))
        if random_weights:
            log.warning("model %s has random weights (built from configs for tests and benchmarks): its answers are "
                        "meaningless", model)
        one_pass = OnePass.from_config(config, scheduler_config, where=str(folder / "icv_config.json"))
        box_line_fraction = check_box_line_fraction(config.get("box_line_fraction"), str(folder / "icv_config.json"))
        return cls(backend, tokenizer, scheduler_config, {k: v for k, v in config.items() if k in DEFAULTS}, str(model),
                   random_weights=random_weights, one_pass=one_pass, caveat=str(config.get("caveat", "")),
                   box_line_fraction=box_line_fraction)

    # -- the four stages --------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        limit = self.backend.info.max_text_tokens
        for text in texts:
            n = len(self.tokenizer(text).input_ids)
            if n > limit:
                log.warning("instruction is %d CLIP tokens, truncated to %d: %r", n, limit, text[:60])
        return self.tokenizer(texts, padding="max_length", max_length=limit, truncation=True, return_tensors="pt").input_ids

    def encode_instructions(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        text_emb = self.backend.encode_text(self.tokenize(instructions))
        if self._empty_embedding is None:
            self._empty_embedding = self.backend.encode_text(self.tokenize([""]))
        return text_emb, self._empty_embedding

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        pixels = imgs.to_tensor(image).to(self.backend.device, self.backend.dtype)
        return self.backend.encode_image(pixels)

    def sample(self, text_emb, empty_emb, image_latents, steps, sampler, seed, guidance_scale, image_guidance_scale,
               spacing=None):
        """Guided sampling of K latents (one per instruction), each from its own seeded CPU generator, so a
        batched call gives each instruction the result it would get alone (and diffusers' result for K = 1).
        `seed`: one for all rows or a list, one per row; `image_latents` [1 or K, 4, h, w].
        `spacing` None takes the sampler's default spacing, else the scheduler config's."""
        if sampler not in SAMPLERS:
            raise IcvError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
        if spacing is not None and spacing not in SPACINGS:
            raise IcvError(f"unknown spacing {spacing!r}: choose one of {', '.join(SPACINGS)}")
        sample_fn, default_spacing = SAMPLERS[sampler]
        prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ModelFilesError(f"scheduler config: unknown prediction_type {prediction_type!r} "
                                  f"(this runtime knows {', '.join(PREDICTION_TYPES)})")
        try:
            schedule = make_schedule(self.scheduler_config, steps, spacing or default_spacing)
        except ValueError as exc:  # steps out of range for the spacing
            raise IcvError(f"{sampler}: {exc}") from None
        k, (_, c, h, w) = text_emb.shape[0], image_latents.shape
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * k
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        device = self.backend.device

        def noise(x):
            return torch.cat([torch.randn((1, *x.shape[1:]), generator=g) for g in generators]).to(device)

        x = torch.cat([torch.randn((1, c, h, w), generator=g) for g in generators]).to(device) * schedule.init_sigma
        text_batch, image_batch = guidance_batch(text_emb, empty_emb, image_latents,
                                                 guided=not is_unguided(guidance_scale, image_guidance_scale))
        consistency = None
        if sampler in CONSISTENCY_SAMPLERS:
            consistency = lcm_scalings(schedule.timesteps, self.scheduler_config.get("timestep_scaling", 10.0))
        model = GuidedDenoiser(self.backend.predict_noise, schedule, text_batch, image_batch, guidance_scale,
                               image_guidance_scale, prediction_type, consistency)
        with tqdm(total=len(schedule), desc=sampler, disable=not self.progress, leave=False) as bar:
            return sample_fn(model, x, schedule.sigmas, noise, callback=lambda i: bar.update())

    def one_pass_sample(self, text_emb, image_latents) -> torch.Tensor:
        """A one-pass model's K latents: one UNet call of batch K (one_pass.py)."""
        return one_pass_latents(self.one_pass, self.backend.predict_noise, text_emb, image_latents,
                                self.backend.info.scaling_factor, self.scheduler_config)

    def _say_one_pass(self, steps, sampler, spacing, guidance_scale, image_guidance_scale) -> None:
        """Sampling settings asked of a one-pass model are ignored: say so (icv-infer prints it on stderr)."""
        given = {"steps": steps if steps not in (None, 1) else None, "sampler": sampler, "spacing": spacing,
                 "guidance_scale": guidance_scale, "image_guidance_scale": image_guidance_scale}
        ignored = ", ".join(f"{k}={v}" for k, v in given.items() if v is not None)
        if ignored:
            log.warning("this is a one-pass model (icv_config.json mode one_pass): it takes one step, a single UNet "
                        "pass with guidance built in; ignoring %s", ignored)

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        return imgs.to_uint8(self.backend.decode_latents(latents / self.backend.info.scaling_factor))

    # -- the call -------------------------------------------------------------------------------------
    def __call__(self, image, instruction: str, steps=None, sampler=None, seed: int = 0, guidance_scale=None,
                 image_guidance_scale=None, resolution=..., task=None, spacing=None) -> Result:
        return self.run_many(image, [instruction], steps, sampler, seed, guidance_scale, image_guidance_scale, resolution,
                             task, spacing)[0]

    def run_many(self, image, instructions: list[str], steps=None, sampler=None, seed: int = 0, guidance_scale=None,
                 image_guidance_scale=None, resolution=..., task=None, spacing=None) -> list[Result]:
        """Several instructions on one image: one image encoding, one UNet batch of 3K per step (a one-pass
        model: one UNet call of batch K in all)."""
        return self.run_pairs([(image, text) for text in instructions], steps, sampler, seed, guidance_scale,
                              image_guidance_scale, resolution, task, spacing)

    def run_pairs(self, pairs, steps=None, sampler=None, seed=0, guidance_scale=None, image_guidance_scale=None,
                  resolution=..., task=None, spacing=None) -> list[Result]:
        """(image, instruction) pairs, such as a server's concurrent requests: the pairs whose images share a
        working size run as one UNet batch of 3K per step, and each result is the one its pair gets alone with the
        same seed. `seed` and `task`: one value for all pairs, or a list with one per pair. An image object that
        appears in several pairs is read and encoded once. Results come back in the order of `pairs`."""
        d = self.defaults
        if self.one_pass is not None:
            self._say_one_pass(steps, sampler, spacing, guidance_scale, image_guidance_scale)
            steps, sampler, spacing, guidance_scale, image_guidance_scale = 1, "one_pass", None, None, None
        sampler = sampler or d["sampler"]
        if self.one_pass is None and sampler in SAMPLERS:  # the spacing used, for the record
            spacing = spacing or d["spacing"] or SAMPLERS[sampler][1] or self.scheduler_config.get("timestep_spacing", "linspace")
        steps = int(steps or d["steps"])
        resolution = d["resolution"] if resolution is ... else resolution
        if self.one_pass is None:
            guidance_scale = d["guidance_scale"] if guidance_scale is None else guidance_scale
            image_guidance_scale = d["image_guidance_scale"] if image_guidance_scale is None else image_guidance_scale
        if not pairs:
            raise InstructionError("no instruction given")
        seeds, tasks = _per_pair(seed, len(pairs), "seed"), _per_pair(task, len(pairs), "task")
        t0 = time.perf_counter()

        # 1. What is asked: task and category of each instruction.
        routes = [route(text, task=t) for (_, text), t in zip(pairs, tasks)]
        # 2. Each distinct image once; pairs whose images share the model's working size share a batch.
        originals = {}
        for image, _ in pairs:
            if id(image) not in originals:
                originals[id(image)] = imgs.load_image(image)
        batches = {}
        for i, (image, _) in enumerate(pairs):
            size = imgs.working_size(*originals[id(image)].shape[:2], resolution, self.backend.info.vae_scale_factor)
            batches.setdefault(size, []).append(i)
        settings = {"steps": steps, "sampler": sampler, "spacing": spacing, "guidance_scale": guidance_scale,
                    "image_guidance_scale": image_guidance_scale, "resolution": resolution}
        results = [None] * len(pairs)
        for size, members in batches.items():
            batch = self._run_batch(size, [originals[id(pairs[i][0])] for i in members], [pairs[i][1] for i in members],
                                    [routes[i] for i in members], [seeds[i] for i in members], settings, t0)
            for i, res in zip(members, batch):
                results[i] = res
        return results

    def _run_batch(self, size, originals, instructions, routes, seeds, settings, t0) -> list[Result]:
        """One UNet batch: K instructions on images (the same array object: encoded once) of one working size."""
        steps, sampler, spacing = settings["steps"], settings["sampler"], settings["spacing"]
        guidance_scale, image_guidance_scale = settings["guidance_scale"], settings["image_guidance_scale"]
        timings = {}
        t1 = time.perf_counter()
        # 3. Conditioning: text embeddings and the image latents (posterior mode, unscaled).
        if self.one_pass is None:
            text_emb, empty_emb = self.encode_instructions(list(instructions))
        else:  # no guidance batch: no empty-prompt embedding either
            text_emb = self.backend.encode_text(self.tokenize(list(instructions)))
        timings["text_ms"] = _ms(t1)
        t1 = time.perf_counter()
        latent_of = {}
        for original in originals:
            if id(original) not in latent_of:
                latent_of[id(original)] = self.encode_image(imgs.resize(original, size))
        # One row per instruction, or the one image's latent, which guidance_batch expands.
        rows = [latent_of[id(original)] for original in originals]
        image_latents = rows[0] if len(latent_of) == 1 else torch.cat(rows)
        timings["image_encode_ms"] = _ms(t1)
        # 4. Guided sampling in latent space (a one-pass model: one UNet call).
        t1 = time.perf_counter()
        if self.one_pass is not None:
            latents = self.one_pass_sample(text_emb, image_latents)
        else:
            latents = self.sample(text_emb, empty_emb, image_latents, steps, sampler, seeds, guidance_scale,
                                  image_guidance_scale, spacing)
        timings["sampling_ms"] = _ms(t1)
        # 5. The painted answer v(y), then 6. the task's answer at the input size.
        t1 = time.perf_counter()
        visuals = self.decode_latents(latents)
        timings["decode_ms"] = _ms(t1)
        t1 = time.perf_counter()
        results = []
        for text, r, visual, original, seed in zip(instructions, routes, visuals, originals, seeds):
            if r.undecided:  # the text left the task open: read it from what the model painted
                r = r.decided(read_task(visual, imgs.resize(original, visual.shape[:2])))
            answer = decode(r.task, visual, r, original.shape[:2], box_line_fraction=self.box_line_fraction)
            record = {"steps": steps, "sampler": sampler, "spacing": spacing, "seed": seed, "guidance_scale": guidance_scale,
                      "image_guidance_scale": image_guidance_scale, "resolution": settings["resolution"],
                      "engine": self.backend.name, "vae": getattr(self.backend, "vae_kind", "full")}
            colors = (r.color_if_present, r.color_if_absent) if r.task == "classification" else None
            results.append(Result(text, r.task, r.category, original, visual, record, colors=colors,
                                  decided_by=r.decided_by, random_weights=self.random_weights, **answer))
        timings["postprocess_ms"] = _ms(t1)
        timings["total_ms"] = _ms(t0)
        for res in results:
            res.settings["timings_ms"] = {k: round(v, 2) for k, v in timings.items()}
        return results


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _per_pair(value, n: int, name: str) -> list:
    """One value for every pair, or a list of n values (one per pair)."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise IcvError(f"{len(value)} {name} values for {n} pairs: give one value, or one per pair")
        return list(value)
    return [value] * n


def load(model=None, engine: str = "torch", device: str = "cpu", dtype=None, vae: str | None = None,
         **options) -> InstructCVPipeline:
    """Open a model for inference. `model`: a bundled model's name (`demo`, `demo-1step`), a diffusers folder or hub id
    (torch), an ONNX folder (onnx), engines (trt); None: $ICV_MODEL, else `demo`.
    `vae`: None (the model's VAE; an ONNX/engine folder's own), "full" or "tiny" (TAESD from vae_tiny/)."""
    return InstructCVPipeline.from_pretrained(model, engine=engine, device=device, dtype=dtype, vae=vae, **options)
