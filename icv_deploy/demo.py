"""`icv-demo`: a model (the bundled demo by default) on several images, all four tasks, and one picture of it all.

    icv-demo examples/scene-*.png            # -> icv-demo/contact-sheet.png and icv-demo/<image>/<NN-instruction>/

The contact sheet has a row per image and a column per instruction (the input first), each column labelled with
its instruction, each row with its image's name; the title names the model and its settings, and says so in red when
the weights are random, or in amber what a trained model is known to get wrong (the `caveat` of its
icv_config.json). Every instruction also writes what `icv-infer` writes (visual.png, overlay.png, the raw answer,
result.json).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from .backends import ENGINES
from .cli import parse_resolution, setup_logging, slug, summary
from .cli_common import debug_option, one_line_errors
from .model_files import default_model
from .tasks.visualize import TILE_HEIGHT, labelled_grid, text_block, text_size

# One instruction per task, naming categories of the synthetic scenes the demo model was trained on.
DEFAULT_INSTRUCTIONS = (
    "Segment the ball",
    "Detect the cube",
    "Create a monocular depth map",
    "Show blue if the picture has a cone, otherwise show black",
)
SHEET_NAME = "contact-sheet.png"
RANDOM_WEIGHTS_TITLE = "RANDOM WEIGHTS: these answers are meaningless"


def contact_sheet(images: list[np.ndarray], results: list[list], image_names: list[str], title: str = "",
                  warning: str = "", caveat: str = "", tile_height: int = TILE_HEIGHT) -> np.ndarray:
    """Rows = images, columns = the input then each instruction's overlay, labelled; `title`, a red `warning` and
    an amber `caveat` on top."""
    instructions = [res.instruction for res in results[0]] if results else []
    rows = [[image] + [res.overlay() for res in row] for image, row in zip(images, results)]
    grid = labelled_grid(rows, column_labels=["input", *instructions], row_labels=image_names, tile_height=tile_height)
    width, size = grid.shape[1], text_size(tile_height)
    head = [text_block(title, width, size, max_lines=2)] if title else []
    if warning:
        head.append(text_block(warning, width, size, color=(255, 255, 255), background=(200, 0, 0), max_lines=2))
    if caveat:
        head.append(text_block(caveat, width, size, color=(0, 0, 0), background=(255, 200, 60), max_lines=3))
    return np.concatenate([*head, grid], axis=0)


def unique_names(paths: list[Path]) -> list[str]:
    """Folder names for the images: their slugged stems, numbered where two would clash."""
    names: list[str] = []
    for path in paths:
        name, k = slug(path.stem), 2
        while name in names:
            name, k = f"{slug(path.stem)}-{k}", k + 1
        names.append(name)
    return names


EPILOG = """\b
Examples:
  icv-demo examples/scene-*.png
  icv-demo --model ./instructcv -i "Segment the cat" -i "Create a monocular depth map" cat.jpg dog.jpg
  ICV_MODEL=demo-1step icv-demo examples/scene-*.png --output one-step/
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-i", "--instruction", "instructions", multiple=True, metavar="TEXT",
              help="An instruction to run on every image; repeatable. [default: one per task: "
                   + "; ".join(f'"{t}"' for t in DEFAULT_INSTRUCTIONS) + "]")
@click.option("--model", default=default_model, show_default="$ICV_MODEL, else demo",
              help="A bundled model by name (demo, demo-1step), a diffusers folder or hub id (torch), an ONNX folder "
                   "(onnx), an engine folder (trt), or an ONNX or OpenVINO IR folder (openvino).")
@click.option("--engine", type=click.Choice(ENGINES), default="torch", show_default=True, help="Backend.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--vae", type=click.Choice(["full", "tiny"]), default=None,
              help="full: the model's VAE; tiny: TAESD from <model>/vae_tiny. [default: the model's own]")
@click.option("--steps", type=click.IntRange(1, 1000), default=None, help="Sampling steps [default: the model's].")
@click.option("--sampler", type=click.Choice(["euler_a", "euler", "dpmpp_2m", "dpmpp_2m_trailing", "lcm"]), default=None,
              help="Sampler [default: the model's].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resolution", default=None, help="Long side the model works at, or 'native' [default: the model's].")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("icv-demo"), show_default=True,
              help=f"Folder for {SHEET_NAME} and one subfolder per image.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@debug_option
@one_line_errors
def main(images, instructions, model, engine, device, vae, steps, sampler, seed, resolution, output, quiet):
    """Run every INSTRUCTION on every IMAGE and write a contact sheet: rows = images, columns = tasks."""
    from . import atomic
    from .images import load_image
    from .pipeline import load
    from .tasks.routing import route

    setup_logging()
    instructions = list(instructions or DEFAULT_INSTRUCTIONS)
    pictures = [load_image(path) for path in images]  # refuse bad input before the (slow) model load
    for text in instructions:
        route(text)
    res_value = parse_resolution(resolution)
    pipe = load(model, engine=engine, device=device, vae=vae)
    pipe.progress = not quiet
    names = unique_names(list(images))
    all_results = []
    for name, picture in zip(names, pictures):
        results = pipe.run_many(picture, instructions, steps=steps, sampler=sampler, seed=seed, resolution=res_value)
        for k, res in enumerate(results, 1):
            res.save(output / name / f"{k:02d}-{slug(res.instruction)}")
            click.echo(f"{name}: {res.instruction!r}: {summary(res)}")
        all_results.append(results)

    s = all_results[0][0].settings
    sampling = "one UNet pass" if pipe.one_pass else f"{s['sampler']}, {s['steps']} step{'' if s['steps'] == 1 else 's'}"
    title = f"model {model}: {sampling}, {s['resolution'] or 'native'} px, {s['engine']}"
    sheet = contact_sheet(pictures, all_results, [p.name for p in images], title=title,
                          warning=RANDOM_WEIGHTS_TITLE if pipe.random_weights else "", caveat=pipe.caveat)
    with atomic.atomic_path(output / SHEET_NAME, suffix=".png") as tmp:
        from PIL import Image

        Image.fromarray(sheet).save(tmp, format="PNG")
    click.echo(f"contact sheet: {output / SHEET_NAME}")


if __name__ == "__main__":
    main()
