"""How fast is InstructCV on this machine, where does the time go, and how much faster than the paper's setting?

    python benchmarks/latency.py --engine torch,onnx-tuned --json out.json --plot out.png     # the bundled demo model
    python benchmarks/latency.py --model sd15-random --engine torch,onnx-tuned --steps 4 --json out.json --plot out.png

For each engine: median and spread of each stage (tokenize + text encoder, VAE encoder, one guided UNet step of
batch 3K, sampler overhead, VAE decoder, postprocessing), end to end, and peak memory; as a table, a JSON
document and a bar plot. The baseline is diffusers' StableDiffusionInstructPix2PixPipeline with the paper's
settings (100 Euler-ancestral steps, guidance 7.5 / 1.5) on the same model, machine and precision, timed in the
same run; on a CPU it is timed at two step counts and extrapolated to 100 (the output says so; a line that does not
rise with the steps is measured again, then refused, never printed as a negative time). All engines stay loaded and
their UNet steps and whole calls are timed in interleaved rounds (A B A B ...); speed-ups between engines are the
median of the per-round ratios. On a GPU each engine is also set against the paper's 5 s on an A100, with the
differences (GPU, steps, resolution) printed beside the ratio.

Engines: torch (eager, SDPA attention), torch-fast (channels-last, and on CUDA the guided UNet step replayed
from a CUDA graph; --compile adds torch.compile), onnx (the runtime's OnnxBackend as it opens a folder),
onnx-tuned (the same backend with ort_tuning's session options and static shapes), trt (needs --trt-model). The
model is, as everywhere, $ICV_MODEL or else the bundled `demo` unless --model names one; `--model sd15-random` builds
the full-size SD 1.5 InstructPix2Pix architecture with random weights once into the cache folder (4.3 GB) and
reuses it. onnx engines export the model once into the cache (`icv-export onnx`; again when the model changes).

OpenVINO engines (bench_openvino.py; CPU): openvino-bf16, openvino-f32 (the ONNX folder in OpenVINO at that
precision), openvino (whichever of the two this CPU runs by default) and openvino-int8 (an int8 IR folder:
--openvino-model, or one quantized once into the cache). Each is named by the precision it runs in.

One-pass mode (issue 13): a model whose icv_config.json says "mode": "one_pass" is timed as it runs, one UNet call of
batch K per call with no guidance batch and no sampler loop (steps = 1); `--one-pass` times any model that way,
e.g. `--model sd15-random --one-pass` for the full-size architecture (random weights: the time counts, not the
answer). The diffusers baseline is the same paper setting in the same run either way.

`--vae tiny` times the engines with the tiny autoencoder (diffusers' AutoencoderTiny, TAESD) from the model's
`vae_tiny/` instead of the SD VAE (sd15-random gets a random TAESD of the real architecture, added once; onnx
engines use a second export made with `--vae tiny`). The baseline keeps the full VAE: it is the paper's setting.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import shlex
import sys
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_* modules beside this script

from bench_baseline import time_baseline  # noqa: E402
from bench_openvino import OPENVINO_ENGINES, int8_folder, open_openvino, resolve_names  # noqa: E402
from bench_report import (add_relative_figures, engine_entry, load_average, machine_description, print_table,  # noqa: E402
                          write_plot)
from bench_stages import finish, interleaved_rounds, prepare_pipeline, synchronizer  # noqa: E402

from icv_deploy.cli_common import debug_option, one_line_errors  # noqa: E402
from icv_deploy.errors import IcvError  # noqa: E402

ENGINES = ("torch", "torch-fast", "onnx", "onnx-tuned", "trt", *OPENVINO_ENGINES)
INSTRUCTIONS = ("Segment the cat", "Detect the dog", "Create a monocular depth map",
                "Show blue if the picture has a cat, otherwise show black")
DEFAULT_CACHE = Path(os.environ.get("ICV_CACHE", Path.home() / ".cache" / "icv-deploy"))


def synthetic_image(size: int = 256, seed: int = 0) -> np.ndarray:
    """A deterministic synthetic RGB picture (gradients and a few solid shapes): no files, no downloads."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([xx, yy, 1 - xx * yy], axis=-1) * 200
    for _ in range(4):
        x0, y0 = rng.integers(0, size * 3 // 4, 2)
        img[y0:y0 + size // 5, x0:x0 + size // 4] = rng.integers(0, 255, 3)
    return img.astype(np.uint8)


def sd15_random(cache: Path, vae: str = "full") -> Path:
    """The full-size random SD 1.5 InstructPix2Pix folder, built once (atomically) and reused; with vae="tiny"
    a random TAESD (the real architecture) is added to it once as vae_tiny/."""
    from icv_deploy.atomic import atomic_dir
    from icv_deploy.model_files import TINY_VAE_FOLDER
    from icv_deploy.testing import add_tiny_vae, make_sd15_model

    folder = cache / "sd15-random"
    if not (folder / "model_index.json").exists():
        click.echo(f"building the random SD 1.5 model (4.3 GB) into {folder} (once)", err=True)
        with atomic_dir(folder) as tmp:
            make_sd15_model(tmp)
    if vae == "tiny" and not (folder / TINY_VAE_FOLDER / "config.json").exists():
        click.echo(f"adding a random TAESD to {folder / TINY_VAE_FOLDER} (once)", err=True)
        add_tiny_vae(folder)
    return folder


def onnx_folder(model_dir: Path, onnx_model: Path | None, cache: Path, vae: str = "full") -> Path:
    """The exported ONNX folder for `model_dir`: the one given, or one exported once into the cache."""
    if onnx_model is not None:
        return onnx_model
    if (model_dir / "manifest.json").exists():
        return model_dir  # already an ONNX folder
    folder = cache / "onnx" / (model_dir.name + ("-vae-tiny" if vae == "tiny" else ""))
    if not (folder / "manifest.json").exists() or _exported_from_other(folder, model_dir):
        from tqdm.auto import tqdm

        from icv_deploy.export.onnx_export import export_onnx

        click.echo(f"exporting {model_dir} to ONNX in {folder} (once, vae {vae})", err=True)
        export_onnx(model_dir, folder, progress=lambda xs, desc: tqdm(xs, desc=desc), log=lambda s: click.echo(s, err=True),
                    vae=vae)
    return folder


def _exported_from_other(onnx_dir: Path, model_dir: Path) -> bool:
    """True when the cached export was made from other weights (a retrained demo model, another folder of that name)."""
    from icv_deploy.export.manifest import MANIFEST_NAME, source_hash
    from icv_deploy.model_files import read_json

    return read_json(onnx_dir / MANIFEST_NAME).get("source_hash") != source_hash(model_dir)


def parse_baseline_steps(text: str) -> list[int]:
    """--baseline-steps: 100 itself, or two or more step counts to draw the line to 100 through."""
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise IcvError(f"--baseline-steps {text!r}: give whole step counts separated by commas, e.g. 2,4 or 100") from None
    if not counts or counts[0] < 1 or (100 not in counts and len(counts) < 2):
        raise IcvError(f"--baseline-steps {text!r}: give 100, or at least two different step counts of 1 or more "
                       "(the time at 100 steps is read from the line through them)")
    return counts


def model_resolution(model_dir: Path) -> int:
    """The model's own working resolution (icv_config.json), else the paper's 256."""
    from icv_deploy.model_files import model_config

    return int(model_config(model_dir).get("resolution") or 256)


def one_pass_mode(model_dir: Path, forced: bool):
    """The one-pass mode to time: the model's own (icv_config.json), else with --one-pass a default one (t = 999, zero
    noise input, clean-latent prediction: the cost is the same whatever the mode), else None (sampled)."""
    from icv_deploy.model_files import model_config, read_json
    from icv_deploy.one_pass import OnePass

    own = OnePass.from_config(model_config(model_dir), read_json(model_dir / "scheduler" / "scheduler_config.json"),
                              where=str(model_dir / "icv_config.json"))
    return own or (OnePass(prediction_type="sample") if forced else None)


def open_engine(engine: str, model_dir: Path, onnx_dir, trt_model, device: str, dtype, k: int, size, compile_unet: bool,
                vae: str = "full", int8_dir: Path | None = None, cache: Path = DEFAULT_CACHE, one_pass=None):
    """An InstructCVPipeline for `engine`, and the options it was opened with (for the JSON); `one_pass` (a
    one_pass.OnePass) makes it run one UNet pass of batch K per call."""
    pipe, options = _open_engine(engine, model_dir, onnx_dir, trt_model, device, dtype, k, size, compile_unet, vae, int8_dir,
                                 cache, guidance=one_pass is None)
    if one_pass is not None:
        pipe.one_pass = one_pass
        options["one_pass"] = one_pass.to_json()
    return pipe, options


def _open_engine(engine: str, model_dir: Path, onnx_dir, trt_model, device: str, dtype, k: int, size, compile_unet: bool,
                 vae: str = "full", int8_dir: Path | None = None, cache: Path = DEFAULT_CACHE, guidance: bool = True):
    from icv_deploy.pipeline import InstructCVPipeline

    if engine in ("torch", "torch-fast"):
        fast = engine == "torch-fast"
        options = {"channels_last": fast, "cuda_graph": fast and device.startswith("cuda"), "compile": fast and compile_unet}
        pipe = InstructCVPipeline.from_pretrained(model_dir, engine="torch", device=device, dtype=dtype, vae=vae, **options)
        return pipe, options
    if engine == "onnx":
        return InstructCVPipeline.from_pretrained(onnx_dir, engine="onnx", device=device, vae=vae), {}
    if engine == "onnx-tuned":
        from bench_ort import tuned_onnx_backend

        from transformers import CLIPTokenizer

        from icv_deploy.model_files import read_json

        backend = tuned_onnx_backend(onnx_dir, device, batch_instructions=k, height=size[0], width=size[1], vae=vae,
                                     guidance=guidance)  # static UNet shapes: 3K rows, or K for one pass
        pipe = InstructCVPipeline(backend, CLIPTokenizer.from_pretrained(onnx_dir / "tokenizer"),
                                  read_json(onnx_dir / "scheduler" / "scheduler_config.json"), source=str(onnx_dir))
        return pipe, {"static_dims": backend.static_dims, "session_options": "icv_deploy.backends.ort_tuning"}
    if engine in OPENVINO_ENGINES:
        return open_openvino(engine, onnx_dir, int8_dir, cache, vae)
    if engine == "trt":
        if trt_model is None:
            raise IcvError("--engine trt needs --trt-model FOLDER (engines built by `icv-export trt`)")
        return InstructCVPipeline.from_pretrained(trt_model, engine="trt", device=device), {}
    raise IcvError(f"unknown engine {engine!r}: choose from {', '.join(ENGINES)}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default=None, show_default="$ICV_MODEL, else demo",
              help="A bundled model (demo, demo-1step), a diffusers InstructCV folder or hub id, or sd15-random (full-size "
                   "SD 1.5 architecture, random weights, built once: 4.3 GB).")
@click.option("--engine", "engines", default="torch,onnx-tuned", show_default=True,
              help=f"Comma-separated engines, from: {', '.join(ENGINES)}.")
@click.option("--onnx-model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="ONNX folder for the onnx engines (default: export --model once into the cache).")
@click.option("--trt-model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="TensorRT engine folder for --engine trt.")
@click.option("--openvino-model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="int8 OpenVINO IR folder (icv-export openvino --precision int8) for --engine openvino-int8 "
                   "(default: quantize the ONNX folder once into the cache).")
@click.option("--device", default=None, help="cpu or cuda[:N] (default: cuda if available).")
@click.option("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp16 on CUDA, fp32 on CPU).")
@click.option("--resolution", default=None, type=int,
              help="Working resolution (long side, pixels) [default: the model's (icv_config.json), else 256].")
@click.option("--steps", default=None, type=int, help="Sampling steps (default: 4 on CPU, 10 on CUDA).")
@click.option("--sampler", default="dpmpp_2m", show_default=True, help="euler_a, euler, dpmpp_2m, dpmpp_2m_trailing, lcm.")
@click.option("--batch-instructions", "k", default=1, show_default=True, help="K instructions on one image: one UNet batch of 3K.")
@click.option("--repeats", default=3, show_default=True, help="Timed repeats per stage (after one warm-up).")
@click.option("--baseline/--no-baseline", default=True, show_default=True, help="Time diffusers' pipeline at the paper's settings.")
@click.option("--baseline-steps", default=None,
              help="Step counts to time the baseline at (default: 100 on CUDA; 2,4 on CPU, extrapolated to 100).")
@click.option("--vae", type=click.Choice(["full", "tiny"]), default="full", show_default=True,
              help="Engines' autoencoder: full (the model's SD VAE) or tiny (TAESD from <model>/vae_tiny; sd15-random "
                   "gets a random one). The baseline always uses the full VAE.")
@click.option("--one-pass", "force_one_pass", is_flag=True,
              help="Time the one-pass mode: one UNet call of batch K per call, no guidance batch, no sampler loop "
                   "(automatic for a model whose icv_config.json says mode one_pass; --steps and --sampler then do not apply).")
@click.option("--compile", "compile_unet", is_flag=True, help="torch-fast: also torch.compile the UNet (slow to start).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the JSON here.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write a bar plot PNG here.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_CACHE, show_default=True,
              help="Where sd15-random and exported ONNX folders are kept (env ICV_CACHE).")
@debug_option
@one_line_errors
def main(model, engines, onnx_model, trt_model, openvino_model, device, dtype, resolution, steps, sampler, k, repeats, baseline,
         baseline_steps, vae, force_one_pass, compile_unet, json_out, plot_out, cache_dir):
    """Per-stage latency of InstructCV engines against the paper's diffusers baseline."""
    from icv_deploy.backends.torch_backend import parse_dtype
    from icv_deploy.model_files import default_model, resolve_model
    from icv_deploy.sampling import SAMPLERS

    names = [e.strip() for e in engines.split(",") if e.strip()]
    bad = [e for e in names if e not in ENGINES]
    if bad or not names:
        raise IcvError(f"unknown engine(s) {', '.join(bad) or '(none)'}: choose from {', '.join(ENGINES)}")
    if sampler not in SAMPLERS:
        raise IcvError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if k < 1 or repeats < 1:
        raise IcvError("--batch-instructions and --repeats must be at least 1")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise IcvError(f"device {device}: no CUDA GPU visible to PyTorch here")
    on_cuda = device.startswith("cuda")
    torch_dtype = parse_dtype(dtype, torch.device(device))
    dtype_name = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[torch_dtype]
    steps = steps or (10 if on_cuda else 4)
    counts = parse_baseline_steps(baseline_steps) if baseline_steps else ([100] if on_cuda else [2, 4])

    model = model or default_model()
    model_dir = sd15_random(cache_dir, vae) if model == "sd15-random" else resolve_model(model)
    resolution = resolution or model_resolution(model_dir)
    one_pass = one_pass_mode(model_dir, force_one_pass)
    if one_pass is not None:
        steps, sampler = 1, "one_pass"
    needs_onnx = any(e.startswith(("onnx", "openvino")) for e in names)
    names = resolve_names(names)  # "openvino" named by the precision it runs in on this CPU
    onnx_dir = onnx_folder(model_dir, onnx_model, cache_dir, vae) if needs_onnx else None
    int8_dir = int8_folder(onnx_dir, openvino_model, cache_dir) if "openvino-int8" in names else None
    if onnx_dir is not None:  # refuse a folder exported with the other VAE before minutes of baseline timing
        from icv_deploy.backends.onnx_backend import check_onnx_folder, check_vae_choice, folder_vae

        check_vae_choice(folder_vae(check_onnx_folder(onnx_dir)), vae, onnx_dir)
    image = synthetic_image(resolution)
    instructions = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(k)]
    size = image.shape[:2]

    doc = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": machine_description(device),
        "settings": {"model": model, "model_dir": str(model_dir), "onnx_dir": str(onnx_dir) if onnx_dir else None,
                     "device": device, "dtype": dtype_name, "resolution": resolution, "steps": steps, "sampler": sampler,
                     "batch_instructions": k, "instructions": instructions, "repeats": repeats, "vae": vae,
                     "one_pass": one_pass.to_json() if one_pass else None},
        "baseline_ms": None, "baseline_extrapolated": None, "engines": [],
    }
    if baseline:
        click.echo(f"baseline: diffusers, paper settings, timed at {counts} steps", err=True)
        doc["baseline"] = time_baseline(model_dir, image, instructions[0], device, torch_dtype, tuple(counts), repeats)
        if doc["baseline"]["baseline_ms"] is not None:  # None: refused, the line through the timings did not rise
            doc["baseline_ms"] = round(doc["baseline"]["baseline_ms"], 1)
        doc["baseline_extrapolated"] = doc["baseline"]["baseline_extrapolated"]
        gc.collect()
    # All engines stay loaded, so that their UNet steps and whole calls can be timed in interleaved rounds
    # (A B A B ...): a burst of load then lands on every engine alike, and speed-ups are per-round ratios.
    prepared = {}
    for engine in names:
        click.echo(f"{engine}: loading", err=True)
        pipe, options = open_engine(engine, model_dir, onnx_dir, trt_model, device, torch_dtype, k, size, compile_unet, vae,
                                    int8_dir, cache_dir, one_pass)
        click.echo(f"{engine}: timing {repeats} repeats of the smaller stages, warming up", err=True)
        prepared[engine] = (pipe, options, prepare_pipeline(pipe, image, instructions, steps, sampler, repeats,
                                                            resolution=resolution))
    click.echo(f"{', '.join(names)}: {repeats} interleaved rounds of the UNet step and the whole call", err=True)
    calls = {(engine, "unet_step"): prep.unet_step for engine, (_, _, prep) in prepared.items()}
    calls.update({(engine, "end_to_end"): prep.end_to_end for engine, (_, _, prep) in prepared.items()})
    rounds, last = interleaved_rounds(calls, repeats, synchronizer(device))
    for engine, (pipe, options, prep) in prepared.items():
        measured = finish(prep, rounds[engine, "unet_step"], rounds[engine, "end_to_end"], last[engine, "end_to_end"])
        graphed = getattr(pipe.backend, "graphed_unet", None)
        if graphed is not None:
            options["cuda_graphs_captured"], options["cuda_graph_failed_shapes"] = graphed.captures, len(graphed.eager_signatures)
        doc["engines"].append(engine_entry(engine, measured, steps, doc["baseline_ms"], options))
    del prepared, calls, last
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
    doc["machine"]["load_average_at_end"] = load_average()
    add_relative_figures(doc)
    print_table(doc)
    if json_out:
        from icv_deploy.atomic import write_json

        write_json(json_out, doc)
    if plot_out:
        write_plot(doc, plot_out)
    return doc


if __name__ == "__main__":
    main()
