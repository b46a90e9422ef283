"""OpenVINO backend and `icv-export openvino` (issue 14), on the tiny random model.

References are independent of OpenVINO: the PyTorch backend (diffusers modules) for numbers, the pipeline's own
guidance batch for the recorded calibration inputs. Bounds, stated once:
    f32   each of the four calls within 1e-4 relative (max |ov - torch| / max |torch|) of torch fp32; the painted
          image within 1/255 per pixel (same seed, sampler and steps)
    bf16  each call within 5e-2 relative (1-2e-2 measured); the painted image within 8/255 on average at guidance
          1/1 (bf16 keeps 8 bits of mantissa; a random-weight model has no trained structure that damps rounding)
    int8  the export runs, the folder loads, and the UNet stays within 50 % relative L2 of f32 (random weights:
          a smoke bound; accuracy on the demo model is measured by icv-eval, not here)
"""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("openvino", reason="pip install 'icv-deploy[openvino]'")

from icv_deploy.backends import load_backend  # noqa: E402
from icv_deploy.backends import openvino_backend as ovb  # noqa: E402
from icv_deploy.errors import IcvError, ModelFilesError  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "scene.png"
F32_BOUND, BF16_BOUND = 1e-4, 5e-2


@pytest.fixture(autouse=True)
def model_cache(tmp_path_factory, monkeypatch):
    """OpenVINO's compiled-model cache in the test session's temporary folder, never in ~/.cache."""
    folder = tmp_path_factory.getbasetemp() / "ov-model-cache"
    monkeypatch.setenv("ICV_OPENVINO_CACHE", str(folder))
    return folder


