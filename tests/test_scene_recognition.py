"""The scene-recognition loss (training/scene_recognition.py): its labels against the scenes' instance maps, its head
against the UNet's real block outputs, its word term against the instruction's category word, and the loss inside
icv-train (it trains, resumes, and leaves the saved UNet plain)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from icv_deploy.errors import IcvError
from icv_deploy.training.scene_recognition import (SceneLabels, SceneRecognition, SceneRecognitionHead,
                                                   block_channels, scene_shares)
from icv_deploy.training.datasets.synth import SynthAdapter
from icv_deploy.training.synthetic import CATEGORIES, write_scenes

from test_train_run import assert_resume_repeats, read_losses, run_in_process


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_scenes(tmp_path_factory.mktemp("synth") / "s", num=6, seed=3, size=64, progress=False)


@pytest.fixture(scope="module")
def data(scenes, tmp_path_factory):
    from icv_deploy.training.build import build

    out = tmp_path_factory.mktemp("data") / "d"
    build([f"synth:{scenes}"], out, prompts="rephrased", size=32, seed=0, progress=False)
    return out


def test_shares_are_each_cells_pixels_by_category(scenes):
    categories = list(CATEGORIES)
    for image_id in ("000000", "000001", "000002"):
        shares = scene_shares(SynthAdapter(scenes), image_id, grid=8).astype(np.float64) / 255
        instances = cv2.imread(str(scenes / "instances" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        objects = json.loads((scenes / "annotations" / f"{image_id}.json").read_text())["objects"]
        assert shares.shape == (1 + len(categories), 8, 8)
        np.testing.assert_allclose(shares.sum(0), 1, atol=3 / 255)
        # the reference: OpenCV's area resampling of each category's mask to the 8 x 8 grid
        for k, category in enumerate(["background", *categories]):
            if k == 0:
                mask = instances == 0
            else:
                mask = np.isin(instances, [o["id"] for o in objects if o["category"] == category])
            expected = cv2.resize(mask.astype(np.float64), (8, 8), interpolation=cv2.INTER_AREA)
            np.testing.assert_allclose(shares[k], expected, atol=1 / 255 + 1e-9, err_msg=f"{image_id} {category}")


def test_labels_follow_each_rows_scene_and_its_flip(scenes, data):
    from icv_deploy.training.train_data import open_dataset

    rows = open_dataset(data)
    labels = SceneLabels(SceneRecognition(weight=1.0, grid=8), rows, data)  # the scenes the build recorded
    assert len(labels.shares) == len(set(rows["image_id"]))  # one map per scene, however many tasks it serves
    for index in (0, len(rows) // 2, len(rows) - 1):
        expected = scene_shares(SynthAdapter(scenes), rows[index]["image_id"], 8)
        assert torch.equal(labels(index, False), torch.from_numpy(expected))
        assert torch.equal(labels(index, True), torch.from_numpy(expected[..., ::-1].copy()))


def test_the_head_reads_the_blocks_real_outputs():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=8, in_channels=8, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64, 64), norm_num_groups=8, cross_attention_dim=12,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
    blocks = ("down_blocks.0", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.2")
    head = SceneRecognitionHead(SceneRecognition(weight=2.0, blocks=blocks, grid=8), unet, categories=5)
    with torch.no_grad():
        unet(torch.randn(3, 8, 8, 8), 10, encoder_hidden_states=torch.randn(3, 5, 12))
    for block in blocks:  # the channels the head expects are the ones the block puts out
        assert head.features[block].shape[1] == block_channels(unet, block)
    shares = torch.zeros(3, 6, 8, 8, dtype=torch.uint8)
    shares[:, 0] = 255  # all background
    term, values = head({"scene_shares": shares}, torch.tensor([0, 2]))
    assert term.requires_grad and term.item() == pytest.approx(2.0 * values["scene_recognition"])
    assert head({"scene_shares": shares}, torch.tensor([], dtype=torch.long)) == (0.0, {})
    with torch.no_grad():  # heads that say "background" everywhere, whatever the features
        for conv in head.heads.values():
            conv.weight.zero_()
            conv.bias.copy_(torch.tensor([30.0, 0, 0, 0, 0, 0]))
    assert head({"scene_shares": shares}, torch.tensor([0, 1]))[1]["scene_recognition"] < 1e-6  # right: no loss
    balls = torch.zeros_like(shares)
    balls[:, 1] = 255
    assert head({"scene_shares": balls}, torch.tensor([0, 1]))[1]["scene_recognition"] == pytest.approx(30.0, rel=1e-3)
    with pytest.raises(IcvError, match="up_blocks.3"):
        block_channels(unet, "up_blocks.3")


def test_the_word_term_scores_the_named_categorys_cells_and_reaches_the_word():
    """The word term: the target is the cells of the category the instruction names (found by its token), nothing for
    an instruction without a category word, and its gradient reaches the text encoder's output at that word only."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=8, in_channels=8, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=12,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    tokens = [901, 902, 903, 904, 905]  # one token per category, in the shares' order (ball, cube, ...)
    settings = SceneRecognition(weight=1.0, word_weight=3.0, blocks=("mid_block", "up_blocks.1"), grid=8)
    head = SceneRecognitionHead(settings, unet, categories=5, category_tokens=tokens, text_width=12)
    with torch.no_grad():
        unet(torch.randn(3, 8, 8, 8), 10, encoder_hidden_states=torch.randn(3, 5, 12))
    shares = torch.zeros(3, 6, 8, 8, dtype=torch.uint8)
    shares[:, 2] = 255  # every cell is cube
    ids = torch.tensor([[1, 7, 902, 8, 2],    # names the cube (token 902) at position 2
                        [1, 901, 7, 8, 2],    # names the ball, which the picture lacks
                        [1, 7, 7, 8, 2]])     # names no category
    text = torch.randn(3, 5, 12, requires_grad=True)
    batch = {"scene_shares": shares, "input_ids": ids}
    with torch.no_grad():  # a head that says "not the named category" everywhere, whatever the cells and the word
        head.words.weight.zero_()
        head.words.bias.zero_()
        head.word_bias.fill_(-30.0)
    rows = torch.tensor([0, 1, 2])
    assert head(batch, rows, text, torch.tensor([1]))[1]["scene_word"] < 1e-6  # the absent ball: right, no loss
    assert head(batch, rows, text, torch.tensor([0]))[1]["scene_word"] == pytest.approx(30.0, rel=1e-3)  # the cube
    assert "scene_word" not in head(batch, rows, text, torch.tensor([2]))[1]  # no category word: no term
    assert "scene_word" not in head(batch, rows)[1]  # no text given: the category term alone

    with torch.no_grad():
        head.words.weight.normal_()
        head.word_bias.zero_()
    term, values = head(batch, rows, text, rows)
    assert term.item() == pytest.approx(values["scene_recognition"] + 3.0 * values["scene_word"], rel=1e-5)
    term.backward()
    reached = text.grad.abs().sum(-1)
    assert reached[0, 2] > 0 and reached[1, 1] > 0  # the words' own positions
    assert reached.sum() == reached[0, 2] + reached[1, 1]  # and nothing else
    with pytest.raises(IcvError, match="one token per category"):
        SceneRecognitionHead(settings, unet, categories=5, category_tokens=tokens[:4], text_width=12)


