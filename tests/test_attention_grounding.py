"""The attention-grounding loss (training/attention_grounding.py): its terms on attention maps whose answer is known
by construction, the recorder against diffusers' own attention, and the loss inside icv-train."""

from __future__ import annotations

import math

import pytest
import torch

from icv_deploy.errors import IcvError
from icv_deploy.tasks import TASKS
from icv_deploy.training.attention_grounding import (AttentionGrounding, CrossAttentionRecorder, category_token_ids,
                                                     grounding_terms)

from test_train_run import make_dataset, read_losses, run_in_process

WORD = 7  # the category word's token id in the hand-made batches below
BOTH = AttentionGrounding(token_weight=1.0, pixel_weight=1.0)


def batch_with_left_half_object(tasks=("segmentation",)) -> dict:
    """16 x 16 targets whose mask is the left half; each instruction holds the category word at position 2."""
    n = len(tasks)
    pixels = -torch.ones(n, 3, 16, 16)
    pixels[..., :8] = 1.0  # white mask on the left half
    input_ids = torch.zeros(n, 5, dtype=torch.long)
    input_ids[:, 2] = WORD
    return {"target_pixels": pixels, "input_ids": input_ids, "task_id": torch.tensor([TASKS.index(t) for t in tasks])}


def attention(n: int, heads: int, word_share_left: float, word_share_right: float) -> torch.Tensor:
    """(n x heads, 4 x 4 positions, 5 tokens): each position pays the given share to the category word (token 2)
    and the rest to token 0."""
    probs = torch.zeros(n, heads, 4, 4, 5)
    probs[..., :2, 2], probs[..., 2:, 2] = word_share_left, word_share_right
    probs[..., 0] = 1 - probs[..., 2]
    return probs.view(n * heads, 16, 5)


def test_attention_on_the_object_only_costs_nothing():
    batch = batch_with_left_half_object()
    loss, terms = grounding_terms([(attention(1, 2, 1.0, 0.0), 2)], batch, torch.arange(1), torch.tensor([WORD]), BOTH)
    assert terms["grounding_token"] == pytest.approx(0.0, abs=1e-6)
    assert terms["grounding_pixel"] == pytest.approx(0.0, abs=1e-4)


def test_attention_spread_evenly_loses_the_share_outside_the_object():
    batch = batch_with_left_half_object()
    loss, terms = grounding_terms([(attention(1, 2, 0.5, 0.5), 2)], batch, torch.arange(1), torch.tensor([WORD]), BOTH)
    assert terms["grounding_token"] == pytest.approx(0.5)  # half of the word's attention lies outside the object
    assert terms["grounding_pixel"] == pytest.approx(math.log(2))  # p = 0.5 against 0 or 1 everywhere
    assert loss.item() == pytest.approx(0.5 + math.log(2))


def test_an_empty_mask_takes_the_pixel_term_only():
    batch = batch_with_left_half_object(("segmentation", "segmentation"))
    batch["target_pixels"][1] = -1.0  # asked about a category the picture lacks: nothing to attend to
    probs = torch.cat([attention(1, 2, 1.0, 0.0), attention(1, 2, 0.5, 0.5)])
    _, terms = grounding_terms([(probs, 2)], batch, torch.arange(2), torch.tensor([WORD]), BOTH)
    assert terms["grounding_token"] == pytest.approx(0.0, abs=1e-6)  # the first example's, alone
    assert terms["grounding_pixel"] == pytest.approx(math.log(2) / 2, rel=1e-3)  # 0 for the first, ln 2 for the second


def test_only_segmentation_examples_that_name_a_category_count():
    batch = batch_with_left_half_object(("segmentation", "detection", "segmentation"))
    batch["input_ids"][2, 2] = 0  # the third instruction names no category
    probs = torch.cat([attention(1, 2, 1.0, 0.0), attention(1, 2, 0.0, 1.0), attention(1, 2, 0.0, 1.0)])
    _, terms = grounding_terms([(probs, 2)], batch, torch.arange(3), torch.tensor([WORD]), BOTH)
    assert terms["grounding_token"] == pytest.approx(0.0, abs=1e-6)  # the wrong maps of examples 2 and 3 are ignored
    loss, terms = grounding_terms([(probs, 2)], batch, torch.tensor([1, 2]), torch.tensor([WORD]), BOTH)
    assert loss == 0.0 and terms == {}


