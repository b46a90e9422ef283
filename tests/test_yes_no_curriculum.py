"""The yes/no curriculum's targets (training/yes_no_curriculum.py, `icv-data build --yes-radius`): a present answer
is the category's mask, grown, in the first colour on the second; everything else is as without the option."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from icv_deploy.tasks.encodings import COLORS
from icv_deploy.tasks.routing import route
from icv_deploy.training.build import build
from icv_deploy.training.cli import main as icv_data
from icv_deploy.training.synthetic import write_scenes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_scenes(tmp_path_factory.mktemp("yes-no") / "s", num=12, seed=7, size=64, progress=False)


def category_mask(scenes, image_id: str, category: str) -> np.ndarray:
    """Read straight from the scene files: the union of the category's instances."""
    objects = json.loads((scenes / "annotations" / f"{image_id}.json").read_text())["objects"]
    instances = np.array(Image.open(scenes / "instances" / f"{image_id}.png"))
    return np.isin(instances, [o["id"] for o in objects if o["category"] == category])


def built(scenes, out, radius):
    return build([f"synth:{scenes}"], out, prompts="rephrased", size=64, seed=2, tasks=["classification"],
                 progress=False, yes_radius=radius)


@pytest.mark.parametrize("radius", [0, 3])
def test_present_answers_are_the_grown_mask_and_absent_ones_the_card(scenes, tmp_path, radius):
    card, grown = built(scenes, tmp_path / "card", None), built(scenes, tmp_path / "grown", radius)
    assert card["edit_prompt"] == grown["edit_prompt"] and card["image_id"] == grown["image_id"]
    present_rows = 0
    for row_card, row_grown in zip(card, grown):
        target, flat = np.array(row_grown["edited_image"]), np.array(row_card["edited_image"])
        mask = category_mask(scenes, row_grown["image_id"], row_grown["category"])
        if not mask.any():  # absent: the solid card of the second colour, as without the option
            assert np.array_equal(target, flat)
            continue
        present_rows += 1
        said = route(row_grown["edit_prompt"])
        first = np.all(target == COLORS[said.color_if_present], axis=-1)
        assert np.all(first | np.all(target == COLORS[said.color_if_absent], axis=-1))
        assert np.all(first[mask])  # the whole category is painted the "yes" colour ...
        # ... and nothing further than `radius` pixels from it (distance to the nearest mask pixel)
        distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
        assert distance[first].max() <= radius + 0.5
        if radius:
            assert first.sum() > mask.sum()
    assert present_rows >= 5


def test_one_colour_pair_for_every_question(scenes, tmp_path):
    """--colors: every instruction names the pair (as the router reads it), the rows and targets follow it."""
    result = CliRunner().invoke(icv_data, ["build", "--source", f"synth:{scenes}", "--out", str(tmp_path / "d"),
                                           "--task", "classification", "--size", "64", "--colors", "blue,black"])
    assert result.exit_code == 0, result.output
    import datasets

    rows = datasets.load_from_disk(str(tmp_path / "d"))
    assert len(rows) >= 10
    for row in rows:
        said = route(row["edit_prompt"])
        assert (said.color_if_present, said.color_if_absent) == ("blue", "black")
        present = category_mask(scenes, row["image_id"], row["category"]).any()
        assert np.all(np.array(row["edited_image"]) == COLORS["blue" if present else "black"])


@pytest.mark.parametrize("option, value", [("--yes-radius", "-1"), ("--colors", "blue,blue"), ("--colors", "blue"),
                                           ("--colors", "blue,teal")])
def test_bad_curriculum_options_are_refused(scenes, tmp_path, option, value):
    result = CliRunner().invoke(icv_data, ["build", "--source", f"synth:{scenes}", "--out", str(tmp_path / "d"),
                                           option, value])
    assert result.exit_code == 2 and option in result.output
    assert not (tmp_path / "d").exists()
