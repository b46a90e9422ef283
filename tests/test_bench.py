"""benchmarks/latency.py and its helpers: the arithmetic, ORT tuning, the K-instruction batch, the JSON it writes.

No timing is asserted (timings are benchmarks, not tests); what is checked is what the numbers are computed
from and what the outputs contain.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_baseline import PAPER_STEPS, linear_extrapolation, measure_baseline  # noqa: E402
from bench_stages import Timing, interleaved_rounds, outside_unet_fraction, paired_ratio, stub_predict_noise  # noqa: E402

from icv_deploy.backends import ort_tuning  # noqa: E402


def test_linear_extrapolation_matches_a_least_squares_line():
    points = {2: 13_400.0, 4: 21_950.0}
    at_100, fixed, per_step = linear_extrapolation(points)
    slope, intercept = np.polyfit(list(points), list(points.values()), 1)
    assert at_100 == pytest.approx(np.polyval([slope, intercept], 100))
    assert (fixed, per_step) == (pytest.approx(intercept), pytest.approx(slope))
    with pytest.raises(ValueError):
        linear_extrapolation({4: 1.0})


def test_outside_unet_share():
    # 8 ms outside the UNet against 4 steps of 10 ms: 8 / 48 of the call
    medians = {"text": 1.0, "vae_encoder": 2.0, "sampler": 0.5, "vae_decoder": 4.0, "postprocess": 0.5, "unet_step": 10.0}
    assert outside_unet_fraction(medians, 4) == pytest.approx(8.0 / 48.0)


class LoadedClock:
    """A fake clock for timing fakes: a call of cost c advances it by c times the machine's load at that moment."""

    def __init__(self, load):
        self.now, self.calls, self.load = 0.0, [], load

    def __call__(self):
        return self.now

    def work(self, name, cost_ms):
        def run():
            self.calls.append(name)
            self.now += cost_ms / 1000 * self.load(self.now, len(self.calls))
            return name
        return run


def test_rounds_interleave_engines_so_drifting_load_cannot_favour_one():
    """B is twice as fast as A. The load doubles over the run, and one call of A is hit by a burst: A and B still
    alternate call by call, and the median of the per-round ratios is 2 within the drift inside one round."""
    clock = LoadedClock(lambda now, n: (1 + now / 0.15) * (5 if n == 5 else 1))  # call 5 (A, third round): a burst
    timings, last = interleaved_rounds({"A": clock.work("A", 10), "B": clock.work("B", 5)}, repeats=5, clock=clock)
    assert clock.calls == ["A", "B"] * 5 and last == {"A": "A", "B": "B"}
    ratio = paired_ratio(timings["A"], timings["B"])
    assert ratio["pairs"] == 5 and ratio["median"] == pytest.approx(2.0, rel=0.1) and ratio["max"] > 4
    # timed one engine after the other, the same load would have made B look slower than A
    clock = LoadedClock(lambda now, n: 1 + now / 0.015)
    a, _ = interleaved_rounds({"A": clock.work("A", 10)}, repeats=5, clock=clock)
    b, _ = interleaved_rounds({"B": clock.work("B", 5)}, repeats=5, clock=clock)
    assert a["A"].median / b["B"].median < 1
    assert paired_ratio(Timing([1.0, 2.0]), Timing([1.0])) is None  # not from the same rounds: no pairs


def test_a_baseline_line_that_does_not_rise_is_measured_again_then_refused():
    def diffusers_call(per_attempt):
        """The baseline's call: attempt i (a pair of step counts per round, 2 rounds) costs per_attempt[i](steps) ms."""
        state = {"calls": 0}
        clock = LoadedClock(lambda now, n: 1.0)

        def call(steps):
            attempt = max(0, state["calls"] - 1) // 4  # one warm-up call, then 2 rounds x 2 counts per attempt
            state["calls"] += 1
            clock.work(steps, per_attempt[min(attempt, len(per_attempt) - 1)](steps))()
        return call, clock

    falling, rising = (lambda n: 40 - 5 * n), (lambda n: 10 + 5 * n)
    call, clock = diffusers_call([falling, rising])
    result = measure_baseline(call, (2, 4), repeats=2, clock=clock)
    points = np.polyfit([2, 4], [rising(2), rising(4)], 1)  # the second attempt's line
    assert result["baseline_ms"] == pytest.approx(np.polyval(points, PAPER_STEPS)) and result["refused"] is None
    assert result["per_step_ms"] == pytest.approx(5.0) and result["fixed_ms"] == pytest.approx(10.0)
    assert result["rejected_attempts"] == [{"2": 30.0, "4": 20.0}]

    negative_fixed = lambda n: -10 + 20 * n  # noqa: E731  rises, but a negative fixed part is noise, not a time
    call, clock = diffusers_call([falling, negative_fixed, falling])
    result = measure_baseline(call, (2, 4), repeats=2, clock=clock)
    assert result["baseline_ms"] is None and result["per_step_ms"] is None and len(result["rejected_attempts"]) == 3
    assert "does not rise with the steps in 3 attempts" in result["refused"] and "no time at 100 steps" in result["refused"]

    call, clock = diffusers_call([rising])  # 100 steps timed: nothing to extrapolate, nothing to refuse
    assert measure_baseline(call, (100,), repeats=2, clock=clock)["baseline_ms"] == pytest.approx(rising(100))


