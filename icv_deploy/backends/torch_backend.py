"""PyTorch backend: diffusers modules from a model folder, fp32 / fp16 / bf16, CPU or CUDA.

Eager by default. The fast GPU path (issue 7) is a set of options to `from_folder`:
    channels_last  UNet and VAE convolutions in NHWC memory format (faster cuDNN kernels, tensor cores)
    cuda_graph     the UNet call replayed from a CUDA graph per input shape (cuda_graph.GraphedCall)
    compile        torch.compile of the UNet (`compile_mode`, default "default", which records no CUDA graphs
                   itself: with cuda_graph on, the compiled UNet is what the graph replays)
All three keep the outputs of eager mode up to kernel-level rounding. `fast=True` turns on the first two
on CUDA (compile costs minutes the first time, so it stays opt-in).

`vae="tiny"` encodes and decodes with the model folder's optional `vae_tiny/` (diffusers AutoencoderTiny, TAESD:
about 10x cheaper than the SD VAE, slightly softer images) instead of `vae/`. TAESD works in SD's *scaled* latent
space, our contract in the unscaled one (base.py), so `tiny_vae_encode` / `tiny_vae_decode` convert with the
model's scaling factor (vae/config.json, 0.18215 for SD 1.5; never the tiny VAE's own 1.0). The ONNX exporter
wraps the same two functions, so both engines share one definition.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import IcvError
from ..model_files import (TINY_VAE_FOLDER, check_diffusers_folder, check_tiny_vae_folder, parse_vae, read_json,
                           vae_scale_factor)
from .base import ModelInfo

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise IcvError(f"unknown dtype {dtype!r}: choose one of fp32, fp16, bf16")
    return DTYPES[dtype]


def model_info(folder: Path) -> ModelInfo:
    unet = read_json(folder / "unet" / "config.json")
    vae = read_json(folder / "vae" / "config.json")
    text = read_json(folder / "text_encoder" / "config.json")
    return ModelInfo(
        latent_channels=vae.get("latent_channels", 4),
        unet_in_channels=unet["in_channels"],
        vae_scale_factor=vae_scale_factor(vae),
        scaling_factor=vae.get("scaling_factor", 0.18215),
        text_hidden_size=text["hidden_size"],
        max_text_tokens=text.get("max_position_embeddings", 77),
        vocab_size=text.get("vocab_size", 49408),
    )


def tiny_vae_encode(tiny_vae, pixels: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """[-1, 1] pixels -> UNSCALED image latents, as the SD VAE's posterior mode gives them (docs/DESIGN.md 3).

    AutoencoderTiny's `.latents` are already in the scaled space (SD's mode * scaling_factor), so divide. diffusers'
    own InstructPix2Pix pipeline with vae=AutoencoderTiny takes `.latents` as they are, which hands the UNet image
    latents off by this factor: we do not copy that.
    """
    return tiny_vae.encode(pixels).latents / scaling_factor


def tiny_vae_decode(tiny_vae, latents: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Latents already divided by the scaling factor (the backend contract) -> [-1, 1] pixels.
    The tiny decoder takes scaled latents, so multiply back."""
    return tiny_vae.decode(latents * scaling_factor, return_dict=False)[0]


class TorchBackend:
    name = "torch"

    def __init__(self, unet, vae, text_encoder, info: ModelInfo, device: torch.device, dtype: torch.dtype,
                 channels_last: bool = False, cuda_graph: bool = False, compile: bool = False, compile_mode: str | None = None,
                 vae_kind: str = "full"):
        """`vae` is an AutoencoderKL (vae_kind "full") or an AutoencoderTiny (vae_kind "tiny")."""
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.info, self.device, self.dtype = info, device, dtype
        self.vae_kind = vae_kind
        self.options = {"channels_last": channels_last, "cuda_graph": cuda_graph, "compile": compile}
        if channels_last:
            unet.to(memory_format=torch.channels_last)
            vae.to(memory_format=torch.channels_last)
        self._unet_call = self._eager_unet
        if compile:
            compiled = torch.compile(unet, mode=compile_mode or "default", dynamic=False)
            self._unet_call = lambda s, t, e: compiled(s, t, encoder_hidden_states=e, return_dict=False)[0]
        self.graphed_unet = None
        if cuda_graph and device.type == "cuda":
            from .cuda_graph import GraphedCall

            self.graphed_unet = GraphedCall(self._unet_call)
            self._unet_call = self.graphed_unet

    def _eager_unet(self, sample, timestep, text_embeddings):
        return self.unet(sample, timestep, encoder_hidden_states=text_embeddings, return_dict=False)[0]

    @classmethod
    def from_folder(cls, folder, device="cpu", dtype=None, attention: str = "sdpa", channels_last: bool | None = None,
                    cuda_graph: bool | None = None, compile: bool = False, compile_mode: str | None = None, fast: bool = False,
                    vae: str | None = "full"):
        from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
        from transformers import CLIPTextModel

        folder = Path(folder)
        check_diffusers_folder(folder)
        vae_kind = parse_vae(vae) or "full"  # None: the model's own VAE
        if vae_kind == "tiny":
            check_tiny_vae_folder(folder)  # before loading anything: a missing vae_tiny/ is one line, at once
        device = torch.device(device)
        dtype = parse_dtype(dtype, device)
        kw = dict(torch_dtype=dtype, use_safetensors=True)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kw)
        if vae_kind == "tiny":
            vae = AutoencoderTiny.from_pretrained(folder, subfolder=TINY_VAE_FOLDER, **kw)
        else:
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **kw)
        if attention == "sdpa":
            from diffusers.models.attention_processor import AttnProcessor2_0

            unet.set_attn_processor(AttnProcessor2_0())
        for m in (unet, vae, text_encoder):
            m.to(device).eval().requires_grad_(False)
        on_cuda = device.type == "cuda"
        channels_last = (fast and on_cuda) if channels_last is None else channels_last
        cuda_graph = (fast and on_cuda) if cuda_graph is None else cuda_graph
        # model_info reads vae/config.json even with the tiny VAE: the scaling factor is the main model's.
        return cls(unet, vae, text_encoder, model_info(folder), device, dtype, channels_last=channels_last,
                   cuda_graph=cuda_graph, compile=compile, compile_mode=compile_mode, vae_kind=vae_kind)

    @torch.inference_mode()
    def encode_text(self, input_ids):
        return self.text_encoder(input_ids.to(self.device))[0]

    @torch.inference_mode()
    def encode_image(self, pixels):
        pixels = pixels.to(self.device, self.dtype)
        if self.options["channels_last"]:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        if self.vae_kind == "tiny":
            return tiny_vae_encode(self.vae, pixels, self.info.scaling_factor)
        return self.vae.encode(pixels).latent_dist.mode()

    @torch.inference_mode()
    def predict_noise(self, sample, timestep, text_embeddings):
        sample = sample.to(self.device, self.dtype)
        if self.options["channels_last"]:
            sample = sample.contiguous(memory_format=torch.channels_last)
        timestep = timestep.to(self.device)
        return self._unet_call(sample, timestep, text_embeddings.to(self.device, self.dtype))

    @torch.inference_mode()
    def decode_latents(self, latents):
        if self.vae_kind == "tiny":
            return tiny_vae_decode(self.vae, latents.to(self.dtype), self.info.scaling_factor)
        return self.vae.decode(latents.to(self.dtype), return_dict=False)[0]
