"""GPU check (run by gpu_check.sh): torch-CUDA parity with the CPU path, then baseline vs fast-path timings.

    python benchmarks/gpu_check.py --out DIR [--budget-s 420] [--compile]

1. Parity on a tiny random model (seconds): the same pipeline call on the CPU (fp32) and on CUDA (fp32 with
   TF32 off, fp16 eager, fp16 fast path: channels-last + CUDA graph), plus diffusers' own pipeline on CUDA;
   each compared by the largest absolute difference of the final latents.
2. Timings on sd15-random at 256 px through benchmarks/latency.py: the diffusers baseline at the paper's 100
   Euler-ancestral steps (measured, not extrapolated), torch eager and torch-fast at 10 dpmpp_2m steps in fp16;
   then torch-fast with the tiny VAE (TAESD, `--vae tiny`) and K = 4 instructions as one UNet batch of 12, each
   if the budget allows; `--compile` adds torch.compile if it still does.
Writes DIR/gpu_check.json (everything), DIR/latency_gpu*.json and .png, and prints a summary.
Needs no network: the models are built from configs.
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
TOLERANCES = {"cuda_fp32": 1e-3, "cuda_fp16": 5e-2, "cuda_fp16_fast": 5e-2, "diffusers_cuda_fp32": 1e-3}


def final_latents(pipe, image, instruction, steps=4, sampler="euler_a", seed=0):
    """The pipeline's sampled latents (before the VAE decoder), on the CPU in float32."""
    pipe.progress = False
    text_emb, empty_emb = pipe.encode_instructions([instruction])
    image_latents = pipe.encode_image(image)
    return pipe.sample(text_emb, empty_emb, image_latents, steps, sampler, seed, 7.5, 1.5).float().cpu()


def diffusers_latents(model_dir, image, instruction, steps=4, seed=0):
    from bench_baseline import load_diffusers_pipeline
    from PIL import Image

    pipe = load_diffusers_pipeline(model_dir, "cuda", torch.float32)
    out = pipe(instruction, image=Image.fromarray(image), num_inference_steps=steps, guidance_scale=7.5,
               image_guidance_scale=1.5, generator=torch.Generator("cpu").manual_seed(seed), output_type="latent")
    return out.images.float().cpu()


def parity(work: Path) -> dict:
    import numpy as np

    import icv_deploy
    from icv_deploy.testing import make_tiny_model

    torch.backends.cudnn.allow_tf32 = False  # fp32 parity means fp32 convolutions
    torch.backends.cuda.matmul.allow_tf32 = False
    model = make_tiny_model(work / "tiny", seed=0, vae_levels=2)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    instruction = "Segment the cat"
    reference = final_latents(icv_deploy.load(model, device="cpu", dtype="fp32"), image, instruction)
    runs = {
        "cuda_fp32": lambda: final_latents(icv_deploy.load(model, device="cuda", dtype="fp32"), image, instruction),
        "cuda_fp16": lambda: final_latents(icv_deploy.load(model, device="cuda", dtype="fp16"), image, instruction),
        "cuda_fp16_fast": lambda: final_latents(
            icv_deploy.load(model, device="cuda", dtype="fp16", channels_last=True, cuda_graph=True), image, instruction),
        "diffusers_cuda_fp32": lambda: diffusers_latents(model, image, instruction),
    }
    out = {}
    for name, run in runs.items():
        try:
            got = run()
            diff = float((got - reference).abs().max())
            out[name] = {"max_abs_diff_vs_cpu_fp32": diff, "tolerance": TOLERANCES[name], "ok": diff <= TOLERANCES[name]}
        except Exception as exc:  # report and go on: the timings are still worth having
            out[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        print(f"parity {name}: {out[name]}", flush=True)
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
    args = parser.parse_args(argv)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("error: no CUDA GPU visible to PyTorch", file=sys.stderr)
        return 2
    from icv_deploy.atomic import write_json

    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda}
    print(json.dumps(report), flush=True)

    def save():  # after every phase: a run cut short by its time limit still leaves what it measured
        report["total_s"] = round(time.perf_counter() - started, 1)
        write_json(args.out / "gpu_check.json", report)

    with tempfile.TemporaryDirectory() as work:
        report["parity"] = parity(Path(work))
    report["parity_s"] = round(time.perf_counter() - started, 1)
    save()

    common = ["--model", "sd15-random", "--device", "cuda", "--dtype", "fp16", "--resolution", "256",
              "--sampler", "dpmpp_2m", "--steps", "10", "--cache-dir", str(args.cache_dir)]
    report["latency"] = run_latency(common + ["--engine", "torch,torch-fast", "--repeats", "5", "--baseline-steps", "100",
                                              "--json", str(args.out / "latency_gpu.json"), "--plot", str(args.out / "latency_gpu.png")])
    report["latency_s"] = round(time.perf_counter() - started, 1)
    save()
    if time.perf_counter() - started < args.budget_s * 0.7:
        report["latency_tiny_vae"] = run_latency(common + ["--engine", "torch-fast", "--vae", "tiny", "--repeats", "5", "--no-baseline",
                                                           "--json", str(args.out / "latency_gpu_tiny_vae.json")])
        save()
    if time.perf_counter() - started < args.budget_s * 0.8:
        report["latency_k4"] = run_latency(common + ["--engine", "torch-fast", "--repeats", "3", "--no-baseline",
                                                     "--batch-instructions", "4", "--json", str(args.out / "latency_gpu_k4.json")])
    if args.compile and time.perf_counter() - started < args.budget_s * 0.5:
        report["latency_compile"] = run_latency(common + ["--engine", "torch-fast", "--compile", "--repeats", "5", "--no-baseline",
                                                          "--json", str(args.out / "latency_gpu_compile.json")])
    save()
    ok = all(v.get("ok") for v in report["parity"].values())
    print(f"parity: {'OK' if ok else 'FAILED'}; total {report['total_s']} s; results in {args.out}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
