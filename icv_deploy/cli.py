"""`icv-infer`: run InstructCV on one image with one or more instructions."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import click

from .cli_common import debug_option, one_line_errors
from .errors import IcvError
from .model_files import default_model


def parse_resolution(value: str | None):
    """None (not given) -> the model's default (Ellipsis for the pipeline); 'native' -> the input size."""
    if value is None:
        return ...
    if value.lower() in ("none", "native", "input"):
        return None
    if not value.isdigit() or int(value) < 16:
        raise IcvError(f"--resolution {value!r}: give a long-side size in pixels (>= 16) or 'native'")
    return int(value)


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "instruction"


def setup_logging() -> None:
    """Warnings as `warning: ...` lines on stderr; with --debug (cli_common.debug_log) debug lines too."""
    logger = logging.getLogger("icv_deploy")
    debug = logger.level == logging.DEBUG  # set by --debug for this command only
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if debug else "warning: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)


EPILOG = """\b
Examples:
  icv-infer examples/scene.png "Segment the red ball"            # the bundled demo model
  icv-infer --model ./instructcv cat.jpg "Segment the cat"
  icv-infer --model ./onnx --engine onnx street.png "Detect the car" "Create a monocular depth map"
  icv-infer --model ./openvino-int8 --engine openvino street.png "Detect the car"   # CPU, int8 UNet
  icv-infer --model ./instructcv --json pets.jpg "Show blue if the picture has a dog, otherwise show black"
  icv-infer --model ./instructcv --vae tiny --steps 4 cat.jpg "Segment the cat"   # TAESD from ./instructcv/vae_tiny

Tasks are read from the instruction (segment / detect / depth / "show <colour> if ... otherwise show
<colour>"); --task forces one. Each instruction writes visual.png (what the model painted), overlay.png,
the raw answer (mask.png, boxes.json, depth.npy + 16-bit depth.png in mm) and result.json under --output.
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("instruction", nargs=-1, required=True)
@click.option("--model", default=default_model, show_default="$ICV_MODEL, else demo",
              help="A bundled model by name (demo, demo-1step), a diffusers model folder or hub id (torch), an exported "
                   "ONNX folder (onnx) or an engine folder (trt).")
@click.option("--engine", type=click.Choice(["torch", "onnx", "trt", "openvino"]), default="torch", show_default=True,
              help="Backend. openvino: CPU, from an ONNX folder or an `icv-export openvino` IR folder; bf16 where the "
                   "CPU has it (--debug says which and why), f32 elsewhere, int8 UNet from an int8 IR folder.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="Precision [torch default: fp16 on CUDA, fp32 on CPU; openvino default: the folder's, bf16 where the "
                   "CPU has it].")
@click.option("--vae", type=click.Choice(["full", "tiny"]), default=None,
              help="Image encoder/decoder. full: the model's SD VAE. tiny: TAESD, about 10x cheaper to encode and "
                   "decode (most of the time outside the UNet on a CPU), slightly softer images; needs vae_tiny/ in the "
                   "model folder (copy madebyollin/taesd there) or an ONNX folder exported with `icv-export onnx --vae "
                   "tiny`. [default: full; for an ONNX or engine folder, the VAE it was exported with]")
@click.option("--steps", type=click.IntRange(1, 1000), default=None,
              help="Sampling steps [default: the model's, else 100]. A one-pass model takes one step whatever is asked.")
@click.option("--sampler", type=click.Choice(["euler_a", "euler", "dpmpp_2m", "dpmpp_2m_trailing", "lcm"]), default=None,
              help="Sampler [default: the model's, else euler_a as in the paper]; lcm is for LCM-distilled models.")
@click.option("--spacing", type=click.Choice(["linspace", "leading", "trailing", "karras", "lcm"]), default=None,
              help="Timestep spacing [default: the model's, else the sampler's: karras for dpmpp_2m, lcm for lcm, the "
                   "scheduler config's otherwise]. For 1-4 steps use trailing: leading runs one step at t = 1.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--guidance-scale", type=float, default=None, help="Text guidance s_T [default 7.5].")
@click.option("--image-guidance-scale", type=float, default=None, help="Image guidance s_I [default 1.5].")
@click.option("--resolution", default=None,
              help="Long side the model works at, or 'native' (input size) [default: the model's, else 256].")
@click.option("--task", type=click.Choice(["segmentation", "detection", "depth", "classification"]), default=None,
              help="Force the task instead of reading it from the instruction.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("icv-output"), show_default=True,
              help="Folder for the pictures and answers (one subfolder per instruction).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout (a list when several instructions).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@debug_option
@one_line_errors
def main(image, instruction, model, engine, device, dtype, vae, steps, sampler, spacing, seed, guidance_scale,
         image_guidance_scale, resolution, task, output, as_json, quiet):
    """Run InstructCV on IMAGE with one or more INSTRUCTIONs (they share one image encoding and run as one batch)."""
    setup_logging()
    instructions = [text for text in instruction]
    from .images import load_image
    from .pipeline import load
    from .tasks.routing import route

    picture = load_image(image)  # refuse bad input before the (slow) model load
    for text in instructions:
        route(text, task=task)
    res_value = parse_resolution(resolution)
    pipe = load(model, engine=engine, device=device, dtype=dtype, vae=vae)
    pipe.progress = not quiet
    results = pipe.run_many(picture, instructions, steps=steps, sampler=sampler, seed=seed, guidance_scale=guidance_scale,
                            image_guidance_scale=image_guidance_scale, resolution=res_value, task=task, spacing=spacing)
    base = output / slug(image.stem)
    for k, res in enumerate(results, 1):
        res.save(base / f"{k:02d}-{slug(res.instruction)}")
    if as_json:
        payload = [r.to_json() for r in results]
        click.echo(json.dumps(payload if len(payload) > 1 else payload[0], indent=2))
    else:
        for res in results:
            click.echo(f"{res.instruction!r}: {summary(res)}  -> {res.files['overlay']}")


def summary(res) -> str:
    what = f"{res.task}" + (f" of {res.category}" if res.category else "")
    if res.task == "segmentation":
        return f"{what}: {res.mask.mean():.1%} of the image"
    if res.task == "detection":
        return f"{what}: {len(res.boxes)} box(es)" + (f", best score {res.scores.max():.2f}" if len(res.scores) else "")
    if res.task == "depth":
        return f"{what}: {res.depth.min():.2f} to {res.depth.max():.2f} m"
    return f"{what}: {'yes' if res.present else 'no'} (score {res.score:+.2f})"


if __name__ == "__main__":
    main()
