"""Which ONNX Runtime session options make the guided UNet step fastest on this machine?

    python benchmarks/ort_unet_sweep.py --onnx-model /tmp/icv-sd15-onnx --model /tmp/icv-sd15 \
        --variants default,tuned,tuned-static --repeats 5 --json sweep.json

Each variant is one `InferenceSession` of `unet/model.onnx` built with different options (see VARIANTS).
Every ORT call is paired with a PyTorch eager call on the same inputs, alternating, so that both see the same
machine load (on a shared 2-core box the load moves by tens of percent within minutes): the reported figure
is the median of the per-pair ratios torch / ORT, beside each side's own median. Only one ORT session lives at
a time (an SD 1.5 UNet session holds several GB).
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_fusion and latency beside this script

from latency import DEFAULT_CACHE  # noqa: E402

from icv_deploy.backends import ort_tuning  # noqa: E402

# name -> keyword arguments for ort_tuning.session_options (plus static: pin the shapes, fused: bench_fusion's
# graph), or None for onnxruntime's own defaults
VARIANTS = {
    "default": None,
    "tuned": dict(),
    "tuned-static": dict(static=True),
    "tuned-static-nodaz": dict(static=True, denormal_as_zero=False),
    "tuned-static-nospin": dict(static=True, spinning=False),
    "tuned-static-extended": dict(static=True, optimization="extended"),
    # ORT's own transformer fusions (bench_fusion.py: Attention, MultiHeadAttention, SkipLayerNorm) + tuned-static
    "tuned-static-fused": dict(static=True, fused=True),
}
FUSED_CACHE = DEFAULT_CACHE / "ort-fused"  # beside latency.py's sd15-random and exports


def make_session(unet_path: Path, variant: str, shapes: dict):
    import onnxruntime as ort

    spec = VARIANTS[variant]
    if spec and spec.get("fused"):
        from bench_fusion import fused_unet

        unet_path = fused_unet(unet_path, FUSED_CACHE / unet_path.parent.parent.name / "model.onnx")
    if spec is None:
        so = ort.SessionOptions()
    else:
        spec = dict(spec)
        spec.pop("fused", None)
        dims = ort_tuning.static_dims(unet_path, shapes) if spec.pop("static", False) else None
        so = ort_tuning.session_options("unet", "cpu", static_dims=dims, **spec)
    return ort.InferenceSession(str(unet_path), so, providers=["CPUExecutionProvider"])


def onnx_model_info(onnx_model: Path):
    """The sizes an ONNX folder's manifest records (VAE scale factor, text width, ...): icv_deploy's ModelInfo."""
    from icv_deploy.backends.onnx_backend import info_from_manifest, read_manifest

    return info_from_manifest(read_manifest(onnx_model), onnx_model)


def load_torch_unet(torch_model: Path):
    """The diffusers UNet of `torch_model` in eval mode, with the SDPA attention the torch backend runs."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = UNet2DConditionModel.from_pretrained(torch_model, subfolder="unet", use_safetensors=True).eval()
    unet.set_attn_processor(AttnProcessor2_0())
    return unet


def unet_inputs(batch: int, latent: int, seed: int = 0, text_width: int = 768) -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 8, latent, latent, generator=g).numpy(),
        "timestep": np.full((batch,), 999.0, np.float32),
        "encoder_hidden_states": torch.randn(batch, 77, text_width, generator=g).numpy(),
    }


def run_sweep(onnx_model: Path, torch_unet, variants: list[str], batch: int, latent: int, repeats: int, log=print) -> dict:
    """Time each variant's session on the UNet step; `torch_unet` (load_torch_unet, or None) adds paired PyTorch timings."""
    feeds = unet_inputs(batch, latent, text_width=onnx_model_info(onnx_model).text_hidden_size)
    shapes = {k: v.shape for k, v in feeds.items()}
    unet_path = onnx_model / "unet" / "model.onnx"
    torch_feeds = {k: torch.from_numpy(v) for k, v in feeds.items()}

    def torch_step():
        with torch.inference_mode():
            return torch_unet(torch_feeds["sample"], torch_feeds["timestep"],
                              encoder_hidden_states=torch_feeds["encoder_hidden_states"], return_dict=False)[0]

    results = {}
    reference = torch_step().numpy() if torch_unet is not None else None
    for variant in variants:
        started = time.perf_counter()
        session = make_session(unet_path, variant, shapes)
        build_s = time.perf_counter() - started
        out = session.run(None, feeds)[0]  # warm-up (first run plans memory, packs weights)
        err = float(np.abs(out - reference).max() / (np.abs(reference).max() + 1e-12)) if reference is not None else None
        ort_ms, torch_ms, ratios = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            session.run(None, feeds)
            ort_ms.append((time.perf_counter() - t0) * 1000)
            if torch_unet is not None:
                t0 = time.perf_counter()
                torch_step()
                torch_ms.append((time.perf_counter() - t0) * 1000)
                ratios.append(torch_ms[-1] / ort_ms[-1])
        results[variant] = {
            "session_build_s": round(build_s, 1), "max_rel_error_vs_torch": err,
            "ort_ms": [round(x, 1) for x in ort_ms], "ort_median_ms": round(statistics.median(ort_ms), 1),
            "torch_ms": [round(x, 1) for x in torch_ms],
            "torch_median_ms": round(statistics.median(torch_ms), 1) if torch_ms else None,
            "speedup_vs_torch_median_of_pairs": round(statistics.median(ratios), 3) if ratios else None,
        }
        log(f"{variant}: {json.dumps(results[variant])}")
        del session
        gc.collect()
    return {"batch": batch, "latent": latent, "repeats": repeats, "torch_threads": torch.get_num_threads(),
            "variants": results}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--onnx-model", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Exported ONNX folder (icv-export onnx) holding unet/model.onnx.")
@click.option("--model", "torch_model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The diffusers folder it was exported from: adds the paired PyTorch eager timing.")
@click.option("--variants", default="default,tuned,tuned-static", show_default=True,
              help=f"Comma-separated, from: {', '.join(VARIANTS)}.")
@click.option("--batch", default=3, show_default=True, help="UNet batch (3 per instruction).")
@click.option("--resolution", default=256, show_default=True, help="Image pixels (latent = resolution / VAE factor).")
@click.option("--repeats", default=5, show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the results here.")
def main(onnx_model, torch_model, variants, batch, resolution, repeats, json_out):
    """Time the UNet step under several ONNX Runtime session-option variants, paired with PyTorch eager."""
    names = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise click.BadParameter(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    torch_unet = load_torch_unet(torch_model) if torch_model is not None else None
    latent = resolution // onnx_model_info(onnx_model).vae_scale_factor
    out = run_sweep(onnx_model, torch_unet, names, batch, latent, repeats, log=lambda s: print(s, file=sys.stderr))
    print(json.dumps(out, indent=2))
    if json_out:
        from icv_deploy.atomic import write_json

        write_json(json_out, out)


if __name__ == "__main__":
    main()
