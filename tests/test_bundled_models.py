"""Bundled models by name (`demo`, `demo-1step`), the default model ($ICV_MODEL, else demo), and random-weight models
marked as such wherever a person reads an answer (docs/DESIGN.md 3).

The bundled folder is replaced by a stand-in (the tiny random model), so these tests hold whatever model ships."""

from __future__ import annotations

import json
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import icv_deploy
from icv_deploy.cli import main as infer_main
from icv_deploy.errors import ModelFilesError
from icv_deploy.model_files import resolve_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def assets(demo_assets):
    return demo_assets


@pytest.fixture
def image_path(tmp_path, scene_image):
    path = tmp_path / "scene.png"
    Image.fromarray(scene_image).save(path)
    return path


def trained_copy(tiny_model, tmp_path, config: dict) -> Path:
    """The tiny model with another icv_config.json, as a trained model would carry it."""
    folder = tmp_path / "trained"
    shutil.copytree(tiny_model, folder)
    (folder / "icv_config.json").write_text(json.dumps(config))
    return folder


# ---- resolution ---------------------------------------------------------------------------------------------------
def test_names_and_no_model_resolve_to_the_bundled_demo(assets):
    assert resolve_model("demo") == assets / "demo"
    assert resolve_model(None) == resolve_model() == assets / "demo"


def test_icv_model_and_explicit_folders_override(assets, tiny_model_f4, monkeypatch):
    monkeypatch.setenv("ICV_MODEL", str(tiny_model_f4))
    assert resolve_model(None) == tiny_model_f4
    monkeypatch.setenv("ICV_MODEL", "demo")
    assert resolve_model(None) == assets / "demo"
    assert resolve_model(str(tiny_model_f4)) == tiny_model_f4  # a folder given beats $ICV_MODEL


def test_a_path_spelled_like_a_bundled_name_is_a_folder(assets, tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "demo").mkdir(parents=True)
    monkeypatch.chdir(work)
    assert resolve_model("demo") == assets / "demo"  # the bare name: the bundled model
    assert resolve_model("./demo").resolve() == (work / "demo").resolve()
    assert resolve_model(Path("demo")).resolve() == (work / "demo").resolve()


