"""The random-weight factories build the architectures docs/DESIGN.md 3 names (checked on the meta device: no memory)."""

from __future__ import annotations

import torch

from icv_deploy.clip_vocab import VOCAB_SIZE, clip_vocab_and_merges
from icv_deploy.testing import SD15_TEXT, SD15_UNET, SD15_VAE


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sd15_architecture_sizes():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    assert round(count(unet) / 1e6, 1) == 859.5  # SD 1.5 UNet (859.52 M) + 4 extra conv_in input channels
    assert unet.config.in_channels == 8 and unet.config.cross_attention_dim == 768
    assert round(count(vae) / 1e6, 2) == 83.65
    assert round(count(text) / 1e6, 2) == 123.06  # CLIP ViT-L/14 text tower
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8


def test_clip_tokenizer_is_the_standard_one(tmp_path):
    from transformers import CLIPTokenizer

    from icv_deploy.clip_vocab import save_clip_tokenizer

    vocab, merges = clip_vocab_and_merges()
    assert len(vocab) == VOCAB_SIZE == 49408
    tok = CLIPTokenizer.from_pretrained(save_clip_tokenizer(tmp_path / "tok"))
    ids = tok("Segment the cat").input_ids
    # known ids of the public CLIP vocabulary: start, "segment</w>", "the</w>", "cat</w>", end
    assert ids == [49406, 15615, 518, 2368, 49407]
    assert tok.model_max_length == 77
