"""benchmarks/latency.py and its helpers: the arithmetic, ORT tuning, the K-instruction batch, the JSON it writes.

No timing is asserted (timings are benchmarks, not tests); what is checked is what the numbers are computed
from and what the outputs contain.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_baseline import linear_extrapolation  # noqa: E402
from bench_stages import Timing, outside_unet_fraction, stub_predict_noise  # noqa: E402

from icv_deploy.backends import ort_tuning  # noqa: E402


def test_linear_extrapolation_matches_a_least_squares_line():
    points = {2: 13_400.0, 4: 21_950.0}
    at_100, fixed, per_step = linear_extrapolation(points)
    slope, intercept = np.polyfit(list(points), list(points.values()), 1)
    assert at_100 == pytest.approx(np.polyval([slope, intercept], 100))
    assert (fixed, per_step) == (pytest.approx(intercept), pytest.approx(slope))
    with pytest.raises(ValueError):
        linear_extrapolation({4: 1.0})


def test_timing_summary_and_outside_unet_share():
    samples = [12.0, 10.0, 30.0, 11.0]
    t = Timing(samples)
    assert t.median == statistics.median(samples) and t.spread == (30.0 - 10.0) / 2
    medians = {"text": 1.0, "vae_encoder": 2.0, "sampler": 0.5, "vae_decoder": 4.0, "postprocess": 0.5, "unet_step": 10.0}
    assert outside_unet_fraction(medians, 4) == pytest.approx(8.0 / 48.0)


def relu_graph(path: Path) -> Path:
    import onnx
    import onnx.helper as h

    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3, "height", "width"])
    t = h.make_tensor_value_info("t", onnx.TensorProto.FLOAT, ["batch"])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3, "height", "width"])
    graph = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g", [x, t], [y])
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), path)
    return path


def test_static_dims_read_from_the_graph_and_pinned_in_the_session(tmp_path):
    import onnxruntime as ort

    path = relu_graph(tmp_path / "relu.onnx")
    dims = ort_tuning.static_dims(path, {"x": (2, 3, 5, 7), "t": (2,)})
    assert dims == {"batch": 2, "height": 5, "width": 7}
    for bad in ({"x": (2, 4, 5, 7)}, {"x": (2, 3, 5)}, {"x": (2, 3, 5, 7), "t": (3,)}, {"nope": (1,)}):
        with pytest.raises(ValueError):
            ort_tuning.static_dims(path, bad)
    so = ort_tuning.session_options("unet", "cpu", static_dims=dims, threads=1)
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 3, 5, 7]
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x, "t": np.zeros(2, np.float32)})[0], np.maximum(x, 0))
    with pytest.raises(Exception, match="dimensions"):
        session.run(None, {"x": x[:1], "t": np.zeros(1, np.float32)})


def test_stub_predict_noise_is_removed_afterwards(tiny_model):
    from icv_deploy.backends.torch_backend import TorchBackend

    backend = TorchBackend.from_folder(tiny_model, "cpu", "fp32")
    sample = torch.randn(3, 8, 8, 8)
    with stub_predict_noise(backend):
        assert torch.count_nonzero(backend.predict_noise(sample, torch.ones(3), None)) == 0
    assert "predict_noise" not in vars(backend)


def test_roofline_flop_count_matches_the_counter_on_explicit_attention(tiny_model):
    """unet_roofline tallies SDPA's matmuls itself; with diffusers' classic processor (baddbmm + bmm) PyTorch's own
    FlopCounterMode sees them: both totals must agree."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    from ort_unet_sweep import load_torch_unet, unet_inputs
    from torch.utils.flop_counter import FlopCounterMode
    from unet_roofline import count_flops

    width = json.loads((tiny_model / "text_encoder" / "config.json").read_text())["hidden_size"]
    counted = count_flops(load_torch_unet(tiny_model), batch=3, latent=16, width=width)["by_op_flops"]
    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet").eval()
    unet.set_attn_processor(AttnProcessor())
    feeds = {k: torch.from_numpy(v) for k, v in unet_inputs(3, 16, text_width=width).items()}
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(feeds["sample"], feeds["timestep"], encoder_hidden_states=feeds["encoder_hidden_states"])
    reference = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    assert counted["attention (SDPA)"] > 0
    assert counted["attention (SDPA)"] == reference["aten.baddbmm"] + reference["aten.bmm"]
    assert sum(counted.values()) == counter.get_total_flops()


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model, tmp_path_factory):
    from icv_deploy.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    export_onnx(tiny_model, out, check=False, log=lambda s: None)
    return out


