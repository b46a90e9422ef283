"""training/phrasing_grammar.py: the shipped grammar's instructions route to their own task, category and colours
through the runtime's router, none is a near-copy of an evaluation-only one, and icv-train's `rephrase` swaps a share
of the instructions for them with the targets' meaning kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from icv_deploy.errors import IcvError
from icv_deploy.model_files import BUNDLED_DIR
from icv_deploy.tasks.routing import route
from icv_deploy.training.config import load_config
from icv_deploy.training.latent_cache import CachedLatentExamples
from icv_deploy.training.phrasing_grammar import GrammarRephrasing, PhrasingGrammar, Rephrase
from icv_deploy.training.prompts import BLIND_FILE, UNSEEN_FILE, fill, load_pool
from icv_deploy.training.synthetic import CATEGORIES
from icv_deploy.training.train_data import tokenize

ROWS = {
    "edit_prompt": ["Mark all pixels that belong to the cube.", "Create a monocular depth map.",
                    "Show magenta if the picture has a cone, otherwise show green.", "Detect the ball."],
    "task": ["segmentation", "depth", "classification", "detection"],
    "category": ["cube", None, "cone", "ball"],
}


@pytest.fixture(scope="module")
def grammar():
    return PhrasingGrammar()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(BUNDLED_DIR / "demo" / "tokenizer")


@pytest.mark.parametrize("task", ["segmentation", "detection", "depth", "classification"])
def test_every_drawn_instruction_routes_to_its_task_category_and_colours(grammar, task):
    rng = np.random.default_rng(0)
    drawn = {grammar.draw(task, rng) for _ in range(300)}
    assert len(drawn) > 200  # varied: the frames and slots multiply out, not a handful repeated
    for template in drawn:
        category = None if task == "depth" else "traffic light"
        instruction = fill(template, category, "red", "green")
        routed = route(instruction)
        assert routed.task == task, instruction
        if task != "depth":
            assert routed.category.lower() == "traffic light", instruction
        if task == "classification":
            assert (routed.color_if_present, routed.color_if_absent) == ("red", "green"), instruction


def test_it_holds_far_more_phrasings_than_the_pool_and_none_of_the_evaluation_only_ones(grammar):
    pool, unseen, blind = load_pool(), load_pool(UNSEEN_FILE), load_pool(BLIND_FILE)
    for task in pool:
        assert grammar.count(task) > 100 * len(pool[task])
        rng = np.random.default_rng(1)
        drawn = {grammar.draw(task, rng).lower().rstrip(".!?") for _ in range(600)}
        assert not drawn & {t.lower().rstrip(".!?") for t in unseen[task] + blind[task]}
    # blind.json's "mask the {category}" is also a sentence of the grammar: it is never drawn
    assert grammar.too_close_to_evaluation_only("segmentation", "Mask the {category}.")


def write_grammar(tmp_path, **frames):
    slots = {"please": ["", "Please "]}
    body = {"slots": slots, "segmentation": ["<please>segment the {category}."], "detection": ["Detect the {category}."],
            "depth": ["Estimate the depth."], "classification": ["Show {color1} if there is a {category}, else {color2}."]}
    body.update(frames)
    path = tmp_path / "grammar.json"
    path.write_text(json.dumps(body))
    return path


def test_a_frame_copying_an_evaluation_only_instruction_is_never_drawn(tmp_path):
    unseen = load_pool(UNSEEN_FILE)["segmentation"][2]  # "Highlight the image parts corresponding to the ..."
    grammar = PhrasingGrammar(write_grammar(tmp_path, segmentation=[unseen, unseen.replace(".", "!"),
                                                                    "Produce a mask of the {category}."]))
    rng = np.random.default_rng(0)
    assert {grammar.draw("segmentation", rng) for _ in range(200)} == {"Produce a mask of the {category}."}
    only_copies = PhrasingGrammar(write_grammar(tmp_path, segmentation=[unseen]))
    with pytest.raises(IcvError, match="too close to evaluation-only ones for segmentation"):
        only_copies.draw("segmentation", rng)


@pytest.mark.parametrize("frames, message", [
    ({"depth": ["Estimate <how> depth."]}, "depth uses slot <how>, which has no alternatives"),
    ({"detection": []}, "has no detection frames"),
])
def test_a_broken_grammar_is_named(tmp_path, frames, message):
    with pytest.raises(IcvError, match=message):
        PhrasingGrammar(write_grammar(tmp_path, **frames))


def test_rephrased_examples_keep_task_category_and_the_colours_roles(tokenizer):
    n = len(ROWS["task"])
    cache = {name: torch.zeros(n, 1, 4, 2, 2) for name in ("image_latents", "target_mean", "target_std")}
    plain = CachedLatentExamples(ROWS, cache, tokenizer, flip=False, seed=0)
    rephrased = CachedLatentExamples(ROWS, cache, tokenizer, flip=False, seed=0, rephrase=Rephrase(share=1.0))
    for epoch in range(5):
        rephrased.set_epoch(epoch)
        for i in range(n):
            ids = rephrased[i]["input_ids"]
            assert ids.shape == plain[i]["input_ids"].shape and not torch.equal(ids, plain[i]["input_ids"])
            text = tokenizer.decode(ids.tolist(), skip_special_tokens=True)
            routed = route(text)
            assert routed.task == ROWS["task"][i], text
            if ROWS["category"][i]:
                assert routed.category == ROWS["category"][i], text
            if routed.task == "classification":
                assert (routed.color_if_present, routed.color_if_absent) == ("magenta", "green"), text
    first = rephrased[0]["input_ids"]
    assert torch.equal(first, rephrased[0]["input_ids"])  # the same epoch: the same draw
    half = GrammarRephrasing(Rephrase(share=0.5), ROWS, tokenizer)
    original = tokenize(tokenizer, ROWS["edit_prompt"][:1])[0]
    changed = [not torch.equal(half.apply(original, 0, np.random.default_rng(s)), original) for s in range(600)]
    assert np.mean(changed) == pytest.approx(0.5, abs=0.06)


def test_the_category_word_stays_one_token_the_other_options_can_find(grammar, tokenizer):
    """The absent-category negatives and the word term look for the category's one token in the instruction."""
    rng = np.random.default_rng(2)
    for task in ("segmentation", "detection", "classification"):
        for category in CATEGORIES:
            text = fill(grammar.draw(task, rng), category, "red", "green")
            token = tokenizer(category).input_ids[1:-1]
            assert len(token) == 1 and token[0] in tokenize(tokenizer, [text])[0].tolist(), text


@pytest.mark.parametrize("section, message", [
    ({"share": -0.1}, r"rephrase share must lie in \[0, 1\], got -0.1"),
    ({"share": 0.5, "grammar": "no/such/grammar.json"}, "rephrase grammar file not found: no/such/grammar.json"),
    ({"shares": 0.5}, "unknown rephrase key"),
])
def test_bad_settings_are_named(section, message):
    with pytest.raises(IcvError, match=message):
        load_config("demo", {"rephrase": section})


def test_it_needs_cached_latents_and_the_scene_columns(tokenizer):
    with pytest.raises(IcvError, match="rephrase trains on cached latents"):
        load_config("tiny", {"rephrase": {"share": 0.5}, "cache_latents": False})

    class Rows(dict):
        column_names = ["edit_prompt", "task"]

    with pytest.raises(IcvError, match=r"rephrase needs the data's columns \['category'\]"):
        GrammarRephrasing(Rephrase(share=0.5), Rows(edit_prompt=["Detect the ball."], task=["detection"]), tokenizer)
