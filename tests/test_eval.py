"""icv-eval end to end: an oracle pipeline (answers with the ground truth) checks the wiring and resuming,
a random-weight tiny model checks the real runtime path."""

from __future__ import annotations

import hashlib
import json
import math
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from icv_deploy.tasks.encodings import encode_classification, encode_depth, encode_detection, encode_segmentation
from icv_deploy.tasks.routing import route
from icv_deploy.training import evaluate as ev
from icv_deploy.training.datasets import open_source

ALL_TASKS = ("segmentation", "detection", "depth", "classification")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    from icv_deploy.training.synthetic import write_scenes

    return write_scenes(tmp_path_factory.mktemp("synth") / "scenes", 3, seed=0, size=64, progress=False)


def _digest(image) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class OraclePipe:
    """Stands in for `icv_deploy.load(...)`: answers every query with its ground truth, so every metric is perfect
    if icv-eval wires images, instructions, categories and ground truth together correctly."""

    def __init__(self, synth_dir):
        self.truth = {}
        for ex in open_source("synth", synth_dir).examples():
            self.truth[(_digest(ex.image), ex.task, ex.category)] = ex
        self.calls, self.progress = [], True
        self.box_line_fraction = None  # the pipeline's: the width of the outlines it paints (the contract's 1/128)

    def __call__(self, image, instruction, task=None, **settings):
        self.calls.append(("call", 1))
        return self._answer(image, instruction, task)

    def run_many(self, image, instructions, task=None, **settings):
        self.calls.append(("run_many", len(instructions)))
        return [self._answer(image, text, task) for text in instructions]

    def _answer(self, image, instruction, task):
        r = route(instruction, task=task)
        ex = self.truth[(_digest(image), task, r.category)]
        h, w = image.shape[:2]
        colors = (r.color_if_present, r.color_if_absent)
        visual = {"segmentation": lambda: encode_segmentation(ex.mask), "detection": lambda: encode_detection(image, ex.boxes),
                  "depth": lambda: encode_depth(ex.depth), "classification": lambda: encode_classification(ex.present, (h, w), *colors)}[task]()
        boxes = None if ex.boxes is None else ex.boxes.copy()
        return SimpleNamespace(task=task, category=r.category, visual=visual, mask=ex.mask, boxes=boxes,
                               scores=None if boxes is None else np.linspace(1, 0.5, len(boxes)), depth=ex.depth,
                               present=ex.present, score=1.0, colors=colors if task == "classification" else None,
                               overlay=lambda: image)


@pytest.fixture
def oracle(monkeypatch, synth_dir):
    pipe = OraclePipe(synth_dir)
    monkeypatch.setattr("icv_deploy.load", lambda *a, **k: pipe)
    return pipe


def _eval(out, *args):
    result = CliRunner().invoke(ev.main, ["--model", "unused", "--out", str(out), *args])
    return result


def test_oracle_scores_perfectly_and_writes_all_files(oracle, synth_dir, tmp_path):
    out = tmp_path / "eval"
    result = _eval(out, "--data", f"synth:{synth_dir}", "--prompts", "rephrased", "--limit", "3")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "metrics.json").read_text())
    res = report["results"]
    assert set(res) == set(ALL_TASKS)
    synth = {task: res[task]["synth"] for task in ALL_TASKS}
    assert synth["segmentation"]["miou"] == 1.0 and synth["segmentation"]["per_image_mean_iou"] == 1.0
    assert synth["detection"]["map50"] == pytest.approx(1.0) and synth["detection"]["map"] == pytest.approx(1.0)
    assert synth["depth"]["rmse"] == 0.0 and synth["depth"]["delta1"] == 1.0
    assert synth["classification"]["accuracy"] == 1.0 and synth["classification"]["cls_score"] == 0.0
    assert report["queries"] == sum(s.get("queries", s.get("images", 0)) for s in synth.values())
    table = (out / "table.md").read_text()
    assert "mIoU" in table and "| 100.0 |" in table and table.splitlines()[0] in result.output
    assert report["random_weights"] is False and "Random weights" not in table  # a model that is not marked
    for task in ALL_TASKS:
        assert len(list((out / "examples" / task).glob("*.png"))) >= 1
    assert len(oracle.calls) == report["queries"]  # --batch 1: one call per query


