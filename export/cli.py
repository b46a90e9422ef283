"""`icv-export`: ONNX export and TensorRT engine builds (docs/DESIGN.md 7).

    icv-export onnx --model MODEL --output onnx/ [--fp16] [--opset 17] [--no-verify] [--vae full|tiny]
    icv-export build-engines --onnx onnx/ --output engines/ [--min-resolution 128 --opt-resolution 256 --max-resolution 512]
    icv-export openvino --onnx onnx/ --output ov/ [--precision bf16|f32|int8]
    icv-export check onnx/                      # the runtime's manifest check, plus content hashes (ONNX or IR)
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from icv_deploy.cli_common import debug_option, one_line_errors
from icv_deploy.errors import IcvError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Export an InstructCV model to ONNX (ONNX Runtime), build TensorRT fp16 engines, convert to OpenVINO IR."""


@main.command("onnx")
@click.option("--model", required=True, help="Diffusers-format model folder or Hugging Face hub id (8-channel UNet).")
@click.option("--output", required=True, type=click.Path(path_type=Path),
              help="Folder to write (optimum layout plus manifest.json). An interrupted export resumes here.")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(17, 20), help="ONNX opset.")
@click.option("--fp16", is_flag=True,
              help="fp16 weights and compute (for GPUs). Graph I/O stays float32; Softmax, the timestep embedding and "
                   "the VAE (force_upcast) stay float32.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Where the PyTorch modules run while tracing and verifying.")
@click.option("--vae", type=click.Choice(["full", "tiny"]), default="full", show_default=True,
              help="Which autoencoder the vae_encoder/vae_decoder graphs come from: full = the model's SD VAE (vae/); "
                   "tiny = TAESD from MODEL/vae_tiny/ (copy madebyollin/taesd there), about 10x cheaper to encode and "
                   "decode, slightly softer images. The graphs keep the same inputs and outputs either way.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Run each graph in ONNX Runtime against PyTorch on random inputs; fail above the error bound "
                   "(relative 1e-4 fp32, 5e-2 fp16).")
@debug_option
@one_line_errors
def onnx_command(model, output, opset, fp16, device, vae, verify):
    """Export the text encoder, 8-channel UNet, VAE encoder (posterior mode) and VAE decoder to ONNX."""
    from tqdm.auto import tqdm

    from .onnx_export import export_onnx

    manifest = export_onnx(model, output, opset=opset, fp16=fp16, device=device, check=verify,
                           progress=tqdm, log=tqdm.write, vae=vae)
    for name, entry in manifest["submodels"].items():
        size = entry["bytes"] + (entry["external_data"]["bytes"] if entry["external_data"] else 0)
        err = entry["max_rel_error"]
        click.echo(f"{name:13s} {size / 1e6:9.1f} MB  {entry['precision']}"
                   + (f"  relative error {err:.2e}" if err is not None else "  (not verified)"))
    click.echo(f"wrote {output}")


@main.command("build-engines")
@click.option("--onnx", "onnx_dir", type=click.Path(path_type=Path), default=None,
              help="An ONNX folder written by `icv-export onnx`.")
@click.option("--model", default=None, help="Or a model folder / hub id: exported to OUTPUT/onnx first.")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="Engine folder to write.")
@click.option("--min-resolution", default=128, show_default=True, help="Smallest image side (pixels) the engines take.")
@click.option("--opt-resolution", default=256, show_default=True, help="Image side the engines are tuned for.")
@click.option("--max-resolution", default=512, show_default=True, help="Largest image side (pixels) the engines take.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Instructions per call; the UNet profile covers 3 .. 3 x batch rows (guidance batch), or 1 .. batch "
                   "for a one-pass model (icv_config.json mode one_pass).")
@click.option("--static", is_flag=True, help="Fix every shape at the opt resolution and batch (for CUDA graphs).")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="TensorRT timing cache to read and update (default: OUTPUT/timing.cache).")
@click.option("--device", default="cuda", show_default=True,
              help="GPU to build on: cuda (the current one) or cuda:N. Engines run only on that GPU model.")