@pytest.mark.slow
def test_the_term_trains_resumes_and_stays_out_of_the_saved_unet(scenes, data, tmp_path, one_thread):
    """Tiny runs on real synth scenes: the category and word terms fall only when weighted; a run resumed from a
    checkpoint (the head's weights with it) repeats the uninterrupted run's losses; the saved UNet has no head."""
    from diffusers import UNet2DConditionModel

    common = dict(data=str(data), resolution=32, resize_min=32, resize_max=32, cache_latents=True,
                  random_flip=True, validation_every=0, use_ema=False, train_batch_size=4, learning_rate=3e-3,
                  conditioning_dropout_prob=0.0)
    recognition = dict(blocks=["mid_block", "up_blocks.1"], grid=8)  # the scenes: those data's build recorded
    weights = {"weight": 1.0, "word_weight": 1.0}
    weighted = run_in_process(output=str(tmp_path / "weighted"), max_steps=40, checkpoint_every=20,
                              checkpoints_keep=5, scene_recognition={**recognition, **weights}, **common)
    measured = run_in_process(output=str(tmp_path / "measured"), max_steps=40, checkpoint_every=0,
                              scene_recognition={**recognition, "weight": 1e-9, "word_weight": 1e-9}, **common)

    def terms(name, term):  # the word term: the steps whose batch named a category (the same in both runs)
        return np.array([row[term] for row in read_losses(tmp_path / name) if term in row])

    category, unweighted = terms("weighted", "scene_recognition"), terms("measured", "scene_recognition")
    assert len(category) == len(unweighted) == 40
    assert category[-10:].mean() < 0.7 * unweighted[-10:].mean() and category[-10:].mean() < 0.7 * category[:5].mean()
    # The word term varies with each batch's share of named cells: compared on the same batches, unweighted.
    word, unweighted = terms("weighted", "scene_word"), terms("measured", "scene_word")
    assert len(word) == len(unweighted) >= 30
    assert word[-10:].mean() < 0.75 * unweighted[-10:].mean()

    assert_resume_repeats(weighted, tmp_path / "weighted", 20, tmp_path / "resumed", last=40, checkpoint_every=20,
                          scene_recognition={**recognition, **weights}, **common)

    saved = UNet2DConditionModel.from_pretrained(weighted.model_dir, subfolder="unet")
    plain = UNet2DConditionModel.from_pretrained(measured.model_dir, subfolder="unet")
    assert saved.state_dict().keys() == plain.state_dict().keys()
    assert measured.losses != weighted.losses


@pytest.mark.parametrize("settings, message", [
    ({"scene_recognition": {"weight": 1.0}}, "scene_recognition needs objective instruct_pix2pix and cache_latents"),
    ({"scene_recognition": {"wieght": 1.0}, "cache_latents": True, "resize_max": 32},
     "unknown scene_recognition key(s) wieght"),
    ({"scene_recognition": {"weight": 1.0, "scenes": "/nonexistent"}, "cache_latents": True, "resize_max": 32},
     "not an `icv-data synth` folder"),
])
def test_bad_settings_are_named(data, tmp_path, settings, message):
    with pytest.raises(IcvError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_in_process(data=str(data), output=str(tmp_path / "run"), max_steps=1, resolution=32, resize_min=32,
                       **{"resize_max": 36, **settings})


def test_data_without_recorded_scenes_is_named(tmp_path):
    from test_train_run import make_dataset

    from icv_deploy.training.train_data import open_dataset

    fixture = make_dataset(tmp_path / "d", per_task=1, size=16)  # hand-made rows: no icv_build.json
    with pytest.raises(IcvError, match="names no single synth folder"):
        SceneLabels(SceneRecognition(weight=1.0, grid=4), open_dataset(fixture), fixture)


def test_scenes_that_are_not_the_datas_are_named(data, tmp_path):
    other = write_scenes(tmp_path / "other", num=2, seed=9, size=64, progress=False)
    from icv_deploy.training.train_data import open_dataset

    with pytest.raises(IcvError, match="is it the folder the data was built from"):
        SceneLabels(SceneRecognition(scenes=str(other), weight=1.0, grid=8), open_dataset(data))