def test_resume_runs_only_missing_queries(oracle, synth_dir, tmp_path):
    out = tmp_path / "eval"
    args = ["--data", f"synth:{synth_dir}", "--limit", "1"]
    assert _eval(out, *args).exit_code == 0
    assert len(oracle.calls) == 4
    first = json.loads((out / "metrics.json").read_text())

    # A crash: the last finished query's line never made it, and a torn line follows.
    part = out / "predictions.rank0.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:-1]) + lines[-1][:10])
    oracle.calls.clear()
    result = _eval(out, *args)
    assert result.exit_code == 0, result.output
    assert len(oracle.calls) == 1
    # the same metrics (timings aside: the resumed query ran again and took its own time)
    assert _without_timings(json.loads((out / "metrics.json").read_text())["results"]) == _without_timings(first["results"])
    assert len(part.read_text().splitlines()) == 4  # torn tail cut, not duplicated

    # A larger --limit adds only the new queries; settings that change predictions are refused.
    oracle.calls.clear()
    assert _eval(out, "--data", f"synth:{synth_dir}", "--limit", "2").exit_code == 0
    report = json.loads((out / "metrics.json").read_text())
    assert len(oracle.calls) == report["queries"] - 4
    refused = _eval(out, *args, "--steps", "7")
    assert refused.exit_code == 2 and "other settings" in refused.output and "Traceback" not in refused.output
    assert _eval(out, *args, "--steps", "7", "--restart").exit_code == 0
    assert len(part.read_text().splitlines()) == 4


def test_batch_uses_run_many_per_image_and_task(oracle, synth_dir, tmp_path):
    result = _eval(tmp_path / "eval", "--data", f"synth:{synth_dir}", "--tasks", "segmentation,classification", "--batch", "8")
    assert result.exit_code == 0, result.output
    queries = [q for q in ev.collect_queries([f"synth:{synth_dir}"], ("segmentation", "classification"), None, "fixed", 0)]
    groups = {(q.image_id, q.task) for q in queries}
    assert sum(n for _, n in oracle.calls) == len(queries)
    assert len(oracle.calls) == len(groups) < len(queries)  # one call per image and task
    assert all(kind == "run_many" for kind, n in oracle.calls if n > 1)
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(report["results"]) == {"segmentation", "classification"}
    assert report["results"]["segmentation"]["synth"]["miou"] == 1.0


class FakeState:
    """accelerate's PartialState for rank `rank` of `world` (contiguous split, as accelerate does)."""

    def __init__(self, rank, world):
        self.process_index, self.num_processes, self.device = rank, world, "cpu"

    def wait_for_everyone(self):
        pass

    @contextmanager
    def split_between_processes(self, items):
        per, extra = divmod(len(items), self.num_processes)
        start = self.process_index * per + min(self.process_index, extra)
        yield items[start:start + per + (self.process_index < extra)]


