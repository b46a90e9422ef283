"""How close to this machine's ceiling is the guided UNet step? FLOPs, the best kernel rate, achieved rates.

    python benchmarks/unet_roofline.py --onnx-model /tmp/icv-sd15-onnx --model /tmp/icv-sd15 --json roofline.json

1. FLOPs of one guided step (batch 3, 256 px): PyTorch's FlopCounterMode over the diffusers UNet (convolutions
   and linear layers), plus the attention matmuls, which the counter does not see inside CPU SDPA: 4 * B * heads *
   Lq * Lk * head_dim per call, tallied by wrapping F.scaled_dot_product_attention.
2. The ceiling: the best rate of the two dense kernels the step is made of, measured here: ONNX Runtime's
   3x3 convolution at the step's largest shape and PyTorch's sgemm (3072^3), each the best of several runs.
3. The paired step timings of ort_unet_sweep.py (tuned-static vs PyTorch eager), turned into GFLOP/s, and the
   rate ONNX Runtime would need for the issue's 1.5x over PyTorch eager.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ort_unet_sweep import load_torch_unet, onnx_model_info, run_sweep, unet_inputs  # noqa: E402


def count_flops(unet, batch: int, latent: int, width: int = 768) -> dict:
    """FLOPs of one call of the diffusers `unet` (load_torch_unet) on a batch x 8 x latent^2 input."""
    from torch.utils.flop_counter import FlopCounterMode

    feeds = {k: torch.from_numpy(v) for k, v in unet_inputs(batch, latent, text_width=width).items()}
    attention = [0]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted_sdpa(q, k, v, *args, **kwargs):
        b, h, lq, d = q.shape
        attention[0] += 4 * b * h * lq * k.shape[-2] * d  # QK^T and PV, 2 FLOPs per multiply-add
        return sdpa(q, k, v, *args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = counted_sdpa
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            unet(feeds["sample"], feeds["timestep"], encoder_hidden_states=feeds["encoder_hidden_states"])
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
    by_op = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    by_op["attention (SDPA)"] = attention[0]
    return {"total_gflop": round(sum(by_op.values()) / 1e9, 2), "by_op_gflop": {k: round(v / 1e9, 2) for k, v in by_op.items()},
            "by_op_flops": by_op}


def best_rate(fn, flops: float, runs: int = 9) -> float:
    fn()
    fn()
    best = min(_timed(fn) for _ in range(runs))
    return flops / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def kernel_ceiling(batch: int, latent: int) -> dict:
    """GFLOP/s of ORT's 3x3 conv (batch x 320 x latent^2, the step's biggest conv shape) and torch's sgemm."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from icv_deploy.backends import ort_tuning

    c = 320
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, latent, latent])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, c, latent, latent])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), ort_tuning.session_options("unet", "cpu"),
                                   providers=["CPUExecutionProvider"])
    x = rng.standard_normal((batch, c, latent, latent), dtype=np.float32)
    conv = best_rate(lambda: session.run(None, {"x": x}), 2 * batch * latent * latent * c * c * 9)
    a, b = torch.randn(3072, 3072), torch.randn(3072, 3072)
    sgemm = best_rate(lambda: a @ b, 2 * 3072**3)
    return {"ort_conv3x3_gflops": round(conv, 1), "torch_sgemm_gflops": round(sgemm, 1), "ceiling_gflops": round(max(conv, sgemm), 1)}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--onnx-model", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Exported ONNX folder (icv-export onnx) holding unet/model.onnx.")
@click.option("--model", "torch_model", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="The diffusers folder it was exported from.")
@click.option("--batch", default=3, show_default=True, help="UNet batch (3 per instruction).")
@click.option("--resolution", default=256, show_default=True, help="Image pixels (latent = resolution / VAE factor).")
@click.option("--repeats", default=3, show_default=True, help="Paired ORT / PyTorch step timings.")
@click.option("--target", default=1.5, show_default=True, help="The speed-up over PyTorch eager to check.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the results here.")
def main(onnx_model, torch_model, batch, resolution, repeats, target, json_out):
    """FLOPs of the guided UNet step, this machine's kernel ceiling, and the rates ORT and PyTorch reach."""
    info = onnx_model_info(onnx_model)
    latent = resolution // info.vae_scale_factor
    unet = load_torch_unet(torch_model)  # loaded once: counted here, then timed against ORT by run_sweep
    flops = count_flops(unet, batch, latent, info.text_hidden_size)
    ceiling = kernel_ceiling(batch, latent)
    sweep = run_sweep(onnx_model, unet, ["tuned-static"], batch, latent, repeats, log=lambda s: print(s, file=sys.stderr))
    step = sweep["variants"]["tuned-static"]
    gflop = flops["total_gflop"]
    ort_rate = gflop / step["ort_median_ms"] * 1000
    torch_rate = gflop / step["torch_median_ms"] * 1000
    needed = target * torch_rate
    out = {"batch": batch, "latent": latent, "flops": flops, "ceiling": ceiling, "step": step,
           "ort_gflops": round(ort_rate, 1), "torch_gflops": round(torch_rate, 1),
           "target_speedup": target, "needed_ort_gflops": round(needed, 1),
           "needed_share_of_ceiling": round(needed / ceiling["ceiling_gflops"], 3),
           "ort_share_of_ceiling": round(ort_rate / ceiling["ceiling_gflops"], 3)}
    print(json.dumps(out, indent=2))
    print(f"\none guided step: {gflop:.0f} GFLOP; ceiling {ceiling['ceiling_gflops']:.0f} GFLOP/s; ORT {ort_rate:.0f} "
          f"({100 * out['ort_share_of_ceiling']:.0f} % of it), PyTorch eager {torch_rate:.0f}; {target}x over PyTorch "
          f"needs {needed:.0f} GFLOP/s = {100 * out['needed_share_of_ceiling']:.0f} % of the ceiling", file=sys.stderr)
    if json_out:
        from icv_deploy.atomic import write_json

        write_json(json_out, out)


if __name__ == "__main__":
    main()
