"""training/unknown_tokens.py: unknown tokens inserted into a share of the training instructions, every original
token kept in order, nothing the training pool or the tokenizer's specials hold inserted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icv_deploy.errors import IcvError
from icv_deploy.model_files import BUNDLED_DIR
from icv_deploy.training.config import load_config
from icv_deploy.training.latent_cache import CachedLatentExamples
from icv_deploy.training.train_data import tokenize
from icv_deploy.training.unknown_tokens import UnknownTokenInsertion, UnknownTokens

PROMPTS = ["Mark all pixels that belong to the cube.", "Create a monocular depth map",
           "Show blue if the picture has a cone, otherwise show black", "Detect the ball"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(BUNDLED_DIR / "demo" / "tokenizer")


def words(ids: torch.Tensor, tokenizer) -> list[int]:
    """The tokens between the start token and the first end token."""
    ids = ids.tolist()
    return ids[1:ids.index(tokenizer.eos_token_id)]


def is_subsequence(short: list[int], long: list[int]) -> bool:
    rest = iter(long)
    return all(token in rest for token in short)


def test_inserted_tokens_are_unknown_and_every_original_token_stays_in_order(tokenizer):
    known = tokenize(tokenizer, PROMPTS)
    insertion = UnknownTokenInsertion(UnknownTokens(share=1.0, max_tokens=3), known, tokenizer)
    specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    counts = []
    for seed in range(200):
        original = known[seed % len(PROMPTS)]
        noisy = insertion.apply(original, np.random.default_rng(seed))
        assert noisy.shape == original.shape and noisy[0] == tokenizer.bos_token_id
        before, after = words(original, tokenizer), words(noisy, tokenizer)
        assert is_subsequence(before, after)
        added = list(after)
        for token in before:
            added.remove(token)
        assert not set(added) & (set(known.flatten().tolist()) | specials)
        assert set(noisy.tolist()[len(after) + 1:]) == {tokenizer.pad_token_id}  # end token, then padding
        counts.append(len(added))
    assert set(counts) == {1, 2, 3}
    # decoded, it reads as the instruction with words added: the category word kept, the text longer
    noisy = insertion.apply(known[0], np.random.default_rng(0))
    text = tokenizer.decode(words(noisy, tokenizer))
    assert "cube" in text and len(text) > len("mark all pixels that belong to the cube.")


@pytest.mark.parametrize("share", [0.0, 0.3])
def test_the_share_of_changed_instructions_is_the_configured_one(tokenizer, share):
    known = tokenize(tokenizer, PROMPTS)
    insertion = UnknownTokenInsertion(UnknownTokens(share=share), known, tokenizer)
    changed = [not torch.equal(insertion.apply(known[0], np.random.default_rng(s)), known[0]) for s in range(2000)]
    assert np.mean(changed) == pytest.approx(share, abs=0.03)


def test_a_full_instruction_gets_only_what_fits(tokenizer):
    long = tokenize(tokenizer, [" ".join(["cube"] * 75), " ".join(["cube"] * 200)])
    insertion = UnknownTokenInsertion(UnknownTokens(share=1.0, max_tokens=3), long, tokenizer)
    for original in long:
        for seed in range(20):
            noisy = insertion.apply(original, np.random.default_rng(seed))
            assert len(noisy) == tokenizer.model_max_length and noisy[-1] == tokenizer.eos_token_id
            assert is_subsequence(words(original, tokenizer), words(noisy, tokenizer))
    assert torch.equal(insertion.apply(long[1], np.random.default_rng(0)), long[1])  # truncated: no room at all


def test_cached_examples_carry_the_insertion_drawn_per_epoch(tokenizer):
    n = len(PROMPTS)
    cache = {name: torch.zeros(n, 1, 4, 2, 2) for name in ("image_latents", "target_mean", "target_std")}
    rows = {"edit_prompt": PROMPTS}
    plain = CachedLatentExamples(rows, cache, tokenizer, flip=False, seed=0)
    noisy = CachedLatentExamples(rows, cache, tokenizer, flip=False, seed=0,
                                 unknown_tokens=UnknownTokens(share=1.0))
    first = [noisy[i]["input_ids"] for i in range(n)]
    assert all(not torch.equal(a, plain[i]["input_ids"]) for i, a in enumerate(first))
    assert all(torch.equal(a, noisy[i]["input_ids"]) for i, a in enumerate(first))  # the same epoch: the same draw
    noisy.set_epoch(1)
    assert any(not torch.equal(a, noisy[i]["input_ids"]) for i, a in enumerate(first))


@pytest.mark.parametrize("section, message", [
    ({"share": 1.5}, r"unknown_tokens share must lie in \[0, 1\], got 1.5"),
    ({"share": 0.5, "max_tokens": 0}, "unknown_tokens max_tokens must be at least 1, got 0"),
    ({"shares": 0.5}, "unknown unknown_tokens key"),
])
def test_bad_settings_are_named(section, message):
    with pytest.raises(IcvError, match=message):
        load_config("demo", {"unknown_tokens": section})


def test_it_needs_cached_latents():
    with pytest.raises(IcvError, match="unknown_tokens trains on cached latents"):
        load_config("tiny", {"unknown_tokens": {"share": 0.5}, "cache_latents": False})
