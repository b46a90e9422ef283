"""Bad input through every CLI and the Python API (docs/DESIGN.md 10): one line starting `error:`, exit code 2, and
nothing half-written where the command would have written its result.

The classes: truncated or corrupt weights (safetensors header), weights whose shapes do not fit the config, corrupt
ONNX graphs and engine files, a model folder typo (and a hub id while HF_HUB_OFFLINE is set: no network wait),
images whose header already says they are too large (refused before decoding, PIL's process-wide limit untouched),
empty files and oversized files. Every case fails before loading a network, so the walk takes seconds.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from icv_deploy.cli import main as icv_infer
from icv_deploy.export.cli import main as icv_export
from icv_deploy.training.cli import main as icv_data
from icv_deploy.training.evaluate import main as icv_eval
from icv_deploy.training.train import main as icv_train

from test_train_run import make_dataset


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height RGB pixels, with a few bytes of data: what a decompression bomb
    or an absurdly large photo looks like before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def sparse_file(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk space (a hole)."""
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def model_copy(tiny_model: Path, dst: Path, edit) -> Path:
    shutil.copytree(tiny_model, dst)
    edit(dst)
    return dst


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def wider_cross_attention(folder: Path) -> None:
    """The UNet config of another model (cross-attention width 48) beside this model's weights (width 32)."""
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["cross_attention_dim"] = 48
    (folder / "unet" / "config.json").write_text(json.dumps(config))


def onnx_folder(tiny_model: Path, dst: Path, corrupt: str) -> Path:
    """An ONNX folder as `icv-export onnx` lays it out, with garbage graphs (no export needed): `corrupt` "content"
    keeps the manifest true to the files (only ONNX Runtime can tell), "truncated" cuts the UNet graph short."""
    from icv_deploy.backends.onnx_backend import FORMAT, FORMAT_VERSION, SUBMODEL_NAMES, graph_io
    from icv_deploy.backends.torch_backend import model_info
    from icv_deploy.export.manifest import file_entry

    info = model_info(tiny_model)
    io = graph_io(info)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "opset": 17, "precision": "fp32",
                "io_dtype": "float32", "vae": "full", "model_info": info.__dict__, "submodels": {}}
    for name in SUBMODEL_NAMES:
        graph = dst / name / "model.onnx"
        graph.parent.mkdir(parents=True)
        graph.write_bytes(b"\x08\x07garbage, not a protobuf of an ONNX graph" * 50)
        manifest["submodels"][name] = {**file_entry(dst, graph), "inputs": io[name][0], "outputs": io[name][1]}
    for part in ("tokenizer", "scheduler"):
        shutil.copytree(tiny_model / part, dst / part)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    if corrupt == "truncated":
        truncate(dst / "unet" / "model.onnx")
    return dst


def engine_folder(tiny_model: Path, dst: Path) -> Path:
    """An engine folder as `icv-export build-engines` lays it out, whose UNet plan was cut short after the build."""
    from icv_deploy.backends import trt_backend
    from icv_deploy.backends.onnx_backend import SUBMODEL_NAMES
    from icv_deploy.backends.torch_backend import model_info
    from icv_deploy.export.manifest import sha256_file

    dst.mkdir()
    engines = {}
    for name in SUBMODEL_NAMES:
        plan = dst / f"{name}.plan"
        plan.write_bytes(b"PLAN" * 1000)
        engines[name] = {"path": plan.name, "bytes": plan.stat().st_size, "sha256": sha256_file(plan), "profile": {}}
    for part in ("tokenizer", "scheduler"):
        shutil.copytree(tiny_model / part, dst / part)
    metadata = {"format": trt_backend.FORMAT, "format_version": trt_backend.FORMAT_VERSION,
                "model_info": model_info(tiny_model).__dict__, "engines": engines}
    (dst / "engines.json").write_text(json.dumps(metadata))
    truncate(dst / "unet.plan")
    return dst


