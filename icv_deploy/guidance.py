"""InstructPix2Pix guidance (docs/DESIGN.md 4) as a k-diffusion-style denoiser.

Per step the UNet sees one batch of 3K rows for K instructions on the same image:
    rows [0, K)    text + image:  x_t, z_img, emb(instruction)
    rows [K, 2K)   image only:    x_t, z_img, emb("")
    rows [2K, 3K)  neither:       x_t, 0,     emb("")
eps = eps_u + s_T * (eps_ti - eps_i) + s_I * (eps_i - eps_u), exactly as diffusers'
StableDiffusionInstructPix2PixPipeline computes it.
"""

from __future__ import annotations

import torch

from .schedules import Schedule


def guided_noise(eps: torch.Tensor, guidance_scale: float, image_guidance_scale: float) -> torch.Tensor:
    eps_text_image, eps_image, eps_uncond = eps.chunk(3)
    return eps_uncond + guidance_scale * (eps_text_image - eps_image) + image_guidance_scale * (eps_image - eps_uncond)


def guidance_batch(text_emb: torch.Tensor, empty_emb: torch.Tensor, image_latents: torch.Tensor):
    """Fixed conditioning for K instructions: text embeddings [3K, 77, D] and image latents [3K, 4, h, w].

    `text_emb` is [K, 77, D] (one row per instruction), `empty_emb` [1, 77, D], `image_latents` [1, 4, h, w].
    """
    k = text_emb.shape[0]
    empty = empty_emb.expand(k, -1, -1)
    image = image_latents.expand(k, -1, -1, -1)
    return torch.cat([text_emb, empty, empty]), torch.cat([image, image, torch.zeros_like(image)])


class GuidedDenoiser:
    """x (VE form, [K, 4, h, w]) and a schedule index -> the guided estimate of x0.

    The UNet takes VP-form input x / sqrt(sigma^2 + 1) and the schedule's timestep for that sigma;
    with epsilon prediction, x0 = x - sigma * eps.
    """

    def __init__(self, predict_noise, schedule: Schedule, text_emb, image_latents, guidance_scale=7.5, image_guidance_scale=1.5):
        self.predict_noise = predict_noise  # backend.predict_noise(sample, timestep, text_embeddings)
        self.schedule = schedule
        self.text_emb, self.image_latents = text_emb, image_latents
        self.guidance_scale, self.image_guidance_scale = guidance_scale, image_guidance_scale

    def __call__(self, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma = self.schedule.sigmas[i]
        x_in = x / (sigma**2 + 1) ** 0.5
        sample = torch.cat([torch.cat([x_in] * 3).to(self.image_latents.dtype), self.image_latents], dim=1)
        t = self.schedule.timesteps[i].expand(sample.shape[0]).to(sample.device)
        eps = self.predict_noise(sample, t, self.text_emb).float()
        eps = guided_noise(eps, self.guidance_scale, self.image_guidance_scale)
        return x - sigma * eps
