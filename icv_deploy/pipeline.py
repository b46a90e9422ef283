"""The InstructCV pipeline: image + instruction -> painted answer v(y) -> decoded task output.

`__call__` reads like the paper's algorithm: route the instruction, encode text and image, sample the
latent with guidance, decode it to an image, decode that image into the task's answer. The backend
(torch, onnx, trt) does the four network calls; samplers and guidance are shared by all backends.
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
from .guidance import GuidedDenoiser, guidance_batch
from .model_files import default_model, model_config, read_json, resolve_model
from .result import Result
from .sampling import SAMPLERS
from .schedules import make_schedule
from .tasks.decoders import decode
from .tasks.routing import route

log = logging.getLogger("icv_deploy")

# The paper's setting; a model folder's icv_config.json may override these defaults.
DEFAULTS = {"sampler": "euler_a", "steps": 100, "resolution": 256, "guidance_scale": 7.5, "image_guidance_scale": 1.5}


class InstructCVPipeline:
    def __init__(self, backend, tokenizer, scheduler_config: dict, defaults: dict | None = None, source: str = "",
                 random_weights: bool = False):
        self.backend, self.tokenizer, self.scheduler_config = backend, tokenizer, scheduler_config
        self.defaults = {**DEFAULTS, **(defaults or {})}
        self.source = source
        self.random_weights = random_weights  # built from configs (icv_deploy.testing): the answers mean nothing
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
        return cls(backend, tokenizer, scheduler_config, {k: v for k, v in config.items() if k in DEFAULTS}, str(model),
                   random_weights=random_weights)

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

    def sample(self, text_emb, empty_emb, image_latents, steps, sampler, seed, guidance_scale, image_guidance_scale):
        """Guided sampling of K latents (one per instruction), each from its own seeded CPU generator, so a
        batched call gives each instruction the result it would get alone (and diffusers' result for K = 1)."""
        if sampler not in SAMPLERS:
            raise IcvError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
        sample_fn, spacing = SAMPLERS[sampler]
        schedule = make_schedule(self.scheduler_config, steps, spacing)
        k, (_, c, h, w) = text_emb.shape[0], image_latents.shape
        generators = [torch.Generator("cpu").manual_seed(seed) for _ in range(k)]
        device = self.backend.device

        def noise(x):
            return torch.cat([torch.randn((1, *x.shape[1:]), generator=g) for g in generators]).to(device)

        x = torch.cat([torch.randn((1, c, h, w), generator=g) for g in generators]).to(device) * schedule.sigmas[0]
        text_batch, image_batch = guidance_batch(text_emb, empty_emb, image_latents)
        model = GuidedDenoiser(self.backend.predict_noise, schedule, text_batch, image_batch, guidance_scale, image_guidance_scale)
        with tqdm(total=steps, desc=sampler, disable=not self.progress, leave=False) as bar:
            return sample_fn(model, x, schedule.sigmas, noise, callback=lambda i: bar.update())

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        return imgs.to_uint8(self.backend.decode_latents(latents / self.backend.info.scaling_factor))

    # -- the call -------------------------------------------------------------------------------------
    def __call__(self, image, instruction: str, steps=None, sampler=None, seed: int = 0, guidance_scale=None,
                 image_guidance_scale=None, resolution=..., task=None) -> Result:
        return self.run_many(image, [instruction], steps, sampler, seed, guidance_scale, image_guidance_scale, resolution, task)[0]

    def run_many(self, image, instructions: list[str], steps=None, sampler=None, seed: int = 0, guidance_scale=None,
                 image_guidance_scale=None, resolution=..., task=None) -> list[Result]:
        """Several instructions on one image: one image encoding, one UNet batch of 3K per step."""
        d = self.defaults
        sampler = sampler or d["sampler"]
        steps = int(steps or d["steps"])
        resolution = d["resolution"] if resolution is ... else resolution
        guidance_scale = d["guidance_scale"] if guidance_scale is None else guidance_scale
        image_guidance_scale = d["image_guidance_scale"] if image_guidance_scale is None else image_guidance_scale
        if not instructions:
            raise InstructionError("no instruction given")
        timings = {}
        t0 = time.perf_counter()

        # 1. What is asked: task and category of each instruction.
        routes = [route(text, task=task) for text in instructions]
        # 2. The image at the model's working size.
        original = imgs.load_image(image)
        size = imgs.working_size(*original.shape[:2], resolution, self.backend.info.vae_scale_factor)
        model_input = imgs.resize(original, size)
        # 3. Conditioning: text embeddings and the image latent (posterior mode, unscaled).
        text_emb, empty_emb = self.encode_instructions(list(instructions))
        timings["text_ms"] = _ms(t0)
        t1 = time.perf_counter()
        image_latents = self.encode_image(model_input)
        timings["image_encode_ms"] = _ms(t1)
        # 4. Guided sampling in latent space.
        t1 = time.perf_counter()
        latents = self.sample(text_emb, empty_emb, image_latents, steps, sampler, seed, guidance_scale, image_guidance_scale)
        timings["sampling_ms"] = _ms(t1)
        # 5. The painted answer v(y), then 6. the task's answer at the input size.
        t1 = time.perf_counter()
        visuals = self.decode_latents(latents)
        timings["decode_ms"] = _ms(t1)
        t1 = time.perf_counter()
        results = []
        for text, r, visual in zip(instructions, routes, visuals):
            answer = decode(r.task, visual, r, original.shape[:2])
            settings = {"steps": steps, "sampler": sampler, "seed": seed, "guidance_scale": guidance_scale,
                        "image_guidance_scale": image_guidance_scale, "resolution": resolution, "engine": self.backend.name,
                        "vae": getattr(self.backend, "vae_kind", "full")}
            colors = (r.color_if_present, r.color_if_absent) if r.task == "classification" else None
            results.append(Result(text, r.task, r.category, original, visual, settings, colors=colors,
                                  random_weights=self.random_weights, **answer))
        timings["postprocess_ms"] = _ms(t1)
        timings["total_ms"] = _ms(t0)
        for res in results:
            res.settings["timings_ms"] = {k: round(v, 2) for k, v in timings.items()}
        return results


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def load(model=None, engine: str = "torch", device: str = "cpu", dtype=None, vae: str | None = None,
         **options) -> InstructCVPipeline:
    """Open a model for inference. `model`: a bundled model's name (`demo`, `demo-1step`), a diffusers folder or hub id
    (torch), an ONNX folder (onnx), engines (trt); None: $ICV_MODEL, else `demo`.
    `vae`: None (the model's VAE; an ONNX/engine folder's own), "full" or "tiny" (TAESD from vae_tiny/)."""
    return InstructCVPipeline.from_pretrained(model, engine=engine, device=device, dtype=dtype, vae=vae, **options)