@debug_option
@one_line_errors
def build_engines_command(onnx_dir, model, output, min_resolution, opt_resolution, max_resolution, batch, static,
                          timing_cache, device):
    """Build TensorRT fp16 engines (one .plan per submodel) with an optimisation profile and metadata."""
    from tqdm.auto import tqdm

    from .engine import build_engines, parse_build_device, require_tensorrt

    if (onnx_dir is None) == (model is None):
        raise IcvError("give exactly one of --onnx DIR or --model MODEL")
    parse_build_device(device)
    require_tensorrt()  # before any export work: fail in a second, with the install hint
    if model is not None:
        from .onnx_export import export_onnx

        onnx_dir = output / "onnx"
        export_onnx(model, onnx_dir, progress=tqdm, log=tqdm.write)
    metadata = build_engines(onnx_dir, output, batch=batch, min_res=min_resolution, opt_res=opt_resolution,
                             max_res=max_resolution, static=static, timing_cache=timing_cache, progress=tqdm,
                             log=tqdm.write, device=device)
    click.echo(f"wrote {output} (TensorRT {metadata['tensorrt_version']}, {metadata['gpu_name']})")


@main.command("openvino")
@click.option("--onnx", "onnx_dir", required=True, type=click.Path(path_type=Path),
              help="An fp32 ONNX folder written by `icv-export onnx`.")
@click.option("--output", required=True, type=click.Path(path_type=Path),
              help="IR folder to write (openvino_model.xml/.bin per submodel plus manifest.json). Resumes here.")
@click.option("--precision", type=click.Choice(["bf16", "f32", "int8"]), default="bf16", show_default=True,
              help="bf16: f16 weights on disk, runs bf16 where the CPU has it (AMX, AVX512-BF16), f32 elsewhere. "
                   "f32: f32 weights, runs f32. int8: bf16 plus a UNet quantized with NNCF (post-training, SmoothQuant, "
                   "first and last layers and the time embedding kept in float), calibrated on the UNet's own inputs "
                   "from the calibration images and instructions.")
@click.option("--calibration-image", "calibration_images", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="int8: an image to calibrate on (repeatable) [default: the repository's examples/*.png].")
@click.option("--calibration-instruction", "calibration_instructions", multiple=True,
              help="int8: an instruction to calibrate with (repeatable) [default: one per task, as in the README].")
@click.option("--calibration-steps", default=8, show_default=True, type=click.IntRange(1, 200),
              help="int8: sampler steps per image, instruction and seed (2 seeds); each step is one recorded UNet call.")
@click.option("--calibration-resolution", default=None, type=click.IntRange(16, 2048),
              help="int8: working resolution while calibrating [default: the model's, else 256].")
@debug_option
@one_line_errors
def openvino_command(onnx_dir, output, precision, calibration_images, calibration_instructions, calibration_steps,
                     calibration_resolution):
    """Convert an ONNX folder to an OpenVINO IR folder for the CPU (`--engine openvino`), optionally with an int8 UNet."""
    from tqdm.auto import tqdm

    from .calibration import CALIBRATION_INSTRUCTIONS
    from .openvino_export import export_openvino

    manifest = export_openvino(
        onnx_dir, output, precision=precision, calibration_images=list(calibration_images) or None,
        calibration_instructions=list(calibration_instructions) or CALIBRATION_INSTRUCTIONS,
        calibration_steps=calibration_steps, calibration_resolution=calibration_resolution or ..., log=tqdm.write,
        progress=tqdm)
    for name, entry in manifest["submodels"].items():
        click.echo(f"{name:13s} {(entry['bytes'] + entry['weights']['bytes']) / 1e6:9.1f} MB  {entry['weights_dtype']} weights")
    quant = manifest.get("quantization")
    if quant:
        click.echo(f"unet int8: {quant['fake_quantize_nodes']} quantizers, calibrated on {quant['calibration']['unet_calls']} "
                   f"UNet calls; relative L2 error vs f32 {quant['unet_rel_l2_vs_f32_on_calibration_inputs']:.2%}")
    click.echo(f"wrote {output}")


@main.command("check")
@click.argument("folder", type=click.Path(path_type=Path))
@debug_option
@one_line_errors
def check_command(folder):
    """Check an ONNX or OpenVINO IR folder as the runtime does, plus every file's content hash."""
    from icv_deploy.backends.onnx_backend import folder_vae
    from icv_deploy.backends.openvino_backend import check_folder

    manifest, kind = check_folder(folder, verify_hashes=True)
    click.echo(json.dumps({"folder": str(folder), "format": manifest["format"], "precision": manifest["precision"],
                           "opset": manifest.get("opset"), "vae": folder_vae(manifest),
                           "source_model": manifest["source_model"], "ok": True}))


if __name__ == "__main__":
    main()