def test_a_refused_baseline_prints_no_time_and_no_speed_up():
    from rich.console import Console

    from bench_report import print_table

    stage = {"median_ms": 10.0, "spread_ms": 0.0, "samples_ms": [10.0]}
    doc = {"settings": {"model": "m", "device": "cpu", "dtype": "fp32", "resolution": 32, "steps": 2, "sampler": "euler",
                        "batch_instructions": 1, "repeats": 1},
           "machine": {}, "baseline_ms": None, "baseline_extrapolated": True,
           "baseline": {"baseline_ms": None, "refused": "the baseline's time does not rise with the steps"},
           "engines": [{"engine": "torch", "stages": {s: stage for s in
                                                     ("text", "vae_encoder", "unet_step", "sampler", "vae_decoder",
                                                      "postprocess", "end_to_end")},
                        "outside_unet_fraction": 0.5, "memory": {"peak_rss_mb": 1.0}, "speedup_vs_baseline": None}]}
    console = Console(record=True, width=200)
    print_table(doc, console)
    text = console.export_text()
    assert "baseline REFUSED: the baseline's time does not rise" in text and "speed-up vs baseline" not in text
    assert not re.search(r"-\d", text)  # no negative figure anywhere


def test_ratios_to_the_paper_say_what_differs():
    from bench_report import differences_from_paper

    paper = {"steps": 100, "sampler": "euler_a", "resolution": 256, "batch_instructions": 1}
    assert differences_from_paper(paper, "NVIDIA A100-SXM4-80GB") == []
    assert differences_from_paper({**paper, "steps": 10, "sampler": "dpmpp_2m", "resolution": 512, "batch_instructions": 4},
                                  "NVIDIA H200") == ["GPU NVIDIA H200 (paper: A100)", "10 dpmpp_2m steps (paper: 100 euler_a)",
                                                     "512 px (paper: 256 px)", "4 instructions per call (paper: 1)"]


