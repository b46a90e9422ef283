"""benchmarks/autoencoder_ceiling.py on the shipped demo model and a few held-out scenes: the exact targets, read
by the runtime's decoders, score (nearly) perfectly under icv-eval's metrics (pycocotools for mAP), so the
"painted" row is a true ceiling; the autoencoded row can only lose to it; the files say what was run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import autoencoder_ceiling  # noqa: E402


@pytest.fixture(scope="module")
def ceiling(tmp_path_factory):
    from icv_deploy.training.synthetic import write_scenes

    root = tmp_path_factory.mktemp("ceiling")
    scenes = write_scenes(root / "scenes", 3, seed=1, size=128, progress=False)
    result = CliRunner().invoke(autoencoder_ceiling.main, ["--model", "demo", "--data", f"synth:{scenes}",
                                                           "--out", str(root / "out")])
    assert result.exit_code == 0, result.output
    return json.loads((root / "out" / "ceiling.json").read_text()), (root / "out" / "ceiling.md").read_text()


def metric(doc, row, task, name):
    return doc["results"][row][task]["synth"][name]


def test_exact_targets_read_back_as_the_ground_truth(ceiling):
    doc, _ = ceiling
    assert metric(doc, "painted", "segmentation", "miou") == 1.0
    assert metric(doc, "painted", "classification", "accuracy") == 1.0
    assert metric(doc, "painted", "detection", "map50") > 0.95  # boxes found from their one-pixel outlines
    assert metric(doc, "painted", "depth", "abs_rel") < 0.01  # grey levels of 10/255 m


def test_the_autoencoder_can_only_lose(ceiling):
    doc, _ = ceiling
    assert metric(doc, "autoencoded", "depth", "abs_rel") > metric(doc, "painted", "depth", "abs_rel")
    assert metric(doc, "autoencoded", "detection", "map50") <= metric(doc, "painted", "detection", "map50")


def test_report_names_the_run(ceiling):
    doc, table = ceiling
    assert doc["model"] == "demo" and doc["queries"] > 10 and doc["resolution"] == 128
    assert "autoencoder_ceiling.py --model demo" in doc["command"] and doc["machine"]["cpu"]
    assert table.count("\n| painted |") == 1 and table.count("\n| autoencoded |") == 1


def test_data_is_required():
    result = CliRunner().invoke(autoencoder_ceiling.main, ["--out", "x"])
    assert result.exit_code == 2 and "--data" in result.output
