"""The colour-word term (training/color_words.py): which tokens it reads with the shipped CLIP tokenizer, where its
gradient goes, and the term inside icv-train (it trains, resumes, and leaves the saved text encoder plain)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icv_deploy.errors import IcvError
from icv_deploy.tasks.encodings import COLORS
from icv_deploy.training.color_words import ColorWordHead, color_word_tokens
from icv_deploy.training.prompts import CLASSIFICATION_COLORS
from icv_deploy.training.synthetic import write_scenes
from icv_deploy.training.train_data import tokenize

from test_train_run import assert_resume_repeats, read_losses, run_in_process


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained("icv_deploy/assets/demo", subfolder="tokenizer")  # the shipped CLIP BPE


def words_at(tokenizer, instruction: str) -> list[tuple[str, str]]:
    """(the token at each position the head reads, the colour it expects there) for one instruction."""
    head = ColorWordHead(color_word_tokens(tokenizer), text_width=8)
    ids = tokenize(tokenizer, [instruction])
    rows, positions, colors = head.find(ids)
    order = positions.argsort()
    return [(tokenizer.convert_ids_to_tokens(int(ids[0, p])), CLASSIFICATION_COLORS[int(c)])
            for p, c in zip(positions[order], colors[order])]


def test_every_palette_name_is_found_whole_and_aliases_share_a_colour(tokenizer):
    assert words_at(tokenizer, "Show Cyan if the picture has a cube, otherwise show grey.") == [
        ("an</w>", "cyan"), ("grey</w>", "gray")]  # cyan is two tokens, read at its last; grey is gray
    assert words_at(tokenizer, "Paint it gray when there is an orange ball, else pink") == [
        ("gray</w>", "gray"), ("orange</w>", "orange"), ("pink</w>", "pink")]
    assert words_at(tokenizer, "Segment an object") == []  # "an" alone is not the end of "cyan"
    named = words_at(tokenizer, " ".join(COLORS))  # every name once
    assert [color for _, color in named] == [name.replace("grey", "gray") for name in COLORS]


def test_the_term_names_the_colour_and_reaches_only_the_colour_words(tokenizer):
    head = ColorWordHead(color_word_tokens(tokenizer), text_width=8, weight=2.0)
    ids = tokenize(tokenizer, ["Show red if the picture has a cone, otherwise show blue.", "Segment the cone."])
    rows, (red, blue), _ = head.find(ids)
    assert rows.tolist() == [0, 0] and ids[0, red] == tokenizer("red").input_ids[1]  # found in this order
    text = torch.zeros(2, ids.shape[1], 8, requires_grad=True)
    with torch.no_grad():  # a head that reads the colour from the first features: red -> class 2, blue -> class 4
        head.classify.weight.zero_()
        head.classify.bias.zero_()
        head.classify.weight[2, 0] = head.classify.weight[4, 1] = 30.0
        text[0, red] = torch.eye(8)[0]
        text[0, blue] = torch.eye(8)[1]
    total, values = head(ids, text)
    assert values["color_words"] < 1e-6 and total.item() == pytest.approx(2 * values["color_words"])
    with torch.no_grad():
        text[0, red], text[0, blue] = text[0, blue].clone(), text[0, red].clone()  # the colours swapped: a large loss
    total, values = head(ids, text)
    assert values["color_words"] == pytest.approx(30.0, rel=1e-3)
    total.backward()
    reached = text.grad.abs().sum(-1)
    assert reached[0, red] > 0 and reached[0, blue] > 0 and reached.sum() == reached[0, red] + reached[0, blue]
    assert head(tokenize(tokenizer, ["Segment the cone."]), text[1:].detach()) == (0.0, {})
    with pytest.raises(IcvError, match="every colour name's tokens"):
        ColorWordHead([((), 0)], text_width=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from icv_deploy.training.build import build

    scenes = write_scenes(tmp_path_factory.mktemp("synth") / "s", num=6, seed=3, size=64, progress=False)
    out = tmp_path_factory.mktemp("data") / "d"
    build([f"synth:{scenes}"], out, prompts="rephrased", size=32, seed=0, progress=False)
    return out


@pytest.mark.slow
def test_the_term_trains_resumes_and_stays_out_of_the_saved_text_encoder(data, tmp_path, one_thread):
    """Tiny runs on rephrased synth data (random colour pairs): the term falls only when weighted; a run resumed from a
    checkpoint (the head's weights with it) repeats the uninterrupted run's losses; the saved text encoder is plain."""
    from transformers import CLIPTextModel

    common = dict(data=str(data), resolution=32, resize_min=32, resize_max=32, cache_latents=True,
                  train_text_encoder=True, validation_every=0, use_ema=False, train_batch_size=4,
                  learning_rate=3e-3, conditioning_dropout_prob=0.0)
    weighted = run_in_process(output=str(tmp_path / "weighted"), max_steps=40, checkpoint_every=20,
                              checkpoints_keep=5, color_words={"weight": 1.0}, **common)
    measured = run_in_process(output=str(tmp_path / "measured"), max_steps=40, checkpoint_every=0,
                              color_words={"weight": 1e-9}, **common)

    def terms(name):  # the steps whose batch named a colour: the same batches in both runs
        return np.array([row["color_words"] for row in read_losses(tmp_path / name) if "color_words" in row])

    trained, unweighted = terms("weighted"), terms("measured")
    assert len(trained) == len(unweighted) >= 8
    assert trained[-5:].mean() < 0.5 * unweighted[-5:].mean()

    assert_resume_repeats(weighted, tmp_path / "weighted", 20, tmp_path / "resumed", last=40, checkpoint_every=20,
                          color_words={"weight": 1.0}, **common)

    saved = CLIPTextModel.from_pretrained(weighted.model_dir, subfolder="text_encoder")
    plain = CLIPTextModel.from_pretrained(measured.model_dir, subfolder="text_encoder")
    assert saved.state_dict().keys() == plain.state_dict().keys()
    assert measured.losses != weighted.losses


@pytest.mark.parametrize("settings, message", [
    ({"color_words": {"weight": 1.0}}, "color_words needs objective instruct_pix2pix and train_text_encoder"),
    ({"color_words": {"wieght": 1.0}, "train_text_encoder": True}, "unknown color_words key(s) wieght"),
])
def test_bad_settings_are_named(data, tmp_path, settings, message):
    with pytest.raises(IcvError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_in_process(data=str(data), output=str(tmp_path / "run"), max_steps=1, resolution=32, resize_min=32,
                       resize_max=32, **settings)
