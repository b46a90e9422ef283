"""GPU check (run by gpu_check.sh): torch-CUDA parity with the CPU path, then baseline vs fast-path timings.

    python benchmarks/gpu_check.py --out DIR [--budget-s 420] [--compile]
    python benchmarks/gpu_check.py --out DIR --device cpu --smoke SMALL_MODEL   # every phase, small, any machine

1. Parity on a tiny random model (seconds): the same pipeline call on the CPU (fp32) and on the device (fp32
   with TF32 off, fp32 fast path, fp16 eager, fp16 fast path, the fast path with K = 2 instructions as one UNet
   batch of 6, and diffusers' own pipeline); each compared by the largest absolute difference of the final
   latents. The fast path is channels-last plus, on CUDA, the guided UNet step replayed from a CUDA graph.
2. Timings on sd15-random at 256 px through benchmarks/latency.py: the diffusers baseline at the paper's 100
   Euler-ancestral steps (measured, not extrapolated), torch eager and torch-fast at 10 dpmpp_2m steps in fp16;
   then torch-fast with the tiny VAE (TAESD, `--vae tiny`) and K = 4 instructions as one UNet batch of 12, each
   if the budget allows; `--compile` adds torch.compile if it still does.
Writes DIR/gpu_check.json (everything), DIR/latency_gpu*.json and .png, and prints a summary.
Needs no network: the models are built from configs.

`--smoke FOLDER` runs the same phases on a small model folder (with a vae_tiny/) at 32 px, 2 steps, 1 repeat:
the test suite runs it on the CPU so that the one run a GPU session gets does not fail on the script itself.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# Largest allowed |latent difference| against the CPU fp32 run (latents are O(1)).
TOLERANCES = {"fp32": 1e-3, "fp32_fast": 1e-3, "fp32_fast_k2": 1e-3, "fp16": 5e-2, "fp16_fast": 5e-2,
              "diffusers_fp32": 1e-3}
INSTRUCTIONS = ("Segment the cat", "Create a monocular depth map")


def final_latents(pipe, image, instructions, steps=4, sampler="euler_a", seed=0):
    """The pipeline's sampled latents for K instructions (before the VAE decoder), on the CPU in float32."""
    pipe.progress = False
    text_emb, empty_emb = pipe.encode_instructions(list(instructions))
    image_latents = pipe.encode_image(image)
    return pipe.sample(text_emb, empty_emb, image_latents, steps, sampler, seed, 7.5, 1.5).float().cpu()


def diffusers_latents(model_dir, image, instruction, device, steps=4, seed=0):
    from bench_baseline import load_diffusers_pipeline
    from PIL import Image

    pipe = load_diffusers_pipeline(model_dir, device, torch.float32)
    out = pipe(instruction, image=Image.fromarray(image), num_inference_steps=steps, guidance_scale=7.5,
               image_guidance_scale=1.5, generator=torch.Generator("cpu").manual_seed(seed), output_type="latent")
    return out.images.float().cpu()


def parity_runs(model, image, device: str) -> dict:
    """name -> (instructions, a function giving their final latents on `device`). fp16 only on CUDA."""
    import icv_deploy

    cuda = device.startswith("cuda")

    def ours(instructions, **options):
        return instructions, lambda: final_latents(icv_deploy.load(model, device=device, **options), image, instructions)

    one, two = INSTRUCTIONS[:1], INSTRUCTIONS
    fast = {"channels_last": True, "cuda_graph": cuda}
    runs = {"fp32": ours(one, dtype="fp32"), "fp32_fast": ours(one, dtype="fp32", **fast),
            "fp32_fast_k2": ours(two, dtype="fp32", **fast)}
    if cuda:
        runs.update(fp16=ours(one, dtype="fp16"), fp16_fast=ours(one, dtype="fp16", **fast))
    runs["diffusers_fp32"] = (one, lambda: diffusers_latents(model, image, one[0], device))
    return runs