@pytest.fixture(scope="module")
def bad(tiny_model, tmp_path_factory):
    """Every kind of bad input, made once: paths by name."""
    from icv_deploy.training.synthetic import write_scenes

    root = tmp_path_factory.mktemp("bad-input")
    p = {"root": root}
    p["truncated"] = model_copy(tiny_model, root / "truncated", lambda f: truncate(f / "unet" / "diffusion_pytorch_model.safetensors"))
    p["empty_weights"] = model_copy(tiny_model, root / "empty-weights",
                                    lambda f: (f / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b""))
    p["wrong_shapes"] = model_copy(tiny_model, root / "wrong-shapes", wider_cross_attention)
    p["empty_config"] = model_copy(tiny_model, root / "empty-config", lambda f: (f / "vae" / "config.json").write_text(""))
    p["huge_config"] = model_copy(tiny_model, root / "huge-config",
                                  lambda f: sparse_file(f / "unet" / "config.json", (64 << 20) + 1))
    (root / "models").mkdir()
    p["good"] = Path(shutil.copytree(tiny_model, root / "models" / "tiny-random"))
    p["typo"] = root / "models" / "tiny-randm"
    p["onnx_corrupt"] = onnx_folder(tiny_model, root / "onnx-corrupt", "content")
    p["onnx_truncated"] = onnx_folder(tiny_model, root / "onnx-truncated", "truncated")
    p["engines_truncated"] = engine_folder(tiny_model, root / "engines")
    Image.new("RGB", (64, 48), (120, 80, 40)).save(root / "ok.png")
    p["image"] = root / "ok.png"
    p["bomb"] = png_header_only(root / "bomb.png", 11_000, 10_000)  # 110 M pixels: over our limit, under PIL's error
    p["empty_image"] = sparse_file(root / "empty.png", 0)
    p["huge_image"] = sparse_file(root / "huge.png", (1 << 30) + 1)
    p["synth_bomb"] = write_scenes(root / "synth-bomb", 2, seed=0, size=64, progress=False)
    for rgb in (p["synth_bomb"] / "rgb").glob("*.png"):
        png_header_only(rgb, 11_000, 10_000)
    p["empty_pool"] = sparse_file(root / "pool.json", 0)
    p["synth"] = write_scenes(root / "synth", 2, seed=0, size=64, progress=False)
    p["dataset"] = make_dataset(root / "dataset", per_task=1, size=16)
    return p


def out_dir(p, name):
    return p["root"] / "out" / name


