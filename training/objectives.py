"""The InstructPix2Pix objective of icv-train (the one-pass objective is training/one_pass_loss.py).

The UNet sees the noisy target latent next to the input image's latent and predicts the noise (or v). Conditioning
dropout teaches the unconditional predictions that classifier-free guidance needs: text dropped for 5% of examples,
the image for 5%, both for 5% (null text = embedding of "", null image = zeros). Optional terms ride on the same
forward pass: decoded pixels (training/one_pass_loss.py), cross-attention grounding (training/attention_grounding.py)
and scene recognition (training/scene_recognition.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from icv_deploy.errors import IcvError

from .config import TrainConfig, reject_unknown_keys
from .one_pass_loss import decoded_examples, decoded_terms


def dropout_masks(u: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop text, drop image) from one uniform draw per example, as diffusers' train_instruct_pix2pix:
    [0, p) drops the text only, [p, 2p) both, [2p, 3p) the image only; the null image is a zero latent."""
    return u < 2 * p, (u >= p) & (u < 3 * p)


def timestep_weights(cfg: TrainConfig, num_timesteps: int) -> torch.Tensor | None:
    """Sampling weights of the timesteps under the config's timestep bias; None: uniform."""
    if cfg.timestep_bias_strategy == "none" or cfg.timestep_bias_multiplier == 1:
        return None
    weights = torch.ones(num_timesteps)
    biased = max(1, round(cfg.timestep_bias_portion * num_timesteps))
    span = slice(num_timesteps - biased, None) if cfg.timestep_bias_strategy == "later" else slice(0, biased)
    weights[span] *= cfg.timestep_bias_multiplier
    return weights


