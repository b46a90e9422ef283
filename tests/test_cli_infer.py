"""`icv-infer` end to end on a random-weight model, and its answers to bad input (docs/DESIGN.md 10)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from icv_deploy.cli import main

ALL_TASKS = ["Segment the red box", "Detect the red box", "Create a monocular depth map",
             "Show blue if the picture has a box, otherwise show black"]


@pytest.fixture
def image_path(tmp_path, scene_image):
    path = tmp_path / "scene.png"
    Image.fromarray(scene_image).save(path)
    return path


def run(args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def test_all_four_tasks_write_their_files(tiny_model, image_path, tmp_path):
    out = tmp_path / "out"
    result = run(["--model", tiny_model, "--steps", 3, "--quiet", "--json", "--output", out, image_path, *ALL_TASKS])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [p["task"] for p in payload] == ["segmentation", "detection", "depth", "classification"]
    assert payload[0]["category"] == "red box" and payload[3]["colors"] == ["blue", "black"]
    folders = sorted((out / "scene").iterdir())
    assert len(folders) == 4
    expected = [{"mask.png"}, {"boxes.json"}, {"depth.npy", "depth.png"}, set()]
    for folder, extra in zip(folders, expected):
        names = {p.name for p in folder.iterdir()}
        assert {"visual.png", "overlay.png", "result.json"} | extra <= names
        assert json.loads((folder / "result.json").read_text())["instruction"] in ALL_TASKS
    mask = np.asarray(Image.open(folders[0] / "mask.png"))
    assert mask.shape == (60, 84) and set(np.unique(mask)) <= {0, 255}
    depth_mm = np.asarray(Image.open(folders[2] / "depth.png"))
    depth_m = np.load(folders[2] / "depth.npy")
    assert depth_mm.dtype == np.uint16 and depth_m.shape == (60, 84)
    np.testing.assert_allclose(depth_mm / 1000.0, depth_m, atol=6e-4)
    boxes = json.loads((folders[1] / "boxes.json").read_text())
    assert len(boxes) == len(payload[1]["boxes"])
    for saved, printed in zip(boxes, payload[1]["boxes"]):
        np.testing.assert_allclose(saved["box"], printed, atol=0.01)


def test_console_script_runs_in_a_subprocess(tiny_model, image_path, tmp_path):
    exe = shutil.which("icv-infer")
    cmd = [exe] if exe else [sys.executable, "-m", "icv_deploy.cli"]
    proc = subprocess.run([*cmd, "--model", str(tiny_model), "--steps", "2", "--output", str(tmp_path / "o"),
                           str(image_path), "Segment the red box"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "segmentation of red box" in proc.stdout
    assert (tmp_path / "o" / "scene" / "01-segment-the-red-box" / "overlay.png").exists()


def _bad_model(tmp_path, tiny_model, kind):
    bad = tmp_path / f"model-{kind}"
    shutil.copytree(tiny_model, bad)
    if kind == "no-unet":
        shutil.rmtree(bad / "unet")
    elif kind == "pickle-only":
        for f in (bad / "unet").glob("*.safetensors"):
            f.rename(f.with_suffix(".bin"))
    elif kind == "4-channel":
        cfg = json.loads((bad / "unet" / "config.json").read_text())
        cfg["in_channels"] = 4
        (bad / "unet" / "config.json").write_text(json.dumps(cfg))
    elif kind == "broken-json":
        (bad / "scheduler" / "scheduler_config.json").write_text("{not json")
    return bad


@pytest.mark.parametrize("case, needle", [
    ("missing-image", "no such file"),
    ("text-image", "not an image"),
    ("empty-instruction", "empty"),
    ("no-task", "segment"),  # the message lists examples
    ("no-model", "bundled model is not installed"),  # no --model, no $ICV_MODEL, no demo shipped
    ("missing-model", "no such folder"),
    ("no-unet", "unet"),
    ("pickle-only", "safetensors"),
    ("4-channel", "8"),
    ("broken-json", "JSON"),
    ("bad-resolution", "resolution"),
])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, tiny_model, image_path, monkeypatch, case, needle):
    monkeypatch.delenv("ICV_MODEL", raising=False)
    monkeypatch.setattr("icv_deploy.model_files.BUNDLED_DIR", tmp_path / "no-assets")
    model, image, instruction, extra = tiny_model, image_path, "Segment the red box", []
    if case == "missing-image":
        image = tmp_path / "nope.png"
    elif case == "text-image":
        image = tmp_path / "notes.png"
        image.write_text("not an image")
    elif case == "empty-instruction":
        instruction = "   "
    elif case == "no-task":
        instruction = "Tell me a joke about penguins"
    elif case == "missing-model":
        model = tmp_path / "no-such-model"
    elif case in ("no-unet", "pickle-only", "4-channel", "broken-json"):
        model = _bad_model(tmp_path, tiny_model, case)
    elif case == "bad-resolution":
        extra = ["--resolution", "big"]
    args = ([] if case == "no-model" else ["--model", model]) + ["--steps", 1, "--quiet", *extra, "--output", tmp_path / "o", image, instruction]
    result = run(args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle.lower() in lines[0].lower(), result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_debug_shows_the_traceback(tmp_path, tiny_model):
    result = run(["--model", tiny_model, "--debug", tmp_path / "nope.png", "Segment the cat"])
    assert result.exit_code != 0 and result.exception is not None


def test_over_long_instruction_is_truncated_with_a_warning(tiny_model, image_path, tmp_path):
    long = "Segment the red box " + " ".join(["please"] * 120)
    result = run(["--model", tiny_model, "--steps", 1, "--quiet", "--output", tmp_path / "o", image_path, long])
    assert result.exit_code == 0, result.output
    assert "truncated to 77" in result.stderr


def test_forced_task(tiny_model, image_path, tmp_path):
    result = run(["--model", tiny_model, "--steps", 1, "--quiet", "--json", "--task", "depth", "--output", tmp_path / "o",
                  image_path, "Tell me a joke about penguins"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["task"] == "depth"
