"""Full-size export benchmark: the SD 1.5 InstructPix2Pix architecture (random weights) to ONNX on this machine.

Measures export time per submodel, peak memory (this process, sampled), file sizes, the verification errors,
and one UNet step (batch 3 = the guidance batch, 256 px image -> 32x32 latents) in ONNX Runtime versus PyTorch
eager, each loaded alone so that their memory does not add up.

    python benchmarks/export_sd15.py --work /tmp/sd15-bench [--model existing_sd15_folder] [--json out.json]
"""

from __future__ import annotations

import gc
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import click
import psutil
import torch


class PeakMemory:
    """Peak resident memory of this process, sampled every 50 ms in a thread (gigabytes)."""

    def __init__(self):
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.05)

    def __enter__(self):
        self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._stop.clear()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def gb(self) -> float:
        return round(self.peak / 1e9, 2)


def time_calls(fn, repeats: int) -> list[float]:
    fn()  # warm-up: ONNX Runtime and PyTorch both allocate and pick kernels on the first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def unet_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 8, 32, 32, generator=g), torch.full((3,), 988.9), torch.randn(3, 77, 768, generator=g)


@click.command()
@click.option("--work", type=click.Path(path_type=Path), required=True, help="Scratch folder (needs ~8 GB).")
@click.option("--model", type=click.Path(path_type=Path), default=None, help="An existing SD 1.5-size folder to reuse.")
@click.option("--repeats", default=3, show_default=True, help="Timed UNet steps per engine (after one warm-up).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the figures here.")
def main(work: Path, model: Path | None, repeats: int, json_out: Path | None):
    from tqdm.auto import tqdm

    from icv_deploy.export.onnx_export import export_onnx
    from icv_deploy.testing import make_sd15_model

    work.mkdir(parents=True, exist_ok=True)
    import os

    # Shared CI machines: record the load, and CPU seconds next to wall seconds (robust to other jobs).
    figures = {"machine": _machine(), "torch_threads": torch.get_num_threads(), "load_average_start": os.getloadavg()}
    cpu_start = sum(psutil.Process().cpu_times()[:2])
    if model is None:
        model = work / "sd15"
        if not (model / "model_index.json").exists():
            start = time.perf_counter()
            make_sd15_model(model)
            figures["make_model_s"] = round(time.perf_counter() - start, 1)
    onnx_dir = work / "onnx"

    with PeakMemory() as mem:
        start = time.perf_counter()
        manifest = export_onnx(model, onnx_dir, progress=tqdm, log=lambda m: tqdm.write(m))
        figures["export_s"] = round(time.perf_counter() - start, 1)
    figures["export_cpu_s"] = round(sum(psutil.Process().cpu_times()[:2]) - cpu_start, 1)
    figures["export_peak_rss_gb"] = mem.gb
    figures["submodels"] = {
        name: {
            "export_s": e["export_seconds"],
            "max_rel_error": e["max_rel_error"],
            "graph_mb": round(e["bytes"] / 1e6, 1),
            "external_data_mb": round(e["external_data"]["bytes"] / 1e6, 1) if e["external_data"] else None,
        }
        for name, e in manifest["submodels"].items()
    }
    gc.collect()

    # One UNet step in ONNX Runtime (the session alone in memory) ...
    import onnxruntime as ort

    sample, timestep, text = unet_inputs()
    feeds = {"sample": sample.numpy(), "timestep": timestep.numpy(), "encoder_hidden_states": text.numpy()}
    with PeakMemory() as mem:
        start = time.perf_counter()
        session = ort.InferenceSession(str(onnx_dir / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
        figures["ort_session_s"] = round(time.perf_counter() - start, 1)
        ort_times = time_calls(lambda: session.run(None, feeds), repeats)
        ort_out = session.run(None, feeds)[0]
    figures["ort_unet_peak_rss_gb"] = mem.gb
    del session
    gc.collect()

    # ... and in PyTorch eager (the backend's own loading: fp32, SDPA attention).
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    with PeakMemory() as mem:
        unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=torch.float32).eval()
        unet.set_attn_processor(AttnProcessor2_0())
        with torch.inference_mode():
            torch_times = time_calls(lambda: unet(sample, timestep, text, return_dict=False), repeats)
            torch_out = unet(sample, timestep, text, return_dict=False)[0].numpy()
    figures["torch_unet_peak_rss_gb"] = mem.gb
    del unet
    gc.collect()

    import numpy as np

    figures["unet_step_b3_32x32"] = {
        "ort_s_median": round(statistics.median(ort_times), 2),
        "torch_eager_s_median": round(statistics.median(torch_times), 2),
        "ort_vs_torch_max_rel_error": float(np.abs(ort_out - torch_out).max() / np.abs(torch_out).max()),
        "repeats": repeats,
    }
    figures["load_average_end"] = os.getloadavg()
    text_out = json.dumps(figures, indent=2)
    print(text_out)
    if json_out:
        json_out.write_text(text_out + "\n")


def _machine() -> str:
    name = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {psutil.cpu_count()} CPUs, {round(psutil.virtual_memory().total / 2**30)} GiB, Python {sys.version.split()[0]}"


if __name__ == "__main__":
    main()
