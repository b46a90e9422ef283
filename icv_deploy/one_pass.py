"""One-pass models (issue 13): one UNet call of batch K for K instructions, no guidance batch, no sampler loop.

A model fine-tuned for a single deterministic pass (as E2E-FT and Lotus fine-tune Stable Diffusion: a fixed
timestep, a fixed input in the noise channels, clean-latent or v prediction, guidance folded into the weights)
says so in its icv_config.json:

    {"mode": "one_pass", "timestep": 999, "noise_input": "zeros", "prediction_type": "sample"}

    timestep         the UNet's t [default: the last training timestep, T - 1 = 999]
    noise_input      what the 4 noisy-latent channels hold: "zeros", or "image_latent": the input image's latent
                     times the VAE scaling factor, i.e. in the space of the target latents those channels
                     carry in training [default: zeros]
    prediction_type  what the UNet predicts: "sample" (the clean latent), "v_prediction" or "epsilon"
                     [default: the scheduler config's, as for sampling]

The other 4 UNet channels hold the (unscaled) image latent as always and the text embedding is the
instruction's: the pass is the "text + image" row of the guidance batch alone. Training builds its inputs with
`noise_channels` and reads the output with `clean_latents`, so that training and inference cannot drift apart.
A model without "mode" (or with "mode": "sampled") is sampled as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ModelFilesError
from .guidance import PREDICTION_TYPES, denoised_from_output
from .schedules import training_sigmas

ONE_PASS = "one_pass"
NOISE_INPUTS = ("zeros", "image_latent")


@dataclass(frozen=True)
class OnePass:
    timestep: int = 999
    noise_input: str = "zeros"
    prediction_type: str = "sample"

    @classmethod
    def from_config(cls, icv_config: dict, scheduler_config: dict, where: str = "icv_config.json") -> OnePass | None:
        """The one-pass mode an icv_config.json declares, checked; None for a sampled model."""
        mode = icv_config.get("mode") or "sampled"
        if mode == "sampled":
            return None
        if mode != ONE_PASS:
            raise ModelFilesError(f"{where}: unknown mode {mode!r} (this runtime knows sampled and {ONE_PASS})")
        T = scheduler_config.get("num_train_timesteps", 1000)
        timestep = icv_config.get("timestep", T - 1)
        noise_input = icv_config.get("noise_input", "zeros")
        prediction_type = icv_config.get("prediction_type", scheduler_config.get("prediction_type", "epsilon"))
        if not isinstance(timestep, int) or not 0 <= timestep < T:
            raise ModelFilesError(f"{where}: one-pass timestep {timestep!r} is not a training timestep 0..{T - 1}")
        if noise_input not in NOISE_INPUTS:
            raise ModelFilesError(f"{where}: unknown noise_input {noise_input!r} (choose one of {', '.join(NOISE_INPUTS)})")
        if prediction_type not in PREDICTION_TYPES:
            raise ModelFilesError(f"{where}: unknown prediction_type {prediction_type!r} "
                                  f"(choose one of {', '.join(PREDICTION_TYPES)})")
        return cls(timestep, noise_input, prediction_type)

    def to_json(self) -> dict:
        return {"mode": ONE_PASS, "timestep": self.timestep, "noise_input": self.noise_input,
                "prediction_type": self.prediction_type}

    def noise_channels(self, image_latents: torch.Tensor, scaling_factor: float) -> torch.Tensor:
        """What the UNet's noisy-latent channels get, from the (unscaled) image latents [K, 4, h, w]."""
        if self.noise_input == "zeros":
            return torch.zeros_like(image_latents)
        return image_latents * scaling_factor

    def clean_latents(self, output: torch.Tensor, noise_channels: torch.Tensor, scheduler_config: dict) -> torch.Tensor:
        """The UNet's output -> the clean latent (scaled, as the VAE decoder's input times the scaling factor)."""
        sigma = float(training_sigmas(scheduler_config)[self.timestep])
        x = noise_channels * (sigma**2 + 1) ** 0.5  # the VE form of the VP-form input (guidance.py's convention)
        return denoised_from_output(output, x, sigma, self.prediction_type)


def one_pass_latents(mode: OnePass, predict_noise, text_emb: torch.Tensor, image_latents: torch.Tensor,
                     scaling_factor: float, scheduler_config: dict) -> torch.Tensor:
    """K clean latents from ONE UNet call of batch K: text embeddings [K, 77, D], image latents [1, 4, h, w]."""
    k = text_emb.shape[0]
    image = image_latents.expand(k, -1, -1, -1)
    noise_in = mode.noise_channels(image, scaling_factor)
    sample = torch.cat([noise_in, image], dim=1)
    t = torch.full((k,), float(mode.timestep), device=sample.device)
    output = predict_noise(sample, t, text_emb).float()
    return mode.clean_latents(output, noise_in.float(), scheduler_config)
