"""benchmarks/depth_scale_bound.py: its bounds against closed forms and a simulation of the scenes' priors, and its
model row against icv-eval on the same depth queries."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import depth_scale_bound as dsb  # noqa: E402

from icv_deploy.training.synthetic import CAMERA_HEIGHT_M, WALL_DISTANCE_M  # noqa: E402


def test_the_best_guess_from_the_prior_alone_is_the_geometric_mean_of_its_range():
    # E|g/h - 1| for h ~ U(a, b) is least at g = sqrt(ab), where it is (a + b - 2 sqrt(ab)) / (b - a)
    low, high = CAMERA_HEIGHT_M
    guess = dsb.best_height(np.ones_like(dsb.HEIGHTS))
    assert guess == pytest.approx(math.sqrt(low * high), abs=1e-3)
    cameras = np.random.default_rng(0).uniform(low, high, 4000)
    annotations = [{"camera": {"height_m": h, "wall_z_m": 7.0}, "objects": []} for h in cameras]
    expected = (low + high - 2 * math.sqrt(low * high)) / (high - low)
    assert dsb.bounds_row(annotations)["prior"] == pytest.approx(expected, abs=0.004)


def test_the_wall_cue_posterior_matches_simulated_scenes():
    # Scenes drawn from the priors whose wall sits about 5.4 camera heights away: the heights they were made with are
    # distributed as the posterior says (the likelihood's factor h included; a flat posterior has another mean).
    rng = np.random.default_rng(1)
    heights = rng.uniform(*CAMERA_HEIGHT_M, 4_000_000)
    walls = rng.uniform(*WALL_DISTANCE_M, heights.size)
    ratio = 5.4
    kept = heights[np.abs(walls / heights - ratio) < 0.01]
    posterior = dsb.scale_posteriors({"camera": {"height_m": 1.5, "wall_z_m": 1.5 * ratio}, "objects": []})["+ wall"]
    mean = float((posterior * dsb.HEIGHTS).sum() / posterior.sum())
    flat = dsb.HEIGHTS[posterior > 0].mean()
    assert kept.size > 20_000
    assert mean == pytest.approx(kept.mean(), abs=0.003)
    assert abs(flat - kept.mean()) > 0.006
    assert dsb.HEIGHTS[posterior > 0].max() == pytest.approx(WALL_DISTANCE_M[1] / ratio, abs=1e-3)  # 9 m / 5.4


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from icv_deploy.training.synthetic import write_scenes

    return write_scenes(tmp_path_factory.mktemp("scale") / "scenes", 4, seed=1, size=128, progress=False)


def test_every_cue_narrows_the_posterior_and_keeps_the_true_height(scenes):
    for file in sorted((scenes / "annotations").glob("*.json")):
        annotation = json.loads(file.read_text())
        true = annotation["camera"]["height_m"]
        supports = [dsb.HEIGHTS[p > 0] for p in dsb.scale_posteriors(annotation).values()]
        widths = [s.max() - s.min() for s in supports]
        assert widths == sorted(widths, reverse=True)
        assert all(s.min() - 1e-3 <= true <= s.max() + 1e-3 for s in supports)


def test_the_model_row_agrees_with_icv_eval(scenes, tmp_path):
    from icv_deploy.training.evaluate import evaluate

    out = tmp_path / "out"
    result = CliRunner().invoke(dsb.main, ["--data", f"synth:{scenes}", "--model", "demo-1step", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "scale.json").read_text())
    report = evaluate("demo-1step", [f"synth:{scenes}"], tmp_path / "eval", tasks=["depth"], prompts="rephrased",
                      examples=0, progress=False)
    model = doc["model"]
    assert model["images"] == 4
    assert model["abs_rel"] == pytest.approx(report["results"]["depth"]["synth"]["abs_rel"], rel=1e-4)
    assert model["abs_rel_own_scale"] < model["abs_rel"]
    assert 0 < model["scale_error"] < 0.5
    assert set(doc["bounds"]) == set(dsb.BOUNDS)
    assert "| shapes, + objects |" in (out / "scale.md").read_text()


def test_scenes_without_annotations_are_refused(tmp_path):
    result = CliRunner().invoke(dsb.main, ["--data", f"synth:{tmp_path}", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.startswith("error:") and "annotations" in result.output
    assert not (tmp_path / "out").exists()