def test_category_words_are_single_clip_tokens():
    from transformers import CLIPTokenizer

    from icv_deploy.training.synthetic import CATEGORIES

    tokenizer = CLIPTokenizer.from_pretrained("icv_deploy/assets/demo", subfolder="tokenizer")
    ids = category_token_ids(tokenizer, CATEGORIES)
    assert len(ids) == len(CATEGORIES)
    found = torch.isin(torch.tensor(tokenizer("Segment the cylinder.").input_ids), ids)
    assert found.sum() == 1


def tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=8, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12,
                                attention_head_dim=4, norm_num_groups=8).eval()


def test_the_recorder_keeps_each_cross_attention_map_and_changes_no_output():
    unet = tiny_unet()
    sample, text = torch.randn(2, 8, 8, 8), torch.randn(2, 5, 12)
    with torch.no_grad():
        reference = unet(sample, 10, encoder_hidden_states=text).sample  # diffusers' default attention
        recorder = CrossAttentionRecorder(unet)
        unrecorded = unet(sample, 10, encoder_hidden_states=text).sample
        assert recorder.stop() == []
        recorder.start()
        recorded = unet(sample, 10, encoder_hidden_states=text).sample
        maps = recorder.stop()
    torch.testing.assert_close(recorded, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(unrecorded, recorded)
    layers = [name for name, _ in unet.named_modules() if name.endswith("attn2")]
    assert len(maps) == len(layers) == 4  # one in the down block, one in the middle, two in the up block
    for probs, heads in maps:
        assert probs.shape[0] == 2 * heads and probs.shape[2] == 5
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))


@pytest.mark.slow
def test_grounding_in_training_pulls_the_words_attention_onto_the_object(tmp_path):
    """On the tiny data (one red square a picture), 60 steps with the grounding terms weighted high against the same
    run with them weighted 1e-9 (measured and logged, but with no pull): the word's attention outside the object
    (the token term) ends lower, and a run without the section logs no such term."""
    data = make_dataset(tmp_path / "data", per_task=4, size=16)
    common = dict(data=str(data), max_steps=60, checkpoint_every=0, validation_every=0, learning_rate=3e-3,
                  cache_latents=True, resize_max=16, random_flip=False, conditioning_dropout_prob=0.0, use_ema=False,
                  train_batch_size=4)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, weight in (("grounded", 5.0), ("measured", 1e-9)):
            run_in_process(output=str(tmp_path / name), **common, attention_grounding={
                "token_weight": weight, "pixel_weight": weight / 5, "categories": ["square"]})
        run_in_process(output=str(tmp_path / "plain"), **{**common, "max_steps": 4})
    finally:
        torch.set_num_threads(before)

    def token_terms(name):
        return [row["grounding_token"] for row in read_losses(tmp_path / name) if "grounding_token" in row]

    grounded, measured = token_terms("grounded"), token_terms("measured")
    assert len(grounded) == len(measured) >= 40  # the batches that hold a segmentation example
    assert sum(grounded[-10:]) < 0.9 * sum(measured[-10:]), (grounded, measured)
    assert not any("grounding_token" in row for row in read_losses(tmp_path / "plain"))


@pytest.mark.parametrize("settings, message", [
    ({"attention_grounding": {"token_weight": 1.0}}, "attention_grounding needs objective instruct_pix2pix and cache_latents"),
    ({"attention_grounding": {"token_wieght": 1.0}, "cache_latents": True, "resize_max": 16},
     "unknown attention_grounding key(s) token_wieght"),
])
def test_bad_grounding_settings_are_named(tmp_path, settings, message):
    data = make_dataset(tmp_path / "data", per_task=1, size=16)
    with pytest.raises(IcvError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_in_process(data=str(data), output=str(tmp_path / "run"), max_steps=1, **settings)
