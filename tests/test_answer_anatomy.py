"""benchmarks/answer_anatomy.py: where answers go, checked on answers whose anatomy is known by construction (exact
targets, copies of the input, masks laid over a hand-made instance map), then end to end on the demo model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import answer_anatomy  # noqa: E402

from icv_deploy.tasks.encodings import encode_classification, encode_detection  # noqa: E402


def test_mask_pixels_are_split_between_the_named_object_other_objects_and_background():
    instances = np.zeros((8, 8), np.uint8)
    instances[0:2, 0:5] = 1  # the cube: 10 pixels
    instances[4:6, 0:3] = 2  # a ball: 6 pixels
    mask = np.zeros((8, 8), bool)
    mask[0:2, 0:5] = True  # all of the cube
    mask[4, 0:3] = True  # half of the ball
    mask[7, 4:8] = True  # 4 floor pixels
    counts = answer_anatomy.segmentation_counts(mask, instances, {1})
    assert counts == {"predicted": 17, "named": 10, "objects": 16, "on_named": 10, "on_other_objects": 3,
                      "on_background": 4, "union_named": 17, "inter_all": 13, "union_all": 20}
    absent = np.zeros((8, 8), bool)
    absent[0:2, 0:2] = True  # asked about a category that is not there, it still marks 4 pixels of the cube
    counts.update(answer_anatomy.absent_category_counts(mask, absent))
    seg = answer_anatomy.summary("segmentation", counts, 1)
    assert seg["iou_named"] == pytest.approx(10 / 17) and seg["iou_all_objects"] == pytest.approx(13 / 20)
    assert seg["all_objects_answer_on_named"] == pytest.approx(10 / 16)
    assert seg["absent_category_area_ratio"] == pytest.approx(4 / 17) and seg["iou_named_vs_absent_category"] == pytest.approx(4 / 17)


def test_the_category_word_is_swapped_as_a_word():
    assert answer_anatomy.with_category("Segment the cone; cones too.", "cone", "ball") == "Segment the ball; cones too."
    assert answer_anatomy.with_category("Mask every object.", "cone", "ball") is None


@pytest.mark.parametrize("painted, colors, outcome", [
    ("yellow", ("yellow", "black"), "present colour"), ("black", ("yellow", "black"), "absent colour"),
    ("red", ("yellow", "black"), "another colour"), ("grey", ("gray", "black"), "present colour")])
def test_a_flat_answer_is_matched_to_the_instructions_colours(painted, colors, outcome):
    visual = encode_classification(True, (16, 16), painted, "black")
    assert answer_anatomy.classification_outcome(visual, colors) == outcome


def test_a_colour_between_two_is_read_as_the_nearer_palette_colour():
    visual = np.full((4, 4, 3), (230, 20, 10), np.uint8)  # a dull red
    assert answer_anatomy.nearest_color(visual) == "red"
    assert answer_anatomy.nearest_color(np.full((4, 4, 3), (120, 10, 120), np.uint8)) == "purple"  # not magenta


def test_detection_anatomy_of_the_exact_target_and_of_a_copy_of_the_input():
    rng = np.random.default_rng(0)
    image = np.repeat(rng.integers(60, 200, (64, 64, 1), dtype=np.uint8), 3, axis=2)  # greys: no blue in the input
    boxes = np.array([[8, 10, 30, 40], [36, 5, 60, 25]], np.float32)
    exact = answer_anatomy.detection_counts(encode_detection(image, boxes), image, boxes)
    assert exact["outline"] > 0 and exact["outline_blue"] == exact["outline"] and exact["blue_in_band"] == exact["blue"]
    copy = answer_anatomy.summary("detection", answer_anatomy.detection_counts(image, image, boxes), 1)
    assert copy["mean_abs_diff_to_input"] == 0 and copy["outline_covered_by_blue"] == 0 and copy["blue_pixels_per_query"] == 0
    target = answer_anatomy.summary("detection", exact, 1)
    assert target["mean_abs_diff_to_input"] > 0 and target["blue_within_2px_of_outline"] == 1.0


def test_a_first_step_answer_placed_between_the_two_colours():
    absent, present = np.array([0.0, 0.0, 0.0, 1.0]), np.array([2.0, 0.0, 0.0, 1.0])
    assert answer_anatomy.between_colors(np.array([0.5, 0.0, 0.0, 1.0]), present, absent) == (0.25, 0.0)
    position, distance = answer_anatomy.between_colors(np.array([1.0, 1.0, 0.0, 1.0]), present, absent)
    assert position == 0.5 and distance == pytest.approx(0.5)  # one unit off a segment two units long
    position, distance = answer_anatomy.between_colors(np.array([4.0, 0.0, 0.0, 1.0]), present, absent)
    assert position == 1.0 and distance == pytest.approx(1.0)  # past the present colour: measured from it
    rows = [(True, 0.9, 0.1), (True, 0.6, 0.3), (False, 0.7, 0.2), (False, 0.2, 0.5)]
    first = answer_anatomy.first_step_summary(rows)
    assert first["auc"] == pytest.approx(0.75) and first["median_distance"] == pytest.approx(0.25)
    assert first["mean_position_present"] == pytest.approx(0.75) and first["mean_position_absent"] == pytest.approx(0.45)
    assert answer_anatomy.first_step_summary(rows[:2])["auc"] is None  # one truth only: no AUC


def test_the_demo_model_end_to_end(tmp_path):
    from icv_deploy.training.synthetic import write_scenes

    scenes = write_scenes(tmp_path / "scenes", 2, seed=1, size=128, progress=False)
    result = CliRunner().invoke(answer_anatomy.main, ["--data", f"synth:{scenes}", "--limit", "3", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "out" / "anatomy.json").read_text())
    seg = doc["results"]["segmentation"]
    assert seg["queries"] == 3
    shares = [seg[k] for k in ("mask_on_named", "mask_on_other_objects", "mask_on_background")]
    assert all(s is not None for s in shares) and sum(shares) == pytest.approx(1.0)
    assert seg["probes"] > 0 and seg["absent_category_area_ratio"] is not None  # the probes ran
    cls = doc["results"]["classification"]
    assert sum(n for key, outcomes in cls.items() if key.startswith("truly") for n in outcomes.values()) == 3
    first = cls["first_step"]
    assert first["median_distance"] >= 0 and all(0 <= first[k] <= 1 for k in ("mean_position_present",
                                                                               "mean_position_absent") if first[k])
    assert "Detection (3 queries)" in (tmp_path / "out" / "anatomy.md").read_text()


def test_data_without_instance_maps_is_refused(tmp_path):
    result = CliRunner().invoke(answer_anatomy.main, ["--data", f"nyuv2:{tmp_path}", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output.startswith("error:") and "synth" in result.output
    assert len(result.output.strip().splitlines()) == 1
