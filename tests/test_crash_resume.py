"""Crashes lose nothing: each long job is SIGKILLed in the middle of its work (polling until it has written part of
its result), rerun with the same command, and its result compared with an uninterrupted run's, bit for bit where
the job is deterministic: `icv-data build`, `icv-train`, `icv-eval`, `icv-export onnx` and the TensorRT engine
writer (TensorRT faked as in test_trt.py, in a process of its own: tests/slow_fake_trt_build.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_train_run import FAST, NO_TENSORBOARD, make_dataset, subprocess_env

pytestmark = pytest.mark.slow
TESTS = Path(__file__).parent


def run(cmd, log: Path) -> None:
    with open(log, "ab") as fh:
        proc = subprocess.run([str(c) for c in cmd], env=subprocess_env(), stdout=fh, stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, log.read_text()[-3000:]


def run_and_kill(cmd, midway, log: Path, timeout: float = 300) -> None:
    """Start `cmd`, wait until `midway()` says it has done part of its work, SIGKILL it. Fails if it ended first."""
    with open(log, "ab") as fh:
        proc = subprocess.Popen([str(c) for c in cmd], env=subprocess_env(), stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while not midway():
                assert proc.poll() is None, "the job ended before the kill point:\n" + log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the job never reached the kill point:\n" + log.read_text()[-3000:]
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


def files(folder: Path, skip=lambda name: False) -> dict[str, bytes]:
    """Every file under `folder` by relative path (hidden files included: a leftover temporary is a difference),
    but those whose name `skip` says."""
    found = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    return {name: p.read_bytes() for name, p in found.items() if not skip(name)}


def without(obj, keys):
    """A JSON value with the given keys removed at any depth (timings)."""
    if isinstance(obj, dict):
        return {k: without(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [without(v, keys) for v in obj]
    return obj


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from icv_deploy.training.synthetic import write_scenes

    return write_scenes(tmp_path_factory.mktemp("crash-synth") / "scenes", 6, seed=0, size=64, progress=False)


def test_icv_data_build(synth, tmp_path):
    def cmd(out):
        return [sys.executable, "-m", "icv_deploy.training.cli", "build", "--source", f"synth:{synth}", "--out", out,
                "--size", "32", "--shard-size", "2", "--prompts", "rephrased", "--seed", "1"]

    run(cmd(tmp_path / "whole"), tmp_path / "log")
    out, work = tmp_path / "killed", tmp_path / "killed.work"
    run_and_kill(cmd(out), lambda: (work / "shards" / "00001").is_dir(), tmp_path / "log")
    shards = len(list((work / "shards").iterdir()))
    plan = json.loads((work / "plan.json").read_text())["plan"]
    assert not out.exists() and 2 <= shards < len(plan) / 2  # killed mid-way: some shards on disk, not all
    run(cmd(out), tmp_path / "log")
    assert not work.exists()
    assert files(out) == files(tmp_path / "whole")


def test_icv_train(tmp_path):
    data = make_dataset(tmp_path / "data")

    def cmd(out):
        return [sys.executable, "-m", "icv_deploy.training.train", "--config", "tiny", "--data", data, "--output", out,
                "--max-steps", "10", "--checkpoint-every", "2", "--validation-every", "0", "--resume", "latest",
                *FAST, *NO_TENSORBOARD]

    run(cmd(tmp_path / "whole"), tmp_path / "log")
    out = tmp_path / "killed"
    run_and_kill(cmd(out), lambda: (out / "checkpoints" / "checkpoint-4" / "training_state.json").exists(), tmp_path / "log")
    assert not (out / "model").exists() and not (out / "checkpoints" / "checkpoint-10").exists()
    run(cmd(out), tmp_path / "log")

    def skip(name):
        # The global RNG states differ: each data-loader pass draws its base seed from them, and a resumed run makes
        # one more pass. Training draws nothing from them (noise, timesteps and dropout come from batch_generator).
        # losses.jsonl records wall-clock times; its steps and losses are compared below.
        return name == "logs/losses.jsonl" or "/random_states_" in name

    def contents(folder):  # configs record where the base model was read from: <output>/random-base
        return {name: data.replace(str(folder).encode(), b"OUTPUT") for name, data in files(folder, skip).items()}

    whole = contents(tmp_path / "whole")
    assert contents(out) == whole  # the model, the kept checkpoints (weights, optimizer, EMA), validation grid
    assert any(name.startswith("model/unet/") for name in whole)

    def losses(folder):  # the resumed run dropped the lines it logged past its checkpoint, then logged them again
        lines = [json.loads(line) for line in (folder / "logs" / "losses.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in lines]

    assert losses(out) == losses(tmp_path / "whole") and [s for s, _ in losses(out)] == list(range(1, 11))


def test_icv_eval(tiny_model, synth, tmp_path):
    def cmd(out):
        return [sys.executable, "-m", "icv_deploy.training.evaluate", "--model", tiny_model, "--data", f"synth:{synth}",
                "--out", out, "--steps", "2", "--resolution", "32", "--examples", "2"]

    run(cmd(tmp_path / "whole"), tmp_path / "log")
    out = tmp_path / "killed"
    part = out / "predictions.rank0.jsonl"
    total = len((tmp_path / "whole" / "predictions.rank0.jsonl").read_text().splitlines())
    run_and_kill(cmd(out), lambda: part.exists() and part.read_text().count("\n") >= 2, tmp_path / "log")
    assert 2 <= part.read_text().count("\n") < total and not (out / "metrics.json").exists()
    run(cmd(out), tmp_path / "log")

    def results(folder):
        records = [json.loads(line) for line in (folder / "predictions.rank0.jsonl").read_text().splitlines()]
        metrics = json.loads((folder / "metrics.json").read_text())
        return without(records, {"seconds"}), without(metrics, {"seconds_per_query"})

    assert results(out) == results(tmp_path / "whole")  # every query's answer, bit for bit, in the same order
    assert files(out / "examples") == files(tmp_path / "whole" / "examples")


@pytest.fixture(scope="module")
def whole_export(tiny_model, tmp_path_factory):
    """An uninterrupted `icv-export onnx` (the reference, and the input of the engine writer)."""
    out = tmp_path_factory.mktemp("crash-export") / "whole"
    run(export_cmd(tiny_model, out), out.parent / "log")
    return out


def export_cmd(model, out):
    return [sys.executable, "-m", "icv_deploy.export.cli", "onnx", "--model", model, "--output", out, "--no-verify"]


def test_icv_export_onnx(tiny_model, whole_export, tmp_path):
    from icv_deploy.export.onnx_export import STATE_NAME

    out = tmp_path / "killed"
    run_and_kill(export_cmd(tiny_model, out), lambda: (out / "unet" / "model.onnx").exists(), tmp_path / "log")
    assert (out / STATE_NAME).exists() and not (out / "manifest.json").exists()  # mid-way: the VAE graphs to come
    run(export_cmd(tiny_model, out), tmp_path / "log")
    assert "already exported, kept" in (tmp_path / "log").read_text()  # the finished graphs were not redone
    assert files(out, lambda name: name == "manifest.json") == files(whole_export, lambda name: name == "manifest.json")

    def manifest(folder):
        return without(json.loads((folder / "manifest.json").read_text()), {"export_seconds"})

    assert manifest(out) == manifest(whole_export)


def test_engine_writer(whole_export, tmp_path):
    def cmd(out):
        return [sys.executable, TESTS / "slow_fake_trt_build.py", whole_export, out]

    run(cmd(tmp_path / "whole"), tmp_path / "log")
    out = tmp_path / "killed"
    run_and_kill(cmd(out), lambda: out.is_dir() and any(out.glob(".unet.plan.*.tmp")), tmp_path / "log")
    assert not (out / "unet.plan").exists() and not (out / "engines.json").exists()  # a plan half on disk
    run(cmd(out), tmp_path / "log")
    assert files(out) == files(tmp_path / "whole")  # no leftover temporary, the same plans and metadata