def test_distributed_ranks_split_queries_and_main_merges(oracle, synth_dir, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    data = [f"synth:{synth_dir}"]
    monkeypatch.setattr(ev, "_process_state", lambda device: FakeState(1, 2))
    assert ev.evaluate("unused", data, out, limit=2, progress=False) is None  # a worker: no report
    worker_calls = len(oracle.calls)
    monkeypatch.setattr(ev, "_process_state", lambda device: FakeState(0, 2))
    report = ev.evaluate("unused", data, out, limit=2, progress=False)
    assert 0 < worker_calls < len(oracle.calls)
    assert len(oracle.calls) == report["queries"]  # every query ran once, on one rank
    assert (out / "predictions.rank0.jsonl").exists() and (out / "predictions.rank1.jsonl").exists()
    assert report["results"]["depth"]["synth"]["rmse"] == 0.0


def test_bad_data_is_one_line_error(tmp_path):
    for data in ("nosuchkind:/x", str(tmp_path)):
        result = _eval(tmp_path / "eval", "--data", data)
        assert result.exit_code == 2 and result.output.startswith("error: ") and "Traceback" not in result.output
    result = _eval(tmp_path / "eval", "--data", f"synth:{tmp_path / 'missing'}")
    assert result.exit_code == 2 and "not found" in result.output


@pytest.mark.slow
def test_icv_eval_with_a_random_tiny_model(tiny_model, synth_dir, tmp_path, monkeypatch):
    from icv_deploy.pipeline import InstructCVPipeline

    model = tiny_model  # conftest: random weights, VAE scale factor 2
    calls = []
    real_run_many = InstructCVPipeline.run_many
    monkeypatch.setattr(InstructCVPipeline, "run_many", lambda self, *a, **k: calls.append(1) or real_run_many(self, *a, **k))
    out = tmp_path / "eval"
    args = ["--model", str(model), "--device", "cpu", "--data", f"synth:{synth_dir}", "--limit", "1",
            "--steps", "2", "--resolution", "32", "--out", str(out)]
    result = CliRunner().invoke(ev.main, args)
    assert result.exit_code == 0, result.output
    assert len(calls) == 4
    report = json.loads((out / "metrics.json").read_text())
    for task, keys in {"segmentation": ("miou", "per_image_mean_iou"), "detection": ("map50", "map"),
                       "depth": ("rmse", "abs_rel", "log10", "delta1", "delta2", "delta3"),
                       "classification": ("accuracy", "cls_score")}.items():
        m = report["results"][task]["synth"]
        for key in keys:
            value = m[key]
            # Defined metrics are finite; null only where icv_deploy.metrics documents NaN (mIoU with no pixel).
            if value is None:
                assert (task, key) == ("segmentation", "miou"), (task, key)
            else:
                assert math.isfinite(value), (task, key, value)
    assert (out / "table.md").exists() and len(list((out / "examples").glob("*/*.png"))) == 4
    # The tiny model is marked as random-weight: so are its metrics, first line of the table included.
    assert report["random_weights"] is True
    assert (out / "table.md").read_text().startswith("**Random weights:**")
    # Rerun: everything is done, nothing runs again (the model is not even loaded), and the mark stays.
    calls.clear()
    assert CliRunner().invoke(ev.main, args).exit_code == 0
    assert calls == []
    assert json.loads((out / "metrics.json").read_text())["random_weights"] is True


def test_vae_choice_reaches_the_runtime_and_must_match_to_resume(synth_dir, tmp_path, monkeypatch):
    pipe, opened = OraclePipe(synth_dir), []
    monkeypatch.setattr("icv_deploy.load", lambda *a, **k: opened.append(k) or pipe)
    out, args = tmp_path / "eval", ["--data", f"synth:{synth_dir}", "--limit", "1", "--tasks", "segmentation"]
    assert _eval(out, *args, "--vae", "tiny").exit_code == 0
    assert opened[0]["vae"] == "tiny"
    report = json.loads((out / "metrics.json").read_text())
    assert report["settings"]["vae"] == "tiny" and "tiny VAE" in report["label"]
    refused = _eval(out, *args)  # the model's own VAE now: other predictions, so no resuming into this folder
    assert refused.exit_code == 2 and "vae 'tiny'" in refused.output


@pytest.mark.slow
def test_icv_eval_with_the_tiny_vae(taesd_model, synth_dir, tmp_path):
    out = tmp_path / "eval"
    args = ["--model", str(taesd_model), "--device", "cpu", "--vae", "tiny", "--data", f"synth:{synth_dir}", "--limit", "1",
            "--tasks", "depth", "--steps", "1", "--resolution", "32", "--out", str(out)]
    result = CliRunner().invoke(ev.main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["queries"] == 1 and math.isfinite(report["results"]["depth"]["synth"]["rmse"])
    records = [json.loads(line) for line in (out / "predictions.rank0.jsonl").read_text().splitlines()]
    assert len(records) == 1


def test_build_folder_source(oracle, synth_dir, tmp_path):
    """An `icv-data build` folder: ground truth decoded from the painted targets (approximate for depth)."""
    from icv_deploy.training.build import build

    built = tmp_path / "built"
    build([f"synth:{synth_dir}"], built, size=64, progress=False)
    out = tmp_path / "eval"
    result = _eval(out, "--data", str(built))
    assert result.exit_code == 0, result.output
    res = {task: per["synth"] for task, per in json.loads((out / "metrics.json").read_text())["results"].items()}
    assert set(res) == set(ALL_TASKS)
    assert res["segmentation"]["miou"] == 1.0 and res["classification"]["accuracy"] == 1.0
    assert res["depth"]["rmse"] < 10 / 255  # the painted target quantises depth to 10/255 m
    assert res["detection"]["map50"] > 0.9


@pytest.mark.slow
def test_torchrun_two_cpu_processes_share_the_queries(synth_dir, tmp_path):
    """Two real processes (accelerate PartialState over gloo), each answering with the oracle."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "run_eval.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import icv_deploy\n"
        "from test_eval import OraclePipe\n"
        f"icv_deploy.load = lambda *a, **k: OraclePipe({str(synth_dir)!r})\n"
        "from icv_deploy.training.evaluate import main\n"
        "main()\n"
    )
    out = tmp_path / "eval"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
                           "--model", "unused", "--data", f"synth:{synth_dir}", "--limit", "2", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = [[json.loads(line)["key"] for line in (out / f"predictions.rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert keys[0] and keys[1] and not set(keys[0]) & set(keys[1])
    report = json.loads((out / "metrics.json").read_text())
    assert report["queries"] == len(keys[0]) + len(keys[1])
    assert report["results"]["segmentation"]["synth"]["miou"] == 1.0


def _without_timings(results: dict) -> dict:
    return {task: {data: {k: v for k, v in m.items() if k != "seconds_per_query"} for data, m in per.items()}
            for task, per in results.items()}