# (id, command, arguments (strings with {name} filled from `bad`), environment, expected message, what must not exist)
CASES = [
    ("infer-truncated-weights", icv_infer, ["--model", "{truncated}", "{image}", "Segment the ball", "--output", "{out}"],
     {}, "corrupt or truncated safetensors", "{out}"),
    ("infer-empty-weights", icv_infer, ["--model", "{empty_weights}", "{image}", "Segment the ball", "--output", "{out}"],
     {}, "empty file", "{out}"),
    ("infer-wrong-shapes", icv_infer, ["--model", "{wrong_shapes}", "{image}", "Segment the ball", "--output", "{out}"],
     {}, "needs [", "{out}"),
    ("infer-corrupt-onnx", icv_infer, ["--model", "{onnx_corrupt}", "--engine", "onnx", "{image}", "Segment the ball",
                                       "--output", "{out}"], {}, "ONNX Runtime cannot load it", "{out}"),
    ("infer-truncated-onnx", icv_infer, ["--model", "{onnx_truncated}", "--engine", "onnx", "{image}", "Segment the ball",
                                         "--output", "{out}"], {}, "truncated or replaced", "{out}"),
    ("infer-truncated-engine", icv_infer, ["--model", "{engines_truncated}", "--engine", "trt", "--device", "cuda",
                                           "{image}", "Segment the ball", "--output", "{out}"], {}, "unet.plan", "{out}"),
    ("infer-model-typo", icv_infer, ["--model", "{typo}", "{image}", "Segment the ball", "--output", "{out}"],
     {}, "no such folder (did you mean", "{out}"),
    ("infer-hub-offline", icv_infer, ["--model", "no-such-owner/no-such-model", "{image}", "Segment the ball",
                                      "--output", "{out}"], {"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set", "{out}"),
    ("infer-image-too-large", icv_infer, ["--model", "{good}", "{bomb}", "Segment the ball", "--output", "{out}"],
     {}, "header says 11000x10000 px", "{out}"),
    ("infer-empty-image", icv_infer, ["--model", "{good}", "{empty_image}", "Segment the ball", "--output", "{out}"],
     {}, "empty file", "{out}"),
    ("infer-oversized-image-file", icv_infer, ["--model", "{good}", "{huge_image}", "Segment the ball", "--output", "{out}"],
     {}, "too large an image file", "{out}"),
    ("infer-empty-config", icv_infer, ["--model", "{empty_config}", "{image}", "Segment the ball", "--output", "{out}"],
     {}, "config.json: empty file", "{out}"),
    ("infer-oversized-config", icv_infer, ["--model", "{huge_config}", "{image}", "Segment the ball", "--output", "{out}"],
     {}, "too large for a JSON config", "{out}"),
    ("export-truncated-weights", icv_export, ["onnx", "--model", "{truncated}", "--output", "{out}"],
     {}, "corrupt or truncated safetensors", "{out}"),
    ("export-wrong-shapes", icv_export, ["onnx", "--model", "{wrong_shapes}", "--output", "{out}"], {}, "needs [", "{out}"),
    ("export-model-typo", icv_export, ["onnx", "--model", "{typo}", "--output", "{out}"], {}, "did you mean", "{out}"),
    ("export-hub-offline", icv_export, ["onnx", "--model", "no-such-owner/no-such-model", "--output", "{out}"],
     {"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set", "{out}"),
    ("export-empty-config", icv_export, ["onnx", "--model", "{empty_config}", "--output", "{out}"],
     {}, "empty file", "{out}"),
    ("export-check-corrupt-onnx", icv_export, ["check", "{onnx_truncated}"], {}, "truncated or replaced", None),
    ("data-build-image-too-large", icv_data, ["build", "--source", "synth:{synth_bomb}", "--out", "{out}", "--size", "32"],
     {}, "header says 11000x10000 px", "{out}"),
    ("data-build-empty-pool", icv_data, ["build", "--source", "synth:{synth}", "--out", "{out}", "--prompts", "rephrased",
                                         "--pool", "{empty_pool}"], {}, "pool.json", "{out}"),
    ("data-grid-empty-folder", icv_data, ["grid", "{root}/models", "--out", "{out}/grid.png"], {}, "error: ", "{out}"),
    ("train-truncated-base", icv_train, ["--config", "tiny", "--data", "{dataset}", "--output", "{out}", "--base-model",
                                         "{truncated}", "--set", "report_to=none"], {}, "corrupt or truncated", "{out}/model"),
    ("train-base-typo", icv_train, ["--config", "tiny", "--data", "{dataset}", "--output", "{out}", "--base-model", "{typo}",
                                    "--set", "report_to=none"], {}, "did you mean", "{out}/model"),
    ("train-base-hub-offline", icv_train, ["--config", "tiny", "--data", "{dataset}", "--output", "{out}", "--base-model",
                                           "no-such-owner/no-such-model", "--set", "report_to=none"],
     {"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set", "{out}/model"),
    ("eval-truncated-weights", icv_eval, ["--model", "{truncated}", "--data", "synth:{synth}", "--out", "{out}"],
     {}, "corrupt or truncated safetensors", "{out}"),
    ("eval-corrupt-onnx", icv_eval, ["--model", "{onnx_corrupt}", "--engine", "onnx", "--data", "synth:{synth}", "--out",
                                     "{out}"], {}, "ONNX Runtime cannot load it", "{out}"),
    ("eval-model-typo", icv_eval, ["--model", "{typo}", "--data", "synth:{synth}", "--out", "{out}"], {}, "did you mean", "{out}"),
    ("eval-image-too-large", icv_eval, ["--model", "{good}", "--data", "synth:{synth_bomb}", "--out", "{out}", "--steps", "1",
                                        "--resolution", "32"], {}, "header says 11000x10000 px", "{out}/metrics.json"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_half_written(case, bad):
    name, command, args, env, expected, not_written = case
    fill = {**{k: str(v) for k, v in bad.items()}, "out": str(out_dir(bad, name))}
    args = [a.format(**fill) for a in args]
    pil_limit = Image.MAX_IMAGE_PIXELS
    started = time.monotonic()
    result = CliRunner().invoke(command, args, env=env)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output[-2000:]
    assert lines and lines[-1].startswith("error: ") and expected in lines[-1], result.output[-2000:]
    assert "Traceback" not in result.output and not any(line.startswith("error: ") for line in lines[:-1])
    assert Image.MAX_IMAGE_PIXELS == pil_limit  # PIL's process-wide limit is the application's, not ours to change
    if not_written:
        assert not Path(not_written.format(**fill)).exists(), f"{not_written} was written"
    assert time.monotonic() - started < 60 or "HF_HUB_OFFLINE" not in env  # offline: no network wait


def test_python_api_raises_one_line_icv_errors(bad):
    import icv_deploy
    from icv_deploy.errors import ImageError, IcvError, ModelFilesError
    from icv_deploy.export.onnx_export import export_onnx

    for folder in ("truncated", "wrong_shapes", "typo", "empty_config"):
        with pytest.raises(ModelFilesError) as err:
            icv_deploy.load(bad[folder])
        assert "\n" not in str(err.value)
    with pytest.raises(ModelFilesError, match="ONNX Runtime cannot load it"):
        icv_deploy.load(bad["onnx_corrupt"], engine="onnx")
    with pytest.raises(IcvError, match="corrupt or truncated safetensors"):
        export_onnx(bad["truncated"], bad["root"] / "api-export", log=lambda *_: None)
    assert not (bad["root"] / "api-export").exists()
    pipe = icv_deploy.load(bad["good"])
    for image, message in (("bomb", "header says 11000x10000"), ("empty_image", "empty file"),
                           ("huge_image", "too large an image file")):
        with pytest.raises(ImageError, match=message):
            pipe(bad[image], "Segment the ball", steps=1)


def test_image_size_comes_from_the_header_before_any_decoding(bad, monkeypatch):
    """The refusal happens without decoding: a file whose pixel data is missing entirely is still refused for its
    size, not reported as truncated."""
    from icv_deploy.errors import ImageError
    from icv_deploy.images import load_image

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    with pytest.raises(ImageError, match="its header says 11000x10000 px"):
        load_image(bad["bomb"])
