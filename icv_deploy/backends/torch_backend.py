"""PyTorch backend: diffusers modules from a model folder, fp32 / fp16 / bf16, CPU or CUDA.

Eager by default. The fast GPU path (issue 7) is a set of options to `from_folder`:
    channels_last  UNet and VAE convolutions in NHWC memory format (faster cuDNN kernels, tensor cores)
    cuda_graph     the UNet call replayed from a CUDA graph per input shape (cuda_graph.GraphedCall)
    compile        torch.compile of the UNet (`compile_mode`, default "default", which records no CUDA graphs
                   itself: with cuda_graph on, the compiled UNet is what the graph replays)
All three keep the outputs of eager mode up to kernel-level rounding. `fast=True` turns on the first two
on CUDA (compile costs minutes the first time, so it stays opt-in).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..model_files import check_diffusers_folder, read_json
from .base import ModelInfo

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    from ..errors import IcvError

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
        vae_scale_factor=2 ** (len(vae["block_out_channels"]) - 1),
        scaling_factor=vae.get("scaling_factor", 0.18215),
        text_hidden_size=text["hidden_size"],
        max_text_tokens=text.get("max_position_embeddings", 77),
    )


class TorchBackend:
    name = "torch"

    def __init__(self, unet, vae, text_encoder, info: ModelInfo, device: torch.device, dtype: torch.dtype,
                 channels_last: bool = False, cuda_graph: bool = False, compile: bool = False, compile_mode: str | None = None):
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.info, self.device, self.dtype = info, device, dtype
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
                    cuda_graph: bool | None = None, compile: bool = False, compile_mode: str | None = None, fast: bool = False):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        folder = Path(folder)
        check_diffusers_folder(folder)
        device = torch.device(device)
        dtype = parse_dtype(dtype, device)
        kw = dict(torch_dtype=dtype, use_safetensors=True)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kw)
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
        return cls(unet, vae, text_encoder, model_info(folder), device, dtype, channels_last=channels_last,
                   cuda_graph=cuda_graph, compile=compile, compile_mode=compile_mode)

    @torch.inference_mode()
    def encode_text(self, input_ids):
        return self.text_encoder(input_ids.to(self.device))[0]

    @torch.inference_mode()
    def encode_image(self, pixels):
        pixels = pixels.to(self.device, self.dtype)
        if self.options["channels_last"]:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
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
        return self.vae.decode(latents.to(self.dtype), return_dict=False)[0]
