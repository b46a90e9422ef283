"""Turning measurements into the three outputs of latency.py: a JSON document, a rich table and a bar plot."""

from __future__ import annotations

import platform
import subprocess
import sys

from bench_baseline import PAPER_A100_MS, PAPER_STEPS
from bench_stages import STAGES, Timing, outside_unet_fraction, paired_ratio

PAPER_SETTING = {"gpu": "A100", "steps": PAPER_STEPS, "sampler": "euler_a", "resolution": 256, "batch_instructions": 1}

STAGE_LABELS = {
    "text": "tokenize + text encoder", "vae_encoder": "VAE encoder", "unet_step": "UNet step (batch 3K; K at guidance 1 / 1)",
    "sampler": "sampler overhead (whole call)", "vae_decoder": "VAE decoder", "postprocess": "postprocessing",
    "end_to_end": "end to end",
}


def machine_description(device: str) -> dict:
    import torch

    out = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
           "cpu": cpu_model(), "cpu_cores": _cores(), "torch_threads": torch.get_num_threads(),
           "load_average_at_start": load_average()}
    out["cpu_flags"] = cpu_flags()
    for name in ("diffusers", "transformers", "onnxruntime", "openvino"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    if str(device).startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
        out["cuda"] = torch.version.cuda
    return out


def save_report(out, stem: str, doc: dict, tables: str) -> None:
    """OUT/STEM.json (the figures, settings and machine) and OUT/STEM.md (the tables), each written atomically, and the
    tables printed: the output of the accuracy benchmarks (autoencoder_ceiling.py, answer_anatomy.py,
    recognition_probe.py)."""
    import click

    from icv_deploy.atomic import write_json, write_text

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{stem}.json", doc)
    write_text(out / f"{stem}.md", tables)
    click.echo(tables)


def cpu_flags() -> list[str]:
    """The CPU features that decide what bf16 and int8 can gain (AVX-512, its BF16 and VNNI parts, AMX)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages: on a shared machine they say how much the timings were disturbed."""
    import os

    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def engine_entry(engine: str, measured: dict, steps: int, baseline_ms: float | None, options: dict) -> dict:
    """One `engines` item of the JSON: the issue's required keys first, then the detail."""
    timings = measured["timings"]
    medians = {s: timings[s].median for s in STAGES}
    e2e = medians["end_to_end"]
    return {
        "engine": engine, "steps": steps, "unet_step_ms": round(medians["unet_step"], 2),
        "end_to_end_ms": round(e2e, 2),
        # The baseline runs before the engines (a pipeline of its own), so this is a ratio of medians, not of pairs.
        "speedup_vs_baseline": round(baseline_ms / e2e, 2) if baseline_ms else None,
        "outside_unet_fraction": round(outside_unet_fraction(medians, steps), 4),
        "stages": {s: timings[s].summary() for s in STAGES},
        "memory": measured["memory"], "latent_shape": measured["latent_shape"], "options": options,
        "vae": measured["results"][0].settings.get("vae") if measured["results"] else None,  # what the backend used
    }


def differences_from_paper(settings: dict, gpu: str) -> list[str]:
    """What a run does differently from the paper's 5 s figure (A100, 100 Euler-ancestral steps, 256 px, one
    instruction per call): a ratio to that figure means little without them."""
    differs = []
    if "A100" not in gpu:
        differs.append(f"GPU {gpu} (paper: A100)")
    if (settings["steps"], settings["sampler"]) != (PAPER_SETTING["steps"], PAPER_SETTING["sampler"]):
        differs.append(f"{settings['steps']} {settings['sampler']} steps (paper: {PAPER_STEPS} euler_a)")
    if settings["resolution"] != PAPER_SETTING["resolution"]:
        differs.append(f"{settings['resolution']} px (paper: 256 px)")
    if settings.get("batch_instructions", 1) != 1:
        differs.append(f"{settings['batch_instructions']} instructions per call (paper: 1)")
    return differs


def _samples(entry: dict, stage: str) -> Timing:
    return Timing(list(entry["stages"][stage]["samples_ms"]))


def add_relative_figures(doc: dict) -> None:
    """Each engine against torch eager, as the median of per-round ratios (the engines ran in interleaved rounds),
    and, on a GPU, the ratio to the paper's 5 s on an A100 with what differs from the paper's setting."""
    torch_entry = next((e for e in doc["engines"] if e["engine"] == "torch"), None)
    gpu = doc["machine"].get("gpu")
    for e in doc["engines"]:
        if torch_entry:
            unet = paired_ratio(_samples(torch_entry, "unet_step"), _samples(e, "unet_step"))
            call = paired_ratio(_samples(torch_entry, "end_to_end"), _samples(e, "end_to_end"))
            e["unet_step_speedup_vs_torch"] = unet["median"] if unet else None
            e["end_to_end_speedup_vs_torch"] = call["median"] if call else None
            e["vs_torch_paired"] = {"unet_step": unet, "end_to_end": call}
        if gpu:
            e["speedup_vs_paper_a100_5s"] = round(PAPER_A100_MS / e["end_to_end_ms"], 1)
            e["paper_a100_differs"] = differences_from_paper(doc["settings"], gpu)


def print_table(doc: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    # Piped into a file or a log, rich would wrap the table at 80 columns and split its row labels across lines.
    console = console or (Console() if sys.stdout.isatty() else Console(width=200))
    s = doc["settings"]
    table = Table(title=f"{s['model']} | {s['device']} {s['dtype']} | {s['resolution']} px | {s['steps']} {s['sampler']} steps"
                        f" | K={s['batch_instructions']} | {s['repeats']} repeats (median ± half-range, ms)")
    table.add_column("stage")
    for e in doc["engines"]:
        table.add_column(e["engine"], justify="right")
    for stage in STAGES:
        cells = [f"{e['stages'][stage]['median_ms']:.1f} ± {e['stages'][stage]['spread_ms']:.1f}" for e in doc["engines"]]
        one_pass = stage == "unet_step" and s.get("one_pass")
        table.add_row("the one UNet pass (batch K)" if one_pass else STAGE_LABELS[stage], *cells)
    table.add_row("outside the UNet (share of call)", *[f"{100 * e['outside_unet_fraction']:.1f} %" for e in doc["engines"]])
    if any(e.get("unet_step_speedup_vs_torch") for e in doc["engines"]):
        for key, label in (("unet_step", "UNet step"), ("end_to_end", "end to end")):
            table.add_row(f"{label} speed-up vs torch (median of paired rounds)",
                          *[f"{e.get(key + '_speedup_vs_torch') or float('nan'):.2f}x" for e in doc["engines"]])
    table.add_row("peak RSS (MB)", *[f"{e['memory']['peak_rss_mb']:.0f}" for e in doc["engines"]])
    if any("cuda_peak_allocated_mb" in e["memory"] for e in doc["engines"]):
        table.add_row("peak CUDA allocated (MB)", *[f"{e['memory'].get('cuda_peak_allocated_mb', 0):.0f}" for e in doc["engines"]])
    if doc.get("baseline_ms"):
        table.add_row("speed-up vs baseline (ratio of medians)", *[f"{e['speedup_vs_baseline']:.1f}x" for e in doc["engines"]])
    console.print(table)
    if len(doc["engines"]) > 1:
        console.print(f"engines timed in {s['repeats']} interleaved rounds ({' '.join(e['engine'] for e in doc['engines'])}, "
                      "again and again): a speed-up vs torch is the median of the per-round ratios", soft_wrap=True)
    b = doc.get("baseline") or {}
    if doc.get("baseline_ms"):
        how = "EXTRAPOLATED linearly from " + ", ".join(b["timed_steps"]) + " steps" if doc["baseline_extrapolated"] else "measured"
        console.print(f"baseline (paper setting, {b['method'].split(';')[0]}): {doc['baseline_ms'] / 1000:.2f} s per call ({how})")
    elif b.get("refused"):
        console.print(f"baseline REFUSED: {b['refused']}", soft_wrap=True)
    gpu = doc["machine"].get("gpu")
    if gpu:
        for e in doc["engines"]:
            differs = e["paper_a100_differs"]
            console.print(f"{e['engine']}: {e['end_to_end_ms']:.1f} ms on {gpu} = {e['speedup_vs_paper_a100_5s']}x faster "
                          f"than the paper's 5 s on an A100; "
                          + (f"not like for like: {'; '.join(differs)}" if differs else "same GPU model and setting"),
                          soft_wrap=True)


def write_plot(doc: dict, path) -> None:
    """Left: time per call, log scale, baseline included. Right: where an engine's call goes, stacked."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from icv_deploy.atomic import atomic_path

    engines = doc["engines"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 1.5 + 0.6 * (len(engines) + 1)))
    names = [e["engine"] for e in engines]
    values = [e["end_to_end_ms"] for e in engines]
    if doc.get("baseline_ms"):
        names.append("baseline (diffusers, 100 steps" + (", extrap.)" if doc["baseline_extrapolated"] else ")"))
        values.append(doc["baseline_ms"])
    left.barh(names, values, color=["tab:blue"] * len(engines) + ["tab:gray"] * (len(names) - len(engines)))
    left.set_xscale("log")
    left.set_xlim(min(values) / 3, max(values) * 3)
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on a log axis
    for y, value in enumerate(values):
        left.text(value, y, f" {value / 1000:.3g} s", va="center", fontsize=8)
    left.set_xlabel("ms per call (log)")
    left.set_title("end to end")
    steps = doc["settings"]["steps"]
    parts = [("text", "text"), ("vae_encoder", "VAE enc"), ("unet_step", f"UNet x {steps}"), ("sampler", "sampler"),
             ("vae_decoder", "VAE dec"), ("postprocess", "post")]
    starts = [0.0] * len(engines)
    for key, label in parts:
        widths = [e["stages"][key]["median_ms"] * (steps if key == "unet_step" else 1) for e in engines]
        right.barh([e["engine"] for e in engines], widths, left=starts, label=label)
        starts = [a + b for a, b in zip(starts, widths)]
    right.set_xlabel("ms (stage medians)")
    one_pass = doc["settings"].get("sampler") == "one_pass"
    right.set_title("where the time goes (one UNet pass)" if one_pass else f"where the time goes ({steps} steps)")
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