@pytest.fixture(scope="session")
def onnx_tiny(tiny_model, tmp_path_factory):
    """The tiny model's ONNX export, shared with the other export test files (same path, built once)."""
    from icv_deploy.export.onnx_export import export_onnx

    out = tmp_path_factory.getbasetemp() / "icv-onnx-tiny"
    if not (out / "manifest.json").exists():
        export_onnx(tiny_model, out, log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def torch_ref(tiny_model):
    return load_backend(tiny_model, "torch")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == torch.float32
    return ((a - b).abs().max() / b.abs().max()).item()


def _four_calls(backend, ref, seed: int = 0) -> dict[str, float]:
    """Relative error of each call at shapes the export never saw: batch 3, non-square, odd latent sides."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 49408, (3, 77), generator=g)
    pixels = torch.rand(1, 3, 38, 50, generator=g) * 2 - 1
    sample, text = torch.randn(3, 8, 19, 25, generator=g), torch.randn(3, 77, 32, generator=g)
    t = torch.tensor(988.9, dtype=torch.float64).expand(3)  # fractional, float64, expanded: as samplers pass it
    latents = torch.randn(2, 4, 19, 25, generator=g)
    return {
        "text_encoder": _rel(backend.encode_text(ids), ref.encode_text(ids)),
        "vae_encoder": _rel(backend.encode_image(pixels), ref.encode_image(pixels)),
        "unet": _rel(backend.predict_noise(sample, t, text), ref.predict_noise(sample, t, text)),
        "vae_decoder": _rel(backend.decode_latents(latents), ref.decode_latents(latents)),
    }


def _has_bf16() -> bool:
    return "BF16" in ovb.cpu_capabilities(ovb.import_openvino().Core())


# ---- parity with torch fp32 --------------------------------------------------------------------------------------
def test_f32_matches_torch_on_the_four_calls(onnx_tiny, torch_ref):
    backend = load_backend(onnx_tiny, "openvino", dtype="fp32")
    assert backend.info == torch_ref.info and backend.precision == "f32" and backend.kind == "onnx"
    errors = _four_calls(backend, torch_ref)
    assert max(errors.values()) < F32_BOUND, errors


@pytest.mark.slow
def test_f32_pipeline_paints_what_torch_paints(onnx_tiny, tiny_model, scene_image):
    import icv_deploy

    kwargs = dict(steps=3, seed=5, resolution=64)
    ref = icv_deploy.load(tiny_model, engine="torch").run_many(scene_image, ["Segment the cat", "Detect the dog"], **kwargs)
    got = icv_deploy.load(onnx_tiny, engine="openvino", dtype="fp32").run_many(
        scene_image, ["Segment the cat", "Detect the dog"], **kwargs)
    for a, b in zip(got, ref):
        assert a.settings["engine"] == "openvino" and a.visual.shape == b.visual.shape
        assert np.abs(a.visual.astype(int) - b.visual.astype(int)).max() <= 1


def test_serve_replica_runs_the_openvino_engine(onnx_tiny, scene_image):
    """icv-serve --engine openvino: the model replica (outside Ray) answers as the openvino pipeline does, with the
    replica's CPUs as OpenVINO's inference threads."""
    pytest.importorskip("ray.serve", reason="icv-serve needs the serve extra")
    import icv_deploy
    from icv_deploy.result import png_bytes
    from icv_deploy.serve.app import InstructCVModel
    from icv_deploy.serve.form import Job

    replica = InstructCVModel({"model": str(onnx_tiny), "engine": "openvino", "dtype": "fp32", "threads": 1})
    assert replica.pipe.backend.name == "openvino" and replica.pipe.backend.config["INFERENCE_NUM_THREADS"] == 1
    job = Job(image=png_bytes(scene_image), instructions=["Segment the cat"], steps=2, seed=3, resolution=64,
              pictures=True)
    reply = replica.run_batch([job])[0]["results"][0]
    ref = icv_deploy.load(onnx_tiny, engine="openvino", dtype="fp32").run_many(
        scene_image, ["Segment the cat"], steps=2, seed=3, resolution=64)[0]
    painted = np.asarray(Image.open(io.BytesIO(base64.b64decode(reply["pictures"]["visual"]))))
    assert reply["engine"] == "openvino" and np.array_equal(painted, ref.visual)


@pytest.mark.slow
def test_bf16_answers_within_the_stated_bound(onnx_tiny, tiny_model, torch_ref, scene_image):
    if not _has_bf16():
        pytest.skip("this CPU has no bf16 support: the backend runs f32 (see the fallback test)")
    import icv_deploy

    pipe = icv_deploy.load(onnx_tiny, engine="openvino")  # no dtype: bf16 by default on this CPU
    assert pipe.backend.precision == "bf16"
    errors = _four_calls(pipe.backend, torch_ref, seed=1)
    assert max(errors.values()) < BF16_BOUND, errors
    assert max(errors.values()) > 1e-4, "bf16 should differ from fp32 by more than rounding: is the hint applied?"
    # Guidance 1/1: on random weights the three guidance branches barely differ, and s_T = 7.5 would multiply each
    # branch's rounding by 7.5; that is the model's sensitivity, not bf16's. The demo model's figures come from icv-eval.
    kwargs = dict(steps=3, seed=5, resolution=64, guidance_scale=1.0, image_guidance_scale=1.0)
    ref = icv_deploy.load(tiny_model, engine="torch")(scene_image, "Create a monocular depth map", **kwargs)
    got = pipe(scene_image, "Create a monocular depth map", **kwargs)
    diff = np.abs(got.visual.astype(int) - ref.visual.astype(int))
    assert diff.mean() <= 8, (diff.mean(), diff.max())
    assert np.abs(got.depth - ref.depth).mean() <= 8 / 255 * 10  # metres: depth = grey / 255 * 10


# ---- precision choice ------------------------------------------------------------------------------------------
def test_cpu_without_bf16_gets_f32_and_says_why_in_debug(onnx_tiny, monkeypatch, caplog):
    monkeypatch.setattr(ovb, "cpu_capabilities", lambda core: ["FP32", "INT8", "EXPORT_IMPORT"])
    with caplog.at_level(logging.DEBUG, logger="icv_deploy"):
        backend = load_backend(onnx_tiny, "openvino")
    assert backend.inference_precision == backend.precision == "f32"
    assert "no bf16 support" in backend.precision_reason
    assert any(r.levelno == logging.DEBUG and "no bf16 support" in r.getMessage() for r in caplog.records)
    compiled = backend.compiled_model("text_encoder", {"input_ids": (1, 77)})
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="icv_deploy"):
        assert load_backend(onnx_tiny, "openvino", dtype="bf16").precision == "f32"  # asked for: a warning
    assert any(r.levelno == logging.WARNING and "no bf16 support" in r.getMessage() for r in caplog.records)


def test_precision_reason_in_icv_infer_debug_output(onnx_tiny, monkeypatch, tmp_path):
    from icv_deploy.cli import main

    monkeypatch.setattr(ovb, "cpu_capabilities", lambda core: ["FP32"])
    args = [str(EXAMPLE), "Segment the red ball", "--model", str(onnx_tiny), "--engine", "openvino", "--steps", "1",
            "--resolution", "32", "--output", str(tmp_path), "--quiet", "--debug"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "openvino: this CPU has no bf16 support" in result.output
    quiet = CliRunner().invoke(main, args[:-1])
    assert quiet.exit_code == 0 and "bf16" not in quiet.output  # silent without --debug


def test_choose_precision_rules():
    assert ovb.choose_precision(None, "bf16", ["BF16", "FP32"])[0] == "bf16"
    assert ovb.choose_precision(None, "f32", ["BF16", "FP32"])[0] == "f32"  # an f32 folder stays f32
    assert ovb.choose_precision("f32", "bf16", ["BF16"])[0] == "f32"
    assert ovb.choose_precision("bf16", "f32", ["FP32"])[0] == "f32"


def test_bad_options_are_refused(onnx_tiny):
    with pytest.raises(IcvError, match="runs fp32 or bf16"):
        load_backend(onnx_tiny, "openvino", dtype="fp16")
    with pytest.raises(ModelFilesError, match="not an int8 folder"):
        load_backend(onnx_tiny, "openvino", dtype="int8")
    with pytest.raises(IcvError, match="runs on the CPU"):
        load_backend(onnx_tiny, "openvino", device="cuda")
    with pytest.raises(ModelFilesError, match="vae=tiny was asked for"):
        load_backend(onnx_tiny, "openvino", vae="tiny")


# ---- shapes and the model cache --------------------------------------------------------------------------------
def test_static_shapes_compile_once_per_shape(onnx_tiny, torch_ref, model_cache, tmp_path, monkeypatch):
    """Without a model cache (models reshaped in memory, nothing written; the other tests compile from files)."""
    monkeypatch.chdir(tmp_path)
    cached_before = sorted(model_cache.rglob("*")) if model_cache.exists() else []
    backend = load_backend(onnx_tiny, "openvino", dtype="fp32", max_compiled=2, cache_dir=None)
    g = torch.Generator().manual_seed(4)
    text = torch.randn(3, 77, 32, generator=g)
    t = torch.full((3,), 500.0)
    samples = [torch.randn(3, 8, h, w, generator=g) for h, w in ((8, 8), (12, 16), (8, 8), (6, 10))]
    for s in samples:  # a new shape after the first must not disturb the first's compiled model
        assert _rel(backend.predict_noise(s, t, text), torch_ref.predict_noise(s, t, text)) < F32_BOUND
    shapes = [dict(key)["sample"] for key in backend.compiled["unet"]]
    assert shapes == [(3, 8, 8, 8), (3, 8, 6, 10)]  # at most 2 kept, least recently used dropped
    assert not any(tmp_path.iterdir())
    assert (sorted(model_cache.rglob("*")) if model_cache.exists() else []) == cached_before


def test_model_cache_is_populated_then_reused(onnx_tiny, tmp_path):
    cache = tmp_path / "cache"
    x = {"input_ids": (2, 77)}
    first = load_backend(onnx_tiny, "openvino", dtype="fp32", cache_dir=cache)
    assert first.cache_dir == cache / "f32"
    assert not first.compiled_model("text_encoder", x).get_property("LOADED_FROM_CACHE")
    blobs = sorted(p.name for p in (cache / "f32").iterdir())
    assert any(name.endswith(".blob") for name in blobs), "compiling wrote nothing to the model cache"
    # The static shape was written once as its own IR, compiled from that file (so OpenVINO maps the cached blob).
    [static] = (cache / "f32" / "static-ir").iterdir()
    assert static.name.startswith("text_encoder-") and static.name.endswith("-2x77")
    written = {p.name: p.stat().st_mtime_ns for p in static.iterdir()}
    assert set(written) == {"openvino_model.xml", "openvino_model.bin"}
    second = load_backend(onnx_tiny, "openvino", dtype="fp32", cache_dir=cache)  # a new OpenVINO Core: a new start
    assert second.compiled_model("text_encoder", x).get_property("LOADED_FROM_CACHE")
    assert sorted(p.name for p in (cache / "f32").iterdir()) == blobs
    assert {p.name: p.stat().st_mtime_ns for p in static.iterdir()} == written  # reused, not rewritten
    ids = torch.randint(0, 49408, (2, 77), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(second.encode_text(ids), first.encode_text(ids))
    if _has_bf16():  # OpenVINO's cache key ignores the precision hint: bf16 must not load the f32 blob
        bf16 = load_backend(onnx_tiny, "openvino", dtype="bf16", cache_dir=cache)
        assert not bf16.compiled_model("text_encoder", x).get_property("LOADED_FROM_CACHE")
        out = bf16.encode_text(ids)
        assert torch.isfinite(out).all() and 1e-4 < _rel(out, first.encode_text(ids)) < BF16_BOUND


# ---- IR export -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def ir_folders(onnx_tiny, tmp_path_factory):
    from icv_deploy.export.openvino_export import export_openvino

    base = tmp_path_factory.mktemp("ir")
    return {p: (export_openvino(onnx_tiny, base / p, precision=p, log=lambda *_: None), base / p) for p in ("f32", "bf16")}


def test_ir_round_trip_onnx_to_ir_to_load(ir_folders, onnx_tiny, torch_ref):
    source = json.loads((onnx_tiny / "manifest.json").read_text())
    for precision, (manifest, folder) in ir_folders.items():
        assert manifest["format"] == ovb.FORMAT and manifest["precision"] == precision
        assert manifest["source_hash"] == source["source_hash"] and manifest["vae"] == source["vae"]
        assert (folder / "icv_config.json").read_bytes() == (onnx_tiny / "icv_config.json").read_bytes()
        assert {f["path"] for f in manifest["copied_files"]} == {"model_index.json", "icv_config.json"}
        assert not list(folder.glob(".*")), "no temporary or state files left behind"
        for name in ovb.SUBMODEL_NAMES:
            entry = manifest["submodels"][name]
            assert entry["path"] == f"{name}/openvino_model.xml" and (folder / name / "config.json").is_file()
            assert entry["inputs"] == source["submodels"][name]["inputs"]
            assert entry["weights_dtype"] == ("f32" if precision == "f32" else "f16")
        backend = load_backend(folder, "openvino", dtype="fp32")
        assert backend.kind == "ir" and backend.manifest["precision"] == precision
        bound = F32_BOUND if precision == "f32" else 5e-3  # f16 weights on disk: about 3 significant digits
        errors = _four_calls(backend, torch_ref)
        assert max(errors.values()) < bound, (precision, errors)
    assert load_backend(ir_folders["f32"][1], "openvino").precision == "f32"  # an f32 folder runs f32 by default
    if _has_bf16():
        assert load_backend(ir_folders["bf16"][1], "openvino").precision == "bf16"


def test_check_command_reads_ir_folders(ir_folders):
    from icv_deploy.export.cli import main

    result = CliRunner().invoke(main, ["check", str(ir_folders["bf16"][1])])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["format"] == ovb.FORMAT and report["precision"] == "bf16" and report["ok"]


def test_bad_ir_folder_is_a_one_line_error(ir_folders, tiny_model, tmp_path):
    from icv_deploy.cli import main

    folder = tmp_path / "ir"
    shutil.copytree(ir_folders["f32"][1], folder)
    weights = folder / "unet" / "openvino_model.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    for model, expected in ((folder, "openvino_model.bin"), (tiny_model, "no manifest.json")):
        result = CliRunner().invoke(main, [str(EXAMPLE), "Segment the red ball", "--model", str(model),
                                           "--engine", "openvino", "--output", str(tmp_path / "out")])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], result.output


def test_unreadable_model_behind_a_matching_manifest_is_refused(ir_folders, tmp_path):
    folder = tmp_path / "ir"
    shutil.copytree(ir_folders["f32"][1], folder)
    xml = folder / "vae_decoder" / "openvino_model.xml"
    xml.write_text("<net>not a model</net>")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["submodels"]["vae_decoder"]["bytes"] = xml.stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFilesError, match="OpenVINO cannot read it"):
        load_backend(folder, "openvino")
    manifest["format_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFilesError, match="format version 99"):
        load_backend(folder, "openvino")


def test_export_cli_refuses_a_folder_that_is_not_an_onnx_export(tiny_model, tmp_path):
    from icv_deploy.export.cli import main

    result = CliRunner().invoke(main, ["openvino", "--onnx", str(tiny_model), "--output", str(tmp_path / "ir")])
    assert result.exit_code == 2 and result.output.startswith("error:") and "manifest.json" in result.output
    assert not (tmp_path / "ir").exists()


# ---- int8 --------------------------------------------------------------------------------------------------------
def test_calibration_records_the_pipelines_own_unet_inputs(onnx_tiny):
    import icv_deploy
    from icv_deploy.export.calibration import record_unet_inputs
    from icv_deploy.images import load_image, resize, working_size

    instructions = ["Segment the red ball", "Create a monocular depth map"]
    items = record_unet_inputs(onnx_tiny, [EXAMPLE], instructions, steps=2, seeds=(0,), resolution=32, log=lambda *_: None)
    assert len(items) == 1 * 2 * 1 * 2  # images x instructions x seeds x steps
    pipe = icv_deploy.load(onnx_tiny, engine="openvino", dtype="fp32")
    image = load_image(EXAMPLE)
    z = pipe.encode_image(resize(image, working_size(*image.shape[:2], 32, pipe.backend.info.vae_scale_factor))).numpy()
    for item in items:
        assert item["sample"].shape[0] == 3 and item["timestep"].shape == (3,)
        np.testing.assert_allclose(item["sample"][:2, 4:], np.concatenate([z, z]), atol=1e-5)  # [z, z, 0]: docs/DESIGN.md 4
        assert not item["sample"][2, 4:].any()
        np.testing.assert_array_equal(item["sample"][0, :4], item["sample"][2, :4])  # one x_t, three times
    assert items[0]["timestep"][0] > items[1]["timestep"][0]  # the sampler's schedule, noisiest first


@pytest.mark.slow
def test_int8_export_runs_loads_and_records_its_method(onnx_tiny, tmp_path):
    from icv_deploy.export.cli import main

    out = tmp_path / "int8"
    result = CliRunner().invoke(main, ["openvino", "--onnx", str(onnx_tiny), "--output", str(out), "--precision", "int8",
                                       "--calibration-image", str(EXAMPLE), "--calibration-steps", "2",
                                       "--calibration-resolution", "32"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    quant = manifest["quantization"]
    assert manifest["precision"] == "int8" and manifest["submodels"]["unet"]["weights_dtype"] == "int8"
    assert "NNCF post-training quantization" in quant["method"] and quant["model_type"] == "TRANSFORMER"
    assert quant["fake_quantize_nodes"] > 0 and quant["calibration"]["unet_calls"] == 1 * 4 * 2 * 2
    assert any("/conv_in/" in n for n in quant["kept_in_float"]) and any("/conv_out/" in n for n in quant["kept_in_float"])
    assert 0 < quant["unet_rel_l2_vs_f32_on_calibration_inputs"] < 0.5
    assert manifest["submodels"]["text_encoder"]["weights_dtype"] == "f16"

    backend = load_backend(out, "openvino", dtype="int8")
    assert backend.precision == "int8"
    reference = load_backend(onnx_tiny, "openvino", dtype="fp32")
    g = torch.Generator().manual_seed(2)
    sample, text, t = torch.randn(3, 8, 16, 16, generator=g), torch.randn(3, 77, 32, generator=g), torch.full((3,), 700.0)
    got, ref = backend.predict_noise(sample, t, text), reference.predict_noise(sample, t, text)
    assert torch.isfinite(got).all() and (torch.linalg.norm(got - ref) / torch.linalg.norm(ref)).item() < 0.5


# ---- the latency benchmark -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_latency_names_openvino_engines_by_precision(tiny_model, onnx_tiny, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import latency

    out = tmp_path / "bench.json"
    args = ["--model", str(tiny_model), "--onnx-model", str(onnx_tiny), "--engine", "torch,openvino,openvino-f32",
            "--device", "cpu", "--resolution", "32", "--steps", "1", "--repeats", "1", "--no-baseline",
            "--json", str(out), "--plot", str(tmp_path / "bench.png"), "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(latency.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    default = "openvino-bf16" if _has_bf16() else "openvino-f32"
    expected = ["torch", default, "openvino-f32"] if default != "openvino-f32" else ["torch", "openvino-f32"]
    assert [e["engine"] for e in doc["engines"]] == expected  # "openvino" named by what it runs, duplicates dropped
    for e in doc["engines"][1:]:
        assert e["options"]["precision"] == e["engine"].split("-")[1] and e["unet_step_ms"] > 0
    assert "openvino" in doc["machine"] and isinstance(doc["machine"]["cpu_flags"], list)


def test_memory_benchmark_measures_each_folder_in_its_own_process(ir_folders, onnx_tiny, tmp_path):
    """benchmarks/openvino_memory.py: one row per folder, a peak that covers a loaded pipeline (more than the bare
    interpreter) and the figures in its JSON."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from openvino_memory import main as memory_main

    out = tmp_path / "memory.json"
    result = CliRunner().invoke(memory_main, ["--model", str(onnx_tiny), "--model", str(ir_folders["bf16"][1]),
                                              "--steps", "2", "--resolution", "64", "--json", str(out)])
    assert result.exit_code == 0, result.output
    runs = json.loads(out.read_text())["runs"]
    assert [r["model"] for r in runs] == [str(onnx_tiny), str(ir_folders["bf16"][1])]
    assert all(r["peak_rss_mb"] > 150 and r["first_call_s"] > 0 for r in runs)  # torch + OpenVINO loaded, a call made
    assert result.output.count("peak RSS") == 2