def test_a_missing_bundled_model_is_one_line_naming_it(assets, image_path, tmp_path):
    with pytest.raises(ModelFilesError) as err:
        resolve_model("demo-1step")
    message = str(err.value)
    assert "\n" not in message and "demo-1step" in message and "not installed" in message
    result = CliRunner().invoke(infer_main, ["--model", "demo-1step", "--quiet", "--output", str(tmp_path / "o"),
                                             str(image_path), "Segment the red box"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model demo-1step") and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_load_without_a_model_opens_demo(assets):
    pipe = icv_deploy.load()
    assert pipe.source == "demo" and pipe.random_weights is True


def test_package_data_ships_the_bundled_model_files(tmp_path):
    """pyproject's package-data globs, applied the way setuptools does (glob under the package folder), pick up
    every file of a bundled diffusers folder, nested ones included."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["icv_deploy"]
    files = ["assets/bpe_simple_vocab_16e6.txt.gz", "assets/demo/model_index.json", "assets/demo/icv_config.json",
             "assets/demo/MODEL_CARD.md", "assets/demo/unet/diffusion_pytorch_model.safetensors",
             "assets/demo/unet/config.json", "assets/demo/tokenizer/tokenizer.json",
             "assets/demo-1step/vae_tiny/diffusion_pytorch_model.safetensors"]
    package = tmp_path / "icv_deploy"
    for name in files:
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text("x")
    shipped = {p.relative_to(package).as_posix() for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    assert shipped == set(files)


# ---- random weights: marked where a person reads the answer --------------------------------------------------------
def test_models_built_from_configs_are_marked(tiny_model, tmp_path):
    from icv_deploy.testing import mark_random_weights

    assert json.loads((tiny_model / "icv_config.json").read_text()) == {"random_weights": True}
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "icv_config.json").write_text(json.dumps({"steps": 4, "sampler": "lcm"}))
    mark_random_weights(folder)
    assert json.loads((folder / "icv_config.json").read_text()) == {"steps": 4, "sampler": "lcm", "random_weights": True}


def test_icv_infer_with_no_model_runs_demo_and_says_the_weights_are_random(assets, image_path, tmp_path):
    out = tmp_path / "o"
    result = CliRunner().invoke(infer_main, ["--steps", "1", "--resolution", "32", "--quiet", "--json", "--output",
                                             str(out), str(image_path), "Segment the red box", "Detect the red box"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:") and "random weights" in line]
    assert len(warnings) == 1 and "meaningless" in warnings[0]
    payload = json.loads(result.stdout)
    assert [p["random_weights"] for p in payload] == [True, True]
    for folder in (out / "scene").iterdir():
        assert json.loads((folder / "result.json").read_text())["random_weights"] is True


def test_a_trained_model_is_not_marked(tiny_model, image_path, tmp_path):
    model = trained_copy(tiny_model, tmp_path, {"resolution": 32, "steps": 1})
    pipe = icv_deploy.load(str(model))
    assert pipe.random_weights is False and pipe.defaults["resolution"] == 32
    assert pipe(image_path, "Create a monocular depth map").to_json()["random_weights"] is False
    result = CliRunner().invoke(infer_main, ["--model", str(model), "--quiet", "--output", str(tmp_path / "o"),
                                             str(image_path), "Segment the red box"])
    assert result.exit_code == 0, result.output
    assert "random weights" not in result.stderr


def test_the_mark_survives_onnx_export(onnx_taesd):
    """The export carries icv_config.json, so an ONNX folder of a random-weight model says so too."""
    assert json.loads((onnx_taesd / "icv_config.json").read_text())["random_weights"] is True
    assert icv_deploy.load(str(onnx_taesd), engine="onnx").random_weights is True


# ---- icv-eval and latency.py: the same default -----------------------------------------------------------------
def test_icv_eval_defaults_to_demo(assets, tmp_path, monkeypatch):
    from icv_deploy.errors import IcvError
    from icv_deploy.training import evaluate as ev
    from icv_deploy.training.synthetic import write_scenes

    scenes = write_scenes(tmp_path / "synth", 1, seed=0, size=64, progress=False)
    opened = []

    def fake_load(model, **options):
        opened.append(model)
        raise IcvError("stop here")  # only which model it opens matters

    monkeypatch.setattr("icv_deploy.load", fake_load)
    result = CliRunner().invoke(ev.main, ["--data", f"synth:{scenes}", "--limit", "1", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 2 and opened == ["demo"]


@pytest.fixture
def latency(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import latency

    yield latency
    sys.modules.pop("latency", None)


def test_latency_defaults_to_demo_and_never_builds_sd15(assets, latency, tmp_path):
    out = tmp_path / "latency.json"
    args = ["--engine", "torch", "--device", "cpu", "--no-baseline", "--repeats", "1", "--steps", "1",
            "--resolution", "32", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    result = CliRunner().invoke(latency.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    settings = json.loads(out.read_text())["settings"]
    assert settings["model"] == "demo" and Path(settings["model_dir"]) == assets / "demo"
    assert not (tmp_path / "cache" / "sd15-random").exists()


def test_latency_works_at_the_models_resolution(latency, tiny_model, tmp_path):
    assert latency.model_resolution(tiny_model) == 256  # no resolution in its icv_config: the paper's
    assert latency.model_resolution(trained_copy(tiny_model, tmp_path, {"resolution": 128})) == 128


def test_latency_reexports_when_the_model_changed(latency, tiny_model, tmp_path):
    from icv_deploy.export.manifest import MANIFEST_NAME, source_hash

    cached = tmp_path / "onnx"
    cached.mkdir()
    (cached / MANIFEST_NAME).write_text(json.dumps({"source_hash": source_hash(tiny_model)}))
    assert not latency._exported_from_other(cached, tiny_model)
    (cached / MANIFEST_NAME).write_text(json.dumps({"source_hash": "an older demo model"}))
    assert latency._exported_from_other(cached, tiny_model)