def instruct_pix2pix_loss(batch, unet, vae, text_encoder, noise_scheduler, null_text, dropout: float, gen, weight_dtype,
                          decoded=None, weights=None, grounding=None,
                          recognition=None, color_words=None) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, its terms): epsilon (or v) MSE of the InstructPix2Pix objective with conditioning dropout, plus with
    `decoded` (a DecodedLoss, cached latents) the decoded-pixel terms of training/one_pass_loss.py on the clean
    latent the prediction implies at its timestep, and with `grounding` (a Grounding) the cross-attention terms of
    training/attention_grounding.py, both for the examples that kept both conditions, and with `recognition` (a
    SceneRecognitionHead) the category term of training/scene_recognition.py for those that kept the picture (its word
    term for those that kept both), and with `color_words` (a ColorWordHead) the colour-word term of
    training/color_words.py on every instruction. `weights` (timestep_weights): how often each timestep is drawn;
    None: uniformly."""
    from diffusers.utils.torch_utils import randn_tensor

    if "image_latents" in batch:  # cached (training/latent_cache.py): the same quantities, encoded once
        image_latents = batch["image_latents"]
        device, bsz = image_latents.device, image_latents.shape[0]
        eps = randn_tensor(batch["target_mean"].shape, generator=gen, device=device, dtype=batch["target_mean"].dtype)
        latents = (batch["target_mean"] + batch["target_std"] * eps) * vae.config.scaling_factor
    else:
        device = batch["input_pixels"].device
        bsz = batch["input_pixels"].shape[0]
        with torch.no_grad():
            # Targets as Stable Diffusion training: a sample of the posterior, times the scaling factor.
            latents = vae.encode(batch["target_pixels"].to(weight_dtype)).latent_dist.sample(generator=gen)
            latents = latents * vae.config.scaling_factor
            # Inputs as the pipeline will see them (DESIGN.md 3): the posterior mode, NOT scaled.
            image_latents = vae.encode(batch["input_pixels"].to(weight_dtype)).latent_dist.mode()
    noise = randn_tensor(latents.shape, generator=gen, device=device, dtype=latents.dtype)
    if weights is None:
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), generator=gen).to(device)
    else:
        timesteps = torch.multinomial(weights, bsz, replacement=True, generator=gen).to(device)
    text = text_encoder(batch["input_ids"])[0]
    # on every instruction's own text, before the dropout below swaps some for the empty one
    colors, color_values = color_words(batch["input_ids"], text) if color_words is not None else (0.0, {})

    drop_text, drop_image = dropout_masks(torch.rand(bsz, generator=gen).to(device), dropout)
    kept = (~drop_text & ~drop_image).nonzero().flatten()
    if decoded is not None and decoded.active and decoded.min_timestep > 0 and len(kept):
        chosen = kept[decoded_examples(batch["task_id"][kept], decoded)]  # the ones decoded_terms will decode
        timesteps[chosen] = torch.randint(decoded.min_timestep, noise_scheduler.config.num_train_timesteps,
                                          (len(chosen),), generator=gen).to(device)
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    text = torch.where(drop_text.view(bsz, 1, 1), null_text.to(text.dtype).expand_as(text), text)
    image_latents = image_latents * (~drop_image).view(bsz, 1, 1, 1).to(image_latents.dtype)

    model_input = torch.cat([noisy_latents, image_latents.to(noisy_latents.dtype)], dim=1)
    if grounding is not None:
        grounding.recorder.start()
    prediction = unet(model_input, timesteps, encoder_hidden_states=text, return_dict=False)[0]
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    loss = F.mse_loss(prediction.float(), target.float(), reduction="mean")
    if (decoded is None or not decoded.active) and grounding is None and recognition is None and color_words is None:
        return loss, {}
    extra, terms = 0.0, {"prediction_mse": loss.item()}
    if decoded is not None and decoded.active:
        clean = predicted_clean_latents(prediction.float(), noisy_latents.float(), timesteps, noise_scheduler)
        extra, more = decoded_terms(clean, batch, vae, decoded, kept)
        terms.update(more)
    if grounding is not None:
        grounded, more = grounding.terms(batch, kept)
        extra, terms = extra + grounded, {**terms, **more}
    if recognition is not None:
        recognised, more = recognition(batch, (~drop_image).nonzero().flatten(), text, kept)
        extra, terms = extra + recognised, {**terms, **more}
    return loss + extra + colors, {**terms, **color_values}


def predicted_clean_latents(prediction, noisy_latents, timesteps, noise_scheduler) -> torch.Tensor:
    """The clean latent a prediction implies at its timestep: x0 = sqrt(a) x_t - sqrt(1 - a) v for v-prediction,
    (x_t - sqrt(1 - a) eps) / sqrt(a) for epsilon (a = alphas_cumprod[t])."""
    alpha = noise_scheduler.alphas_cumprod.to(noisy_latents.device)[timesteps].float().view(-1, 1, 1, 1)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return alpha.sqrt() * noisy_latents - (1 - alpha).sqrt() * prediction
    return (noisy_latents - (1 - alpha).sqrt() * prediction) / alpha.sqrt().clamp(min=1e-4)


def objective_settings(cfg: TrainConfig, scheduler_config: dict):
    """(OnePass or None, DecodedLoss or None) of a config, checked: the one-pass mode of objective one_pass, and the
    decoded-pixel terms (always for one_pass; for instruct_pix2pix when the config has a decoded_loss section)."""
    from icv_deploy.one_pass import ONE_PASS, OnePass

    from .one_pass_loss import DecodedLoss

    reject_unknown_keys("decoded_loss", cfg.decoded_loss, DecodedLoss.__dataclass_fields__)
    decoded = DecodedLoss(**cfg.decoded_loss) if cfg.objective == "one_pass" or cfg.decoded_loss else None
    timesteps = scheduler_config.get("num_train_timesteps", 1000)
    if decoded is not None and not 0 <= decoded.min_timestep < timesteps:
        raise IcvError(f"decoded_loss min_timestep must be from 0 to {timesteps - 1}, got {decoded.min_timestep}")
    if decoded is not None and decoded.min_timestep and cfg.objective == "one_pass":
        raise IcvError("decoded_loss min_timestep is for the sampled objective; one_pass trains at its one timestep")
    if cfg.objective != "one_pass":
        return None, decoded
    reject_unknown_keys("one_pass", cfg.one_pass, OnePass.__dataclass_fields__)
    mode = OnePass.from_config({**cfg.one_pass, "mode": ONE_PASS}, scheduler_config, where="the one_pass config")
    return mode, decoded
