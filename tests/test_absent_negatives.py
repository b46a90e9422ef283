"""Segmentation examples about an absent category (training/absent_negatives.py): which rows are swapped, to what,
how often, and that icv-train's cached examples carry them."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from transformers import CLIPTokenizer

from icv_deploy.errors import IcvError
from icv_deploy.training.absent_negatives import AbsentCategoryNegatives
from icv_deploy.training.latent_cache import CachedLatentExamples
from icv_deploy.training.synthetic import CATEGORIES
from icv_deploy.training.train_data import tokenize

ALL = list(CATEGORIES)
# picture a holds a cube and a ball; picture b every category (nothing is absent); c is a depth row
ROWS = [("segmentation", "cube", "a", "Mark all pixels that belong to the cube."),
        ("segmentation", "ball", "a", "Segment the ball."),
        ("detection", "cube", "a", "Detect the cube."),
        *[("segmentation", c, "b", f"Segment the {c}.") for c in ALL],
        ("depth", None, "c", "Create a monocular depth map.")]


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.from_pretrained("icv_deploy/assets/demo", subfolder="tokenizer")


@pytest.fixture(scope="module")
def rows():
    return datasets.Dataset.from_dict({"task": [r[0] for r in ROWS], "category": [r[1] for r in ROWS],
                                       "image_id": [r[2] for r in ROWS], "edit_prompt": [r[3] for r in ROWS]})


def example(tokenizer, index: int) -> dict:
    return {"input_ids": tokenize(tokenizer, [ROWS[index][3]])[0], "target_mean": torch.ones(4, 2, 2),
            "target_std": torch.ones(4, 2, 2), "target_pixels": torch.ones(3, 8, 8)}


def negatives(share, rows, tokenizer):
    empty_mean = torch.stack([torch.full((4, 2, 2), -3.0), torch.full((4, 2, 2), -4.0)])  # plain, mirrored
    return AbsentCategoryNegatives(share, rows, tokenizer, empty_mean, torch.zeros(2, 4, 2, 2))


def decoded(tokenizer, input_ids) -> str:
    return tokenizer.decode(input_ids, skip_special_tokens=True)


def test_a_swapped_example_names_a_category_its_picture_lacks_and_asks_for_an_empty_mask(rows, tokenizer):
    swap = negatives(1.0, rows, tokenizer)
    seen = set()
    for seed in range(40):
        out = swap.apply(example(tokenizer, 0), 0, np.random.default_rng(seed), mirrored=1)
        text = decoded(tokenizer, out["input_ids"])
        assert text.startswith("mark all pixels that belong to the ") and "cube" not in text and "ball" not in text
        seen.update(c for c in ALL if c in text.split())
        assert torch.equal(out["target_mean"], torch.full((4, 2, 2), -4.0))  # the mirrored empty mask's latent
        assert torch.equal(out["target_pixels"], -torch.ones(3, 8, 8))  # black
    assert seen == {"cylinder", "cone", "pyramid"}  # the three categories picture a lacks, each drawn


def test_rows_that_cannot_be_swapped_are_kept(rows, tokenizer):
    swap = negatives(1.0, rows, tokenizer)
    for index in (2, 3, len(ROWS) - 1):  # a detection row, a picture holding every category, a depth row
        original = example(tokenizer, index)
        assert swap.apply(original, index, np.random.default_rng(0), mirrored=0) is original
    original = example(tokenizer, 0)
    original["input_ids"] = tokenize(tokenizer, ["Segment the cubes."])[0]  # the word is not its own token here
    assert swap.apply(original, 0, np.random.default_rng(0), mirrored=0) is original


def test_the_share_of_swapped_examples_is_the_configured_one(rows, tokenizer):
    swap = negatives(0.25, rows, tokenizer)
    swapped = sum(swap.apply(example(tokenizer, 1), 1, np.random.default_rng(seed), 0)["target_mean"][0, 0, 0] == -3.0
                  for seed in range(2000))
    assert 0.21 < swapped / 2000 < 0.29


def test_cached_examples_carry_the_negatives_with_their_flip(rows, tokenizer):
    n = len(ROWS)
    cache = {"image_latents": torch.randn(n, 2, 4, 2, 2), "target_mean": torch.ones(n, 2, 4, 2, 2),
             "target_std": torch.ones(n, 2, 4, 2, 2)}
    plain = CachedLatentExamples(rows, cache, tokenizer, flip=True, seed=0)
    swapped = CachedLatentExamples(rows, cache, tokenizer, flip=True, seed=0, negatives=negatives(1.0, rows, tokenizer))
    a, b = plain[0], swapped[0]
    torch.testing.assert_close(a["image_latents"], b["image_latents"])  # the same picture, the same flip
    mirrored = int(torch.equal(a["image_latents"], cache["image_latents"][0, 1]))
    assert torch.equal(b["target_mean"], torch.full((4, 2, 2), -4.0 if mirrored else -3.0))
    assert not torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(swapped[n - 1]["input_ids"], plain[n - 1]["input_ids"])  # the depth row


def test_bad_settings_are_named(tmp_path):
    from icv_deploy.training.config import load_config

    with pytest.raises(IcvError, match="segmentation_negatives trains on cached latents"):
        load_config("tiny", {"segmentation_negatives": 0.2, "data": "x"})
    with pytest.raises(IcvError, match=r"segmentation_negatives must lie in \[0, 1\]"):
        load_config("tiny", {"segmentation_negatives": 1.5, "data": "x", "cache_latents": True, "resize_max": 32,
                             "resize_min": 32, "resolution": 32})


def test_a_category_word_of_several_tokens_is_named_as_the_options_error(rows, tokenizer):
    """Negatives and the recognition word term find the category by its one token: a word the tokenizer splits is a
    bad setting, reported with the option's name, not a crash mid-training."""
    from icv_deploy.training.prompts import category_word_tokens

    split = "traffic light"  # two tokens
    with pytest.raises(IcvError, match=r"segmentation_negatives needs one-token category words.*traffic light"):
        AbsentCategoryNegatives(1.0, rows, tokenizer, torch.zeros(2, 4, 2, 2), torch.zeros(2, 4, 2, 2),
                                categories=(*ALL, split))
    words = category_word_tokens(tokenizer, ALL, "scene_recognition.word_weight")
    assert list(words) == ALL and len(set(words.values())) == len(ALL)
    assert all(tokenizer.decode([words[c]]).strip() == c for c in ALL)  # each id is its word
