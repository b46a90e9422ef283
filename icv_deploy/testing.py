"""Random-weight InstructCV models built from configs, saved as diffusers folders.

No model hub is needed: tests use `make_tiny_model`, benchmarks `make_sd15_model` (the full Stable Diffusion 1.5
InstructPix2Pix architecture: 859.5 M-parameter 8-channel UNet, CLIP ViT-L/14 text encoder, SD VAE), so timings
measure the real cost. The folders have exactly the layout of `timbrooks/instruct-pix2pix` or
`alaa-lab/InstructCV`, and load through the same code path (`icv_deploy.load`, diffusers' `from_pretrained`).
`tiny_vae=True` (or `add_tiny_vae` on an existing folder) adds the optional `vae_tiny/` (diffusers AutoencoderTiny:
TAESD's architecture for sd15, a small one with the same scale factor for tiny). Every folder built here is marked
`"random_weights": true` in its icv_config.json, so that the runtime, `icv-infer` and `icv-eval` say its answers mean
nothing.

    python -m icv_deploy.testing tiny /tmp/tiny-icv      # or: sd15 /tmp/sd15-random, add-tiny-vae /tmp/sd15-random
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .clip_vocab import VOCAB_SIZE, save_clip_tokenizer

# The scheduler that timbrooks/instruct-pix2pix and alaa-lab/InstructCV ship (Euler ancestral, SD 1.5 betas).
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "linspace",
}

SD15_UNET = dict(
    sample_size=32, in_channels=8, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=256, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.18215,
)
# diffusers' AutoencoderTiny defaults, which are madebyollin/taesd's architecture (scale factor 8, 4 latent channels).
TAESD_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, act_fn="relu", upsampling_scaling_factor=2,
    encoder_block_out_channels=(64, 64, 64, 64), decoder_block_out_channels=(64, 64, 64, 64),
    num_encoder_blocks=(1, 3, 3, 3), num_decoder_blocks=(3, 3, 3, 1),
    latent_magnitude=3, latent_shift=0.5, scaling_factor=1.0,
)
SD15_TEXT = dict(
    vocab_size=VOCAB_SIZE, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)


def tiny_configs(vae_levels: int) -> tuple[dict, dict, dict]:
    unet = dict(
        sample_size=16, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        # attention only at the lower resolution: full-resolution self-attention would cost more than the rest
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    vae = dict(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64, layers_per_block=1,
        block_out_channels=tuple([16, 32, 32, 32][:vae_levels]),
        down_block_types=("DownEncoderBlock2D",) * vae_levels, up_block_types=("UpDecoderBlock2D",) * vae_levels,
        norm_num_groups=8, scaling_factor=0.18215,
    )
    text = dict(
        vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32,
    )
    return unet, vae, text


def tiny_vae_config(vae_levels: int = 3) -> dict:
    """A small AutoencoderTiny whose scale factor 2 ** (vae_levels - 1) matches `tiny_configs(vae_levels)`' VAE."""
    return {**TAESD_CONFIG, "encoder_block_out_channels": (8,) * vae_levels, "decoder_block_out_channels": (8,) * vae_levels,
            "num_encoder_blocks": (1,) * vae_levels, "num_decoder_blocks": (1,) * vae_levels}


def add_tiny_vae(folder: str | Path, config: dict | None = None, seed: int = 0) -> Path:
    """Write `folder/vae_tiny/` (AutoencoderTiny, random weights drawn from `seed`) beside an existing model's VAE.

    `config` None picks TAESD's architecture when the model's VAE has scale factor 8, else `tiny_vae_config` with the
    model's scale factor. model_index.json is left alone: vae_tiny/ is ours, not a pipeline component of diffusers.
    """
    from diffusers import AutoencoderTiny

    from .atomic import atomic_dir
    from .model_files import TINY_VAE_FOLDER, read_json, vae_scale_factor

    folder = Path(folder)
    if config is None:
        factor = vae_scale_factor(read_json(folder / "vae" / "config.json"))
        config = TAESD_CONFIG if factor == 8 else tiny_vae_config(vae_levels=factor.bit_length())  # 2 ** (levels - 1)
    torch.manual_seed(seed)
    tiny = AutoencoderTiny(**config)
    with atomic_dir(folder / TINY_VAE_FOLDER) as tmp:
        tiny.save_pretrained(tmp, safe_serialization=True)
    return folder


def mark_random_weights(folder: str | Path) -> Path:
    """Set `"random_weights": true` in the folder's icv_config.json (written if it has none, other keys kept)."""
    from .atomic import write_json
    from .model_files import CONFIG_NAME, model_config

    folder = Path(folder)
    write_json(folder / CONFIG_NAME, {**model_config(folder), "random_weights": True})
    return folder


def build_pipeline(unet_cfg: dict, vae_cfg: dict, text_cfg: dict, seed: int = 0, tokenizer_dir: str | Path | None = None):
    """A `StableDiffusionInstructPix2PixPipeline` with random weights drawn from `seed`."""
    import tempfile

    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_cfg)
    vae = AutoencoderKL(**vae_cfg)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
    if tokenizer_dir is None:
        with tempfile.TemporaryDirectory(prefix="icv-tok-") as tmp:  # read into memory, so nothing is left behind
            tokenizer = CLIPTokenizer.from_pretrained(save_clip_tokenizer(Path(tmp)))
    else:
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    scheduler = EulerAncestralDiscreteScheduler(**SCHEDULER_CONFIG)
    return StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def make_tiny_model(out_dir: str | Path, seed: int = 0, vae_levels: int = 3, tiny_vae: bool = False) -> Path:
    """Save a tiny random 8-channel model (VAE scale factor 2 ** (vae_levels - 1): 4 by default, not 8).
    `tiny_vae` adds vae_tiny/ with the same scale factor."""
    out_dir = Path(out_dir)
    pipe = build_pipeline(*tiny_configs(vae_levels), seed=seed)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    mark_random_weights(out_dir)
    if tiny_vae:
        add_tiny_vae(out_dir, tiny_vae_config(vae_levels), seed=seed)
    return out_dir


def make_sd15_model(out_dir: str | Path, seed: int = 0, tiny_vae: bool = False) -> Path:
    """Save the full SD 1.5 InstructPix2Pix architecture with random weights (about 4.3 GB in fp32).
    `tiny_vae` adds vae_tiny/ with TAESD's architecture (about 10 MB)."""
    out_dir = Path(out_dir)
    pipe = build_pipeline(SD15_UNET, SD15_VAE, SD15_TEXT, seed=seed)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    mark_random_weights(out_dir)
    if tiny_vae:
        add_tiny_vae(out_dir, TAESD_CONFIG, seed=seed)
    return out_dir


if __name__ == "__main__":
    kind, out = sys.argv[1], sys.argv[2]
    print({"tiny": make_tiny_model, "sd15": make_sd15_model, "add-tiny-vae": add_tiny_vae}[kind](out))