def parity(work: Path, device: str) -> dict:
    import numpy as np

    import icv_deploy
    from icv_deploy.testing import make_tiny_model

    torch.backends.cudnn.allow_tf32 = False  # fp32 parity means fp32 convolutions
    torch.backends.cuda.matmul.allow_tf32 = False
    model = make_tiny_model(work / "tiny", seed=0, vae_levels=2)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    # K = 2 on the CPU gives each instruction what it gets alone (tests/test_bench.py), so one reference serves both.
    reference = final_latents(icv_deploy.load(model, device="cpu", dtype="fp32"), image, INSTRUCTIONS)
    out = {}
    for name, (instructions, run) in parity_runs(model, image, device).items():
        try:
            diff = float((run() - reference[:len(instructions)]).abs().max())
            out[name] = {"max_abs_diff_vs_cpu_fp32": diff, "tolerance": TOLERANCES[name], "ok": diff <= TOLERANCES[name]}
        except Exception as exc:  # report and go on: the timings are still worth having
            out[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        print(f"parity {device} {name}: {out[name]}", flush=True)
    torch.backends.cudnn.allow_tf32 = True
    return out


def run_latency(args: list[str]) -> dict | None:
    import latency

    try:
        return latency.main(args, standalone_mode=False)
    except SystemExit as exc:  # one-line IcvError exit
        return {"error": f"latency.py exited with {exc.code}"}
    except Exception as exc:
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip optional parts past this many seconds")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes to compile)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "icv-cache")
    parser.add_argument("--device", default="cuda", help="cuda[:N] (the point), or cpu for a --smoke run")
    parser.add_argument("--smoke", type=Path, default=None, metavar="FOLDER",
                        help="time this small model folder (with vae_tiny/) at 32 px, 2 steps, 1 repeat instead")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA GPU visible to PyTorch", file=sys.stderr)
        return 2
    from icv_deploy.atomic import write_json

    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else None
    report = {"device": args.device, "gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda}
    print(json.dumps(report), flush=True)

    def save():  # after every phase: a run cut short by its time limit still leaves what it measured
        report["total_s"] = round(time.perf_counter() - started, 1)
        write_json(args.out / "gpu_check.json", report)

    with tempfile.TemporaryDirectory() as work:
        report["parity"] = parity(Path(work), args.device)
    report["parity_s"] = round(time.perf_counter() - started, 1)
    save()

    if args.smoke is None:
        size = ["--model", "sd15-random", "--dtype", "fp16", "--resolution", "256", "--steps", "10"]
        baseline, repeats, few = ["--baseline-steps", "100"], "5", "3"
    else:
        size = ["--model", str(args.smoke), "--dtype", "fp32", "--resolution", "32", "--steps", "2"]
        baseline, repeats, few = ["--baseline-steps", "1,2"], "1", "1"
    common = size + ["--device", args.device, "--sampler", "dpmpp_2m", "--cache-dir", str(args.cache_dir)]
    report["latency"] = run_latency(common + ["--engine", "torch,torch-fast", "--repeats", repeats, *baseline,
                                              "--json", str(args.out / "latency_gpu.json"), "--plot", str(args.out / "latency_gpu.png")])
    report["latency_s"] = round(time.perf_counter() - started, 1)
    save()
    if time.perf_counter() - started < args.budget_s * 0.7:
        report["latency_tiny_vae"] = run_latency(common + ["--engine", "torch-fast", "--vae", "tiny", "--repeats", repeats, "--no-baseline",
                                                           "--json", str(args.out / "latency_gpu_tiny_vae.json")])
        save()
    if time.perf_counter() - started < args.budget_s * 0.8:
        report["latency_k4"] = run_latency(common + ["--engine", "torch-fast", "--repeats", few, "--no-baseline",
                                                     "--batch-instructions", "4", "--json", str(args.out / "latency_gpu_k4.json")])
    if args.compile and time.perf_counter() - started < args.budget_s * 0.5:
        report["latency_compile"] = run_latency(common + ["--engine", "torch-fast", "--compile", "--repeats", repeats, "--no-baseline",
                                                          "--json", str(args.out / "latency_gpu_compile.json")])
    save()
    parity_ok = all(v.get("ok") for v in report["parity"].values())
    failed = [k for k, v in report.items() if k.startswith("latency") and isinstance(v, dict) and "error" in v]
    print(f"parity: {'OK' if parity_ok else 'FAILED'}; latency runs failed: {', '.join(failed) or 'none'}; "
          f"total {report['total_s']} s; results in {args.out}", flush=True)
    return 0 if parity_ok and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