@pytest.mark.parametrize("steps", ["50", "2,x", "0,4", "4,4"])
def test_latency_cli_refuses_baseline_steps_it_cannot_extrapolate_from(steps, tmp_path):
    from click.testing import CliRunner

    import latency

    result = CliRunner().invoke(latency.main, ["--baseline-steps", steps, "--cache-dir", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 2 and result.output.startswith("error: --baseline-steps")
    assert len(result.output.strip().splitlines()) == 1


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
            "--device", "cpu", "--resolution", "32", "--steps", "2", "--sampler", "euler_a", "--repeats", "2",
            "--baseline-steps", "1,10", "--batch-instructions", "2", "--json", str(out), "--plot", str(plot)]
    result = CliRunner().invoke(latency.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    b = doc["baseline"]
    assert doc["baseline_extrapolated"] is True and set(b["timed_steps"]) == {"1", "10"}
    if b["refused"] is None:  # a very busy machine may refuse the line; then nothing may be printed as a time
        assert b["per_step_ms"] > 0 and b["fixed_ms"] >= 0 and doc["baseline_ms"] > b["timed_steps"]["10"]["median_ms"]
        assert "EXTRAPOLATED" in result.output
    else:
        assert doc["baseline_ms"] is None and "REFUSED" in result.output
    assert [e["engine"] for e in doc["engines"]] == ["torch", "onnx-tuned"]
    torch_entry, onnx_entry = doc["engines"]
    for e in doc["engines"]:
        assert e["steps"] == 2 and e["latent_shape"] == [2, 4, 16, 16] and e["memory"]["peak_rss_mb"] > 0
        assert all(len(e["stages"][s]["samples_ms"]) == 2 for s in ("unet_step", "end_to_end", "postprocess"))
    # paired rounds: torch against itself is exactly 1 in every round; onnx-tuned has a ratio for each of the 2 rounds
    assert torch_entry["vs_torch_paired"]["unet_step"] == {"median": 1.0, "min": 1.0, "max": 1.0, "pairs": 2}
    assert onnx_entry["vs_torch_paired"]["end_to_end"]["pairs"] == 2 and onnx_entry["end_to_end_speedup_vs_torch"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "end to end" in result.output and "median of paired rounds" in result.output
    assert "2 interleaved rounds (torch onnx-tuned" in result.output


def test_latency_cli_times_the_one_pass_mode_against_the_same_baseline(tiny_model, tiny_onnx, tmp_path):
    """--one-pass: every engine runs one UNet call of batch K (onnx-tuned's static UNet session is pinned to K rows,
    so a guidance batch of 3K could not run), steps = 1, and the diffusers baseline is timed in the same run."""
    from click.testing import CliRunner

    import latency

    out = tmp_path / "one-pass.json"
    args = ["--model", str(tiny_model), "--onnx-model", str(tiny_onnx), "--engine", "torch,onnx-tuned", "--one-pass",
            "--device", "cpu", "--resolution", "32", "--repeats", "3", "--baseline-steps", "1,10",
            "--batch-instructions", "2", "--json", str(out)]
    result = CliRunner().invoke(latency.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["settings"]["one_pass"]["mode"] == "one_pass" and doc["settings"]["steps"] == 1
    # The baseline is timed in this run at the asked step counts (far apart, 3 rounds each, so that a line through
    # them rises). On a machine busy with other tests it may still be refused (bench_baseline): then it says so, and
    # no engine claims a speed-up over it; a refusal is not the one-pass mode's failure.
    assert doc["baseline"]["timed_steps"].keys() == {"1", "10"}
    refused = doc["baseline_ms"] is None
    assert refused == bool(doc["baseline"]["refused"]) and ("baseline REFUSED" in result.output) == refused
    for e in doc["engines"]:
        assert e["steps"] == 1 and e["options"]["one_pass"] == doc["settings"]["one_pass"] and e["latent_shape"] == [2, 4, 16, 16]
        expected = None if refused else pytest.approx(doc["baseline_ms"] / e["end_to_end_ms"], rel=0.01)
        assert e["speedup_vs_baseline"] == expected
    assert doc["engines"][1]["options"]["static_dims"]["unet"]["batch"] == 2
    assert "the one UNet pass (batch K)" in result.output


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
    console = Console(record=True, width=400)
    print_table(latency, console)
    text = console.export_text()
    for e in latency["engines"]:
        assert e["speedup_vs_paper_a100_5s"] == pytest.approx(PAPER_A100_MS / e["end_to_end_ms"], abs=0.05)
        assert f"{e['engine']}: {e['end_to_end_ms']:.1f} ms on NVIDIA H100 80GB HBM3" in text
        assert ("not like for like: GPU NVIDIA H100 80GB HBM3 (paper: A100); 2 dpmpp_2m steps (paper: 100 euler_a); "
                "32 px (paper: 256 px)") in text


def test_gpu_check_parity_fails_loudly_beyond_its_tolerance(tmp_path, monkeypatch):
    """A parity run that differs from the CPU reference by more than its tolerance is reported as failed."""
    import gpu_check

    monkeypatch.setattr(gpu_check, "parity_runs", lambda model, image, device: {  # latents of a 64 px image, VAE factor 2
        "fp32": (gpu_check.INSTRUCTIONS[:1], lambda: torch.zeros(1, 4, 32, 32)),
        "fp16": (gpu_check.INSTRUCTIONS[:1], lambda: torch.zeros(1, 4, 8, 8))})
    result = gpu_check.parity(tmp_path, "cpu")
    assert result["fp32"]["ok"] is False and result["fp32"]["max_abs_diff_vs_cpu_fp32"] > gpu_check.TOLERANCES["fp32"]
    assert result["fp16"]["ok"] is False and "size of tensor" in result["fp16"]["error"]  # a run that breaks is a failure too
