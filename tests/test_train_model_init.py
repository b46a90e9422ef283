"""Starting points of training: a 4-channel text-to-image SD folder (widened) and an 8-channel checkpoint."""

from __future__ import annotations

import pytest
import torch

from icv_deploy.errors import ModelFilesError
from icv_deploy.training.model_init import load_training_models


def _save_text_to_image_model(folder, in_channels=4):
    """A tiny random Stable Diffusion text-to-image folder (4-channel UNet), as the SD 1.5 hub folder is laid out."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from icv_deploy.testing import SCHEDULER_CONFIG, tiny_configs, build_pipeline

    unet_cfg, vae_cfg, text_cfg = tiny_configs(2)
    donor = build_pipeline({**unet_cfg, "in_channels": in_channels}, vae_cfg, text_cfg, seed=3)
    with torch.no_grad():  # random biases everywhere, so that a lost conv_in bias shows
        donor.unet.conv_in.bias.normal_()
    pipe = StableDiffusionPipeline(
        vae=donor.vae, text_encoder=donor.text_encoder, tokenizer=donor.tokenizer, unet=donor.unet,
        scheduler=DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "timestep_spacing"}),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return _save_text_to_image_model(tmp_path_factory.mktemp("sd") / "t2i")


def test_widened_conv_in_keeps_the_base_prediction(sd_folder):
    from diffusers import UNet2DConditionModel

    base = UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet").eval()
    models = load_training_models(str(sd_folder))
    unet = models.unet.eval()
    assert models.widened and unet.config.in_channels == 8 and unet.conv_in.in_channels == 8
    assert torch.count_nonzero(unet.conv_in.weight[:, 4:]) == 0
    assert torch.equal(unet.conv_in.bias, base.conv_in.bias)

    gen = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 4, 16, 16, generator=gen)
    text = torch.randn(2, 77, base.config.cross_attention_dim, generator=gen)
    timesteps = torch.tensor([10, 700])
    with torch.no_grad():
        expected = base(noisy, timesteps, encoder_hidden_states=text).sample
        zero_image = unet(torch.cat([noisy, torch.zeros_like(noisy)], 1), timesteps, encoder_hidden_states=text).sample
        # Before training the image channels have zero weights: any image latent gives the same prediction.
        some_image = unet(torch.cat([noisy, torch.randn_like(noisy)], 1), timesteps, encoder_hidden_states=text).sample
    torch.testing.assert_close(zero_image, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(some_image, expected, rtol=0, atol=1e-6)

    # The widened UNet can learn to use the image: a gradient reaches channels 4-7.
    unet.train()
    out = unet(torch.cat([noisy, torch.randn_like(noisy)], 1), timesteps, encoder_hidden_states=text).sample
    out.square().mean().backward()
    assert unet.conv_in.weight.grad[:, 4:].abs().sum() > 0


def test_an_8_channel_checkpoint_is_taken_as_it_is(tiny_model):
    from diffusers import UNet2DConditionModel

    models = load_training_models(str(tiny_model))
    reference = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    assert not models.widened and models.unet.config.in_channels == 8
    assert torch.equal(models.unet.conv_in.weight, reference.conv_in.weight)
    assert type(models.noise_scheduler).__name__ == "DDPMScheduler"
    assert models.noise_scheduler.config.beta_schedule == "scaled_linear"


def test_a_unet_of_another_width_is_refused(tmp_path):
    folder = _save_text_to_image_model(tmp_path / "odd", in_channels=5)
    with pytest.raises(ModelFilesError, match="5 input channels"):
        load_training_models(str(folder))


def test_base_vae_replaces_the_autoencoder_of_a_trained_base(tiny_model, tmp_path):
    """A trained model's UNet to be adapted to a fine-tuned autoencoder: only the autoencoder is swapped."""
    from diffusers import AutoencoderKL

    other = AutoencoderKL.from_pretrained(tiny_model, subfolder="vae")
    with torch.no_grad():
        for weight in other.parameters():
            weight.add_(0.5)
    other.save_pretrained(tmp_path / "vae", safe_serialization=True)

    swapped = load_training_models(str(tiny_model), base_vae=str(tmp_path / "vae"))
    kept = load_training_models(str(tiny_model))
    first = lambda models: next(models.vae.parameters())  # noqa: E731
    assert torch.equal(first(swapped), next(other.parameters()))
    assert not torch.equal(first(kept), first(swapped))
    assert torch.equal(swapped.unet.conv_in.weight, kept.unet.conv_in.weight)  # only the autoencoder changes

    with pytest.raises(ModelFilesError, match="no trained VAE"):
        load_training_models(str(tiny_model), base_vae=str(tmp_path / "missing"))
