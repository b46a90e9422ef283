"""The backend interface (docs/DESIGN.md 8): four calls, shared by torch, ONNX Runtime and TensorRT.

Samplers and guidance never see a backend; the pipeline calls these four methods with torch tensors
(on `backend.device`) and gets torch tensors back. A backend also says what the model folder told it:
latent channels, the VAE scale factor, the VAE scaling factor and the text embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class ModelInfo:
    latent_channels: int = 4
    unet_in_channels: int = 8
    vae_scale_factor: int = 8  # 2 ** (len(vae.config.block_out_channels) - 1): read it, never assume 8
    scaling_factor: float = 0.18215
    text_hidden_size: int = 768
    max_text_tokens: int = 77
    vocab_size: int = 49408  # the text encoder's token embeddings: token ids run from 0 to vocab_size - 1


class Backend(Protocol):
    name: str
    device: torch.device
    dtype: torch.dtype
    info: ModelInfo

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, 77] int64 token ids -> [B, 77, D] last hidden state."""

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, 4, H/f, W/f] posterior mode, NOT multiplied by the scaling factor."""

    def predict_noise(self, sample: torch.Tensor, timestep: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """UNet: [B, 8, h, w] (noisy latent ++ image latent), [B] timesteps, [B, 77, D] -> [B, 4, h, w] noise."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 4, h, w] latents already divided by the scaling factor -> [B, 3, H, W] in about [-1, 1]."""
