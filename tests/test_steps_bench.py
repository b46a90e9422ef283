"""benchmarks/steps.py on the tiny random model: the table, JSON and plot it writes, UNet evaluations counted per
query (3 batch rows per guided step, 1 for a one-pass model), resuming and refusing a mismatched resume.

No accuracy is asserted: the model has random weights. What is checked is the structure and the counting.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import steps as steps_bench  # noqa: E402

from icv_deploy.model_files import model_config  # noqa: E402

SMALL = ["--scenes", "2", "--scene-size", "64", "--resolution", "32", "--limit", "1", "--quiet"]


def run(model, out, *extra):
    return CliRunner().invoke(steps_bench.main, ["--model", str(model), "--out", str(out), *SMALL, *extra])


@pytest.fixture(scope="module")
def small_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("steps") / "tiny"
    result = run(tiny_model, out, "--samplers", "euler_a,dpmpp_2m", "--spacings", "leading,trailing,karras",
                 "--steps", "1,3,2", "--batch", "2")
    assert result.exit_code == 0, result.output
    return out


def test_json_counts_unet_evaluations_per_setting(small_run):
    doc = json.loads((small_run / "steps.json").read_text())
    assert doc["queries"] == 4 and doc["random_weights"] is True and doc["one_pass"] is None
    assert [(e["sampler"], e["spacing"], e["steps"]) for e in doc["results"]] == [
        (s, sp, n) for s in ("euler_a", "dpmpp_2m") for sp in ("leading", "trailing", "karras") for n in (1, 2, 3)]
    for e in doc["results"]:
        # counted around the backend: one UNet call of 3 rows (the guidance batch) per step and query
        assert e["unet_evaluations_per_query"] == 3 * e["steps"], e["setting"]
        assert e["unet_calls_per_query"] == e["steps"], e["setting"]
        assert set(e["metrics"]) == {"segmentation", "detection", "depth", "classification"}
        assert "miou" in e["metrics"]["segmentation"]["synth"] and "abs_rel" in e["metrics"]["depth"]["synth"]
    assert json.loads((small_run / "heldout-scenes" / "synth.json").read_text())["seed"] == 1  # held out


def test_markdown_has_one_table_per_task_and_the_counted_evaluations(small_run):
    text = (small_run / "steps.md").read_text()
    for title in ("segmentation (synth): mIoU", "detection (synth): mAP@0.5", "depth (synth): AbsRel, lower",
                  "classification (synth): accuracy", "UNet evaluations per query"):
        assert f"## {title}" in text
    assert "| sampler / spacing | 1 steps | 2 steps | 3 steps |" in text
    assert "| dpmpp_2m / karras | 3 | 6 | 9 |" in text  # the counted-evaluations table
    assert "Random weights" in text


def test_plot_is_a_png_with_one_panel_per_task(small_run):
    from PIL import Image

    with Image.open(small_run / "steps.png") as im:
        assert im.format == "PNG" and im.width > 4 * 300  # four panels side by side


def test_rerun_resumes_without_a_unet_call_and_refuses_other_settings(small_run, tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "copy"
    shutil.copytree(small_run, out)
    before = json.loads((out / "steps.json").read_text())["results"]

    def no_unet(self):
        raise AssertionError("a resumed run recomputed a cached query")

    monkeypatch.setattr(steps_bench.UNetCounter, "__enter__", no_unet)
    result = run(tiny_model, out, "--samplers", "euler_a,dpmpp_2m", "--spacings", "leading,trailing,karras",
                 "--steps", "1,2,3", "--batch", "2")
    assert result.exit_code == 0, result.output
    after = json.loads((out / "steps.json").read_text())["results"]
    assert [e["metrics"] for e in after] == [e["metrics"] for e in before]

    other = run(tiny_model, out, "--seed", "5", "--samplers", "euler", "--spacings", "trailing", "--steps", "1")
    assert other.exit_code == 2 and other.output.startswith("error:") and "seed" in other.output


def test_one_pass_model_is_one_evaluation_per_query(tiny_model_f4, small_run, tmp_path):
    model = tmp_path / "one-pass"
    shutil.copytree(tiny_model_f4, model)
    (model / "icv_config.json").write_text(json.dumps({**model_config(tiny_model_f4), "mode": "one_pass",
                                                       "prediction_type": "sample"}))
    out = tmp_path / "steps"
    result = run(model, out, "--tasks", "segmentation,depth", "--also", str(small_run / "steps.json"))
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "steps.json").read_text())
    assert [e["setting"] for e in doc["results"]] == ["one_pass"]
    assert doc["results"][0]["unet_evaluations_per_query"] == 1 and doc["results"][0]["unet_calls_per_query"] == 1
    assert doc["one_pass"]["mode"] == "one_pass" and len(doc["also"]) == 1
    assert (out / "steps.png").stat().st_size > 0 and "| one pass | " in (out / "steps.md").read_text()


def test_bad_options_are_one_line_errors(tiny_model, tmp_path):
    for args in (["--samplers", "heun"], ["--spacings", "cosine"], ["--steps", "0,4"], ["--tasks", "pose"]):
        result = run(tiny_model, tmp_path / "bad", *args)
        assert result.exit_code == 2 and result.output.startswith("error:") and len(result.output.strip().splitlines()) == 1
