"""InstructPix2Pix guidance (docs/DESIGN.md 4) as a k-diffusion-style denoiser.

Per step the UNet sees one batch of 3K rows for K instructions on the same image:
    rows [0, K)    text + image:  x_t, z_img, emb(instruction)
    rows [K, 2K)   image only:    x_t, z_img, emb("")
    rows [2K, 3K)  neither:       x_t, 0,     emb("")
eps = eps_u + s_T * (eps_ti - eps_i) + s_I * (eps_i - eps_u), exactly as diffusers'
StableDiffusionInstructPix2PixPipeline computes it. The same combination applies to whatever the UNet predicts
(noise, v or the clean latent, the scheduler config's `prediction_type`): each is affine in the others at a
given step, so guiding the raw output and then converting it to x0 (`denoised_from_output`) is what diffusers does.
With both scales 1 the combination is eps_ti itself: then only the K text + image rows run (`is_unguided`).
"""

from __future__ import annotations

import torch

from .schedules import Schedule

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def denoised_from_output(output: torch.Tensor, x: torch.Tensor, sigma, prediction_type: str) -> torch.Tensor:
    """The UNet's output at the VE-form state x = x0 + sigma * noise -> its estimate of x0.

    The UNet itself sees the VP form x / sqrt(sigma^2 + 1); the conversions are diffusers' Euler schedulers'.
    """
    if prediction_type == "epsilon":
        return x - sigma * output
    if prediction_type == "v_prediction":  # v = alpha_t * noise - sigma_t * x0 in the VP form
        return x / (sigma**2 + 1) - output * sigma / (sigma**2 + 1) ** 0.5
    if prediction_type == "sample":
        return output
    raise ValueError(f"unknown prediction_type {prediction_type!r}: choose one of {', '.join(PREDICTION_TYPES)}")


def guided_noise(eps: torch.Tensor, guidance_scale: float, image_guidance_scale: float) -> torch.Tensor:
    eps_text_image, eps_image, eps_uncond = eps.chunk(3)
    return eps_uncond + guidance_scale * (eps_text_image - eps_image) + image_guidance_scale * (eps_image - eps_uncond)


def is_unguided(guidance_scale: float, image_guidance_scale: float) -> bool:
    """Both scales 1: the combination above is eps_ti itself, so the image-only and unconditional rows would be
    computed for nothing; the denoiser runs the K text + image rows alone (a third of the UNet work)."""
    return guidance_scale == 1 and image_guidance_scale == 1


def guidance_batch(text_emb: torch.Tensor, empty_emb: torch.Tensor, image_latents: torch.Tensor, guided: bool = True):
    """Fixed conditioning for K instructions: text embeddings [3K, 77, D] and image latents [3K, 4, h, w]
    ([K, ...] each when not `guided`).

    `text_emb` is [K, 77, D] (one row per instruction), `empty_emb` [1, 77, D], `image_latents` [1, 4, h, w].
    """
    k = text_emb.shape[0]
    image = image_latents.expand(k, -1, -1, -1)
    if not guided:
        return text_emb, image
    empty = empty_emb.expand(k, -1, -1)
    return torch.cat([text_emb, empty, empty]), torch.cat([image, image, torch.zeros_like(image)])


class GuidedDenoiser:
    """x (VE form, [K, 4, h, w]) and a schedule index -> the guided estimate of x0.

    The UNet takes VP-form input x / sqrt(sigma^2 + 1) and the schedule's timestep for that sigma; its guided
    output is converted to x0 according to `prediction_type`. `consistency` = (c_skip, c_out) per schedule step
    (sampling.lcm_scalings) makes it a consistency model's estimate c_skip * x_vp + c_out * x0, as LCM samples.
    """

    def __init__(self, predict_noise, schedule: Schedule, text_emb, image_latents, guidance_scale=7.5, image_guidance_scale=1.5,
                 prediction_type: str = "epsilon", consistency=None):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}: choose one of {', '.join(PREDICTION_TYPES)}")
        self.predict_noise = predict_noise  # backend.predict_noise(sample, timestep, text_embeddings)
        self.schedule = schedule
        self.text_emb, self.image_latents = text_emb, image_latents
        self.guidance_scale, self.image_guidance_scale = guidance_scale, image_guidance_scale
        self.prediction_type, self.consistency = prediction_type, consistency

    def __call__(self, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma = self.schedule.sigmas[i]
        x_in = x / (sigma**2 + 1) ** 0.5
        guided = self.text_emb.shape[0] == 3 * x.shape[0]  # else the K rows of guidance_batch(..., guided=False)
        sample = torch.cat([torch.cat([x_in] * (3 if guided else 1)).to(self.image_latents.dtype), self.image_latents], dim=1)
        t = self.schedule.timesteps[i].expand(sample.shape[0]).to(sample.device)
        out = self.predict_noise(sample, t, self.text_emb).float()
        if guided:
            out = guided_noise(out, self.guidance_scale, self.image_guidance_scale)
        denoised = denoised_from_output(out, x, sigma, self.prediction_type)
        if self.consistency is not None:
            c_skip, c_out = self.consistency
            denoised = c_out[i] * denoised + c_skip[i] * x_in
        return denoised