@pytest.mark.slow
def test_tuned_static_onnx_backend_matches_the_torch_unet(tiny_model, tiny_onnx):
    from bench_ort import tuned_onnx_backend

    from icv_deploy.backends.torch_backend import TorchBackend

    reference = TorchBackend.from_folder(tiny_model, "cpu", "fp32")
    tuned = tuned_onnx_backend(tiny_onnx, "cpu", batch_instructions=2, height=32, width=32, threads=1)
    assert tuned.static_dims["unet"]["batch"] == 6 and tuned.static_dims["text_encoder"] is None
    g = torch.Generator().manual_seed(3)
    sample, t = torch.randn(6, 8, 16, 16, generator=g), torch.full((6,), 981.5)
    text = torch.randn(6, 77, reference.info.text_hidden_size, generator=g)
    torch.testing.assert_close(tuned.predict_noise(sample, t, text), reference.predict_noise(sample, t, text), rtol=1e-3, atol=1e-4)
    latents = torch.randn(2, 4, 16, 16, generator=g)
    torch.testing.assert_close(tuned.decode_latents(latents), reference.decode_latents(latents), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_k_instructions_run_as_one_unet_batch_of_3k(tiny_model):
    """measure_pipeline with K = 2: every UNet call sees 6 rows, and each answer equals its own K = 1 call."""
    from bench_stages import measure_pipeline

    import icv_deploy

    pipe = icv_deploy.load(tiny_model)
    pipe.progress = False
    batches = []
    predict = pipe.backend.predict_noise

    def recording(sample, t, text):
        batches.append(sample.shape[0])
        return predict(sample, t, text)

    pipe.backend.predict_noise = recording
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    instructions = ["Segment the cat", "Create a monocular depth map"]
    measured = measure_pipeline(pipe, image, instructions, steps=2, sampler="euler", repeats=1, resolution=32)
    assert batches and set(batches) == {6}
    assert measured["latent_shape"] == [2, 4, 16, 16]
    for instruction, batched in zip(instructions, measured["results"]):
        alone = pipe(image, instruction, steps=2, sampler="euler", resolution=32)
        np.testing.assert_allclose(batched.visual.astype(int), alone.visual.astype(int), atol=1)


@pytest.mark.slow
def test_latency_cli_writes_json_table_and_plot(tiny_model, tiny_onnx, tmp_path):
    from click.testing import CliRunner

    import latency

    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    args = ["--model", str(tiny_model), "--onnx-model", str(tiny_onnx), "--engine", "torch,onnx-tuned",
            "--device", "cpu", "--resolution", "32", "--steps", "2", "--sampler", "euler_a", "--repeats", "1",
            "--baseline-steps", "1,2", "--batch-instructions", "2", "--json", str(out), "--plot", str(plot)]
    result = CliRunner().invoke(latency.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["baseline_extrapolated"] is True
    b = doc["baseline"]
    two = b["timed_steps"]["2"]["median_ms"]
    one = b["timed_steps"]["1"]["median_ms"]
    # the stored medians are rounded to 0.001 ms and the line through them multiplies that by up to 100
    assert doc["baseline"]["baseline_ms"] == pytest.approx(one + 99 * (two - one), abs=0.2)
    assert doc["baseline_ms"] == round(doc["baseline"]["baseline_ms"], 1)
    assert [e["engine"] for e in doc["engines"]] == ["torch", "onnx-tuned"]
    for e in doc["engines"]:
        assert e["steps"] == 2 and e["latent_shape"] == [2, 4, 16, 16]
        assert e["unet_step_ms"] == pytest.approx(e["stages"]["unet_step"]["median_ms"], abs=0.01)
        assert e["speedup_vs_baseline"] == pytest.approx(doc["baseline_ms"] / e["end_to_end_ms"], rel=0.01)
        assert len(e["stages"]["end_to_end"]["samples_ms"]) == 1 and e["memory"]["peak_rss_mb"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "end to end" in result.output and "EXTRAPOLATED" in result.output


@pytest.mark.slow
def test_latency_cli_with_the_tiny_vae(taesd_model, onnx_taesd, tiny_model, tiny_onnx, tmp_path):
    """--vae tiny opens every engine with TAESD (the results say so) and refuses an ONNX folder exported without."""
    from click.testing import CliRunner

    import latency

    out = tmp_path / "bench.json"
    args = ["--model", str(taesd_model), "--onnx-model", str(onnx_taesd), "--engine", "torch,onnx,onnx-tuned",
            "--device", "cpu", "--resolution", "32", "--steps", "1", "--repeats", "1", "--no-baseline",
            "--vae", "tiny", "--json", str(out)]
    result = CliRunner().invoke(latency.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["settings"]["vae"] == "tiny" and doc["baseline_ms"] is None
    assert [(e["engine"], e["vae"]) for e in doc["engines"]] == [("torch", "tiny"), ("onnx", "tiny"), ("onnx-tuned", "tiny")]

    full_onnx = ["--model", str(tiny_model), "--onnx-model", str(tiny_onnx), "--engine", "onnx-tuned", "--device", "cpu",
                 "--resolution", "32", "--steps", "1", "--repeats", "1", "--no-baseline", "--vae", "tiny"]
    refused = CliRunner().invoke(latency.main, full_onnx)
    assert refused.exit_code == 2 and "--vae tiny" in refused.output and len(refused.output.strip().splitlines()) == 1


def test_latency_cli_refuses_unknown_engine(tmp_path):
    from click.testing import CliRunner

    import latency

    result = CliRunner().invoke(latency.main, ["--engine", "torch,tensorflow", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2 and "unknown engine" in result.output


@pytest.mark.slow
def test_gpu_check_script_runs_every_phase_in_smoke_mode(taesd_model, tmp_path):
    """The GPU check gets one run per GPU session: its smoke mode runs every phase on the CPU here, so the
    script's own plumbing (parity table, latency arguments, JSON, exit status) is not first tried on a GPU."""
    import gpu_check

    out = tmp_path / "out"
    code = gpu_check.main(["--out", str(out), "--device", "cpu", "--smoke", str(taesd_model),
                           "--cache-dir", str(tmp_path / "cache")])
    report = json.loads((out / "gpu_check.json").read_text())
    assert code == 0, report
    assert report["device"] == "cpu" and report["gpu"] is None
    assert set(report["parity"]) == {"fp32", "fp32_fast", "fp32_fast_k2", "diffusers_fp32"}  # fp16 is CUDA-only
    for name, entry in report["parity"].items():
        assert entry["ok"] and 0 <= entry["max_abs_diff_vs_cpu_fp32"] <= gpu_check.TOLERANCES[name], (name, entry)
    latency = json.loads((out / "latency_gpu.json").read_text())
    assert [e["engine"] for e in latency["engines"]] == ["torch", "torch-fast"] and latency["baseline_extrapolated"]
    assert (out / "latency_gpu.png").read_bytes()[:4] == b"\x89PNG"
    tiny_vae = json.loads((out / "latency_gpu_tiny_vae.json").read_text())
    assert [(e["engine"], e["vae"]) for e in tiny_vae["engines"]] == [("torch-fast", "tiny")]
    k4 = json.loads((out / "latency_gpu_k4.json").read_text())
    assert k4["settings"]["batch_instructions"] == 4 and k4["engines"][0]["latent_shape"][0] == 4

    # What only a GPU run prints: each engine's ratio to the paper's 5 s on an A100, naming the GPU.
    from rich.console import Console

    from bench_baseline import PAPER_A100_MS
    from bench_report import add_relative_figures, print_table

    latency["machine"]["gpu"] = "NVIDIA H100 80GB HBM3"
    add_relative_figures(latency)
    console = Console(record=True, width=200)
    print_table(latency, console)
    text = console.export_text()
    for e in latency["engines"]:
        assert e["speedup_vs_paper_a100_5s"] == round(PAPER_A100_MS / e["end_to_end_ms"], 1)
        assert f"{e['engine']}: {e['end_to_end_ms']:.1f} ms on NVIDIA H100 80GB HBM3" in text


def test_gpu_check_parity_fails_loudly_beyond_its_tolerance(tmp_path, monkeypatch):
    """A parity run that differs from the CPU reference by more than its tolerance is reported as failed."""
    import gpu_check

    monkeypatch.setattr(gpu_check, "parity_runs", lambda model, image, device: {  # latents of a 64 px image, VAE factor 2
        "fp32": (gpu_check.INSTRUCTIONS[:1], lambda: torch.zeros(1, 4, 32, 32)),
        "fp16": (gpu_check.INSTRUCTIONS[:1], lambda: torch.zeros(1, 4, 8, 8))})
    result = gpu_check.parity(tmp_path, "cpu")
    assert result["fp32"]["ok"] is False and result["fp32"]["max_abs_diff_vs_cpu_fp32"] > gpu_check.TOLERANCES["fp32"]
    assert result["fp16"]["ok"] is False and "size of tensor" in result["fp16"]["error"]  # a run that breaks is a failure too
