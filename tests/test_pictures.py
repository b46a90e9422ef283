"""Pictures that explain themselves, where they are made: `icv-data grid`, training-validation strips, icv-eval's
example pictures, `icv-demo`'s contact sheet; and the example scenes the README's first command runs on.

No assertion looks at what a model answered: the stand-in models have random weights."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from click.testing import CliRunner
from PIL import Image

from icv_deploy.tasks.visualize import FRAME_COLOR, TILE_HEIGHT, labelled_grid

ROOT = Path(__file__).resolve().parents[1]
WHITE = (255, 255, 255)


def text_pixels(region: np.ndarray) -> int:
    """Pixels clearly darker than the white page: text (or pictures) drawn there."""
    return int((region.astype(int).sum(axis=2) < 3 * 255 - 150).sum())


def solid(colour, h=64, w=64) -> np.ndarray:
    return np.full((h, w, 3), colour, np.uint8)


# ---- icv-data grid -------------------------------------------------------------------------------------------------
class FakeDataset:
    """The two things make_grid reads from a `datasets.Dataset`: a column and a row."""

    def __init__(self, rows):
        self.rows = rows

    def __getitem__(self, key):
        return [r[key] for r in self.rows] if isinstance(key, str) else self.rows[key]


def test_icv_data_grid_frames_white_targets_and_labels_its_columns():
    from icv_deploy.training.grid import CELL, make_grid

    rows = [{"task": "segmentation", "edit_prompt": "Segment the ball", "input_image": Image.fromarray(solid((90, 140, 60))),
             "edited_image": Image.fromarray(solid(WHITE))}]
    grid = np.asarray(make_grid(FakeDataset(rows), per_task=1))
    # The white target: a CELL x CELL white square whose one-pixel frame is grey, so it stands out from the page.
    white = np.all(grid == 255, axis=2)
    frame = np.all(grid == FRAME_COLOR, axis=2)
    lines = np.nonzero(frame.sum(axis=1) >= CELL)[0]  # the frames' top and bottom lines (both tiles on the same rows)
    columns = np.nonzero(frame.sum(axis=0) >= CELL)[0]  # their left and right lines: input's two, then target's two
    assert len(lines) == 2 and len(columns) == 4
    top, bottom, left, right = lines[0], lines[1], columns[2], columns[3]
    assert (bottom - top - 1, right - left - 1) == (CELL, CELL)
    assert white[top + 1:bottom, left + 1:right].all()
    # Column labels above the tiles: text on the page between the top and the frames.
    assert text_pixels(grid[:top - 1, left:right]) > 20 and text_pixels(grid[:top - 1, left - CELL - 6:left - 6]) > 20


# ---- training validation strips -------------------------------------------------------------------------------------
class FakeInstructPix2Pix:
    """What sampled_predictor calls on diffusers' pipeline: a call that returns an image, a VAE dtype, a progress switch."""

    vae = SimpleNamespace(dtype=__import__("torch").float32)

    def set_progress_bar_config(self, **_):
        return None  # the fake has no progress bar to configure

    calls = []

    def __call__(self, prompt, image, **settings):
        self.calls.append(settings)
        return SimpleNamespace(images=[Image.fromarray(solid((10, 20, 200), *image.size[::-1]))])


def test_validation_strip_is_labelled_and_readable():
    import torch

    from icv_deploy.training.train_validation import COLUMNS, predict_grid, sampled_predictor

    rows = [{"input_image": Image.fromarray(solid((90, 140, 60), 40, 40)), "edited_image": Image.fromarray(solid(WHITE, 40, 40)),
             "edit_prompt": f"Segment the ball number {i}"} for i in range(2)]
    predict = sampled_predictor(FakeInstructPix2Pix(), steps=1, seed=0, device=torch.device("cpu"))
    grid = np.asarray(predict_grid(predict, rows, [0, 1], resolution=32))
    # 32-pixel tiles enlarged to TILE_HEIGHT: three columns side by side, two rows (plus labels and captions).
    assert grid.shape[1] >= 3 * TILE_HEIGHT and grid.shape[0] >= 2 * TILE_HEIGHT + 2 * 15
    assert np.all(grid == (10, 20, 200), axis=2).sum() == 2 * TILE_HEIGHT * TILE_HEIGHT  # the prediction, enlarged
    unlabelled = labelled_grid([[solid(WHITE, 32, 32)] * 3] * 2)
    assert grid.shape[0] > unlabelled.shape[0] + 3 * 14  # a header and two instruction captions
    assert len(COLUMNS) == 3 and text_pixels(grid[:45]) > 30


def test_validation_strips_sample_at_the_models_own_guidance():
    import torch

    from icv_deploy.training.train_validation import sampled_predictor

    pipe = FakeInstructPix2Pix()
    pipe.calls = []
    image = Image.fromarray(solid((90, 140, 60), 16, 16))
    sampled_predictor(pipe, steps=3, seed=0, device=torch.device("cpu"))("Segment the ball", image)
    sampled_predictor(pipe, steps=3, seed=0, device=torch.device("cpu"), guidance_scale=1.0,
                      image_guidance_scale=1.0)("Segment the ball", image)
    assert [(c["guidance_scale"], c["image_guidance_scale"], c["num_inference_steps"]) for c in pipe.calls] == \
        [(7.5, 1.5, 3), (1.0, 1.0, 3)]  # the paper's by default; the demo's runtime (1 / 1) when its config says so


# ---- icv-eval example pictures --------------------------------------------------------------------------------------
def test_eval_example_picture_is_labelled(tmp_path):
    from icv_deploy.training.datasets import Example
    from icv_deploy.training.eval_queries import Query
    from icv_deploy.training.evaluate import EXAMPLE_COLUMNS, save_example_picture

    image = solid((90, 140, 60), 96, 128)
    mask = np.zeros((96, 128), bool)
    mask[20:60, 30:90] = True
    example = Example(image=image, task="segmentation", category="ball", source="synth", image_id="0", mask=mask)
    query = Query(key="synth/0/segmentation/ball", task="segmentation", category="ball", dataset="synth", image_id="0",
                  instruction="Segment the ball", load=lambda: example)
    res = SimpleNamespace(visual=solid((5, 250, 5), 32, 32), overlay=lambda: image, colors=None)
    save_example_picture(tmp_path, query, example, res)
    [path] = list(tmp_path.glob("*.png"))
    picture = np.asarray(Image.open(path).convert("RGB"))
    # Four tiles at TILE_HEIGHT (the 96-pixel input enlarged), under labels, above the instruction.
    assert len(EXAMPLE_COLUMNS) == 4 and picture.shape[0] > TILE_HEIGHT + 2 * 15
    assert picture.shape[1] >= 4 * TILE_HEIGHT
    assert np.all(picture == (5, 250, 5), axis=2).sum() == TILE_HEIGHT * TILE_HEIGHT  # the 32-pixel output, enlarged
    assert text_pixels(picture[:45]) > 30 and text_pixels(picture[-45:]) > 30


# ---- icv-demo's contact sheet ---------------------------------------------------------------------------------------
def fake_result(instruction, colour):
    return SimpleNamespace(instruction=instruction, overlay=lambda: solid(colour, 48, 64))


def test_contact_sheet_rows_are_images_columns_are_instructions():
    from icv_deploy.demo import contact_sheet

    colours = [(250, 0, 0), (0, 250, 0)]
    images = [solid((0, 0, 250), 48, 64)] * 3
    results = [[fake_result(t, c) for t, c in zip(["Segment the ball", "Detect the cube"], colours)] for _ in images]
    names = ["a.png", "b.png", "c.png"]
    sheet = contact_sheet(images, results, names)
    # Every cell is its picture enlarged to TILE_HEIGHT (4:3, so 341 pixels wide): one input and one overlay per task.
    cell = TILE_HEIGHT * round(64 * TILE_HEIGHT / 48)
    for colour in [(0, 0, 250), *colours]:
        assert np.all(sheet == colour, axis=2).sum() == 3 * cell
    # A row per image: one image fewer is one row (a tile and a gap) less, the same width.
    two = contact_sheet(images[:2], results[:2], names[:2])
    assert sheet.shape[0] - two.shape[0] == TILE_HEIGHT + 10 and sheet.shape[1] == two.shape[1]
    # Labels: other instructions write other column labels, other names other row labels.
    relabelled = contact_sheet(images, [[fake_result(t, c) for t, c in zip(["Segment the cone", "Detect the ball"], colours)]
                                        for _ in images], names)
    header = sheet.shape[0] - 3 * (TILE_HEIGHT + 10)
    assert header > 15 and not np.array_equal(sheet[:header], relabelled[:header])
    assert np.array_equal(sheet[header:], relabelled[header:])
    renamed = contact_sheet(images, results, ["x.png", "y.png", "z.png"])
    assert not np.array_equal(sheet[header:, :150], renamed[header:, :150])
    # A title and a red warning line add rows on top.
    warned = contact_sheet(images, results, names, title="model demo", warning="RANDOM WEIGHTS")
    extra = warned.shape[0] - sheet.shape[0]
    assert extra > 30 and np.array_equal(warned[extra:], sheet)
    assert np.all(warned[:extra] == (200, 0, 0), axis=2).sum() > warned.shape[1] * 10
    # A trained model's caveat: an amber line, the grid unchanged.
    cautioned = contact_sheet(images, results, names, title="model demo", caveat="detection is not learnt")
    extra = cautioned.shape[0] - sheet.shape[0]
    assert np.array_equal(cautioned[extra:], sheet)
    assert np.all(cautioned[:extra] == (255, 200, 60), axis=2).sum() > cautioned.shape[1] * 10


def test_icv_demo_writes_results_and_a_contact_sheet(demo_assets, tmp_path):
    from icv_deploy.demo import DEFAULT_INSTRUCTIONS, SHEET_NAME, main

    images = [ROOT / "examples" / "scene-1.png", ROOT / "examples" / "scene-2.png"]
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, [*map(str, images), "--steps", "1", "--resolution", "32", "--quiet",
                                       "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert any(line.startswith("warning:") and "random weights" in line for line in result.stderr.splitlines())
    for name in ("scene-1", "scene-2"):
        folders = sorted((out / name).iterdir())
        assert len(folders) == len(DEFAULT_INSTRUCTIONS) == 4
        tasks = [json.loads((f / "result.json").read_text())["task"] for f in folders]
        assert tasks == ["segmentation", "detection", "depth", "classification"]
        assert all((f / "overlay.png").exists() for f in folders)
    sheet = np.asarray(Image.open(out / SHEET_NAME).convert("RGB"))
    # Two rows of TILE_HEIGHT tiles, five columns (input + four tasks) of at least a 256-pixel square each.
    assert sheet.shape[0] > 2 * TILE_HEIGHT + 2 * 15 and sheet.shape[1] > 5 * TILE_HEIGHT
    assert np.all(sheet == (200, 0, 0), axis=2).sum() > 1000  # the random-weights warning line
    assert str(out / SHEET_NAME) in result.stdout


def test_icv_demo_refuses_bad_input_before_writing(demo_assets, tmp_path):
    from icv_deploy.demo import main

    out = tmp_path / "demo"
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    result = CliRunner().invoke(main, [str(ROOT / "examples" / "scene-1.png"), str(bad), "--output", str(out)])
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    result = CliRunner().invoke(main, [str(ROOT / "examples" / "scene-1.png"), "-i", "Tell me a joke about penguins",
                                       "--output", str(out)])
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    assert not out.exists()


# ---- the example scenes ---------------------------------------------------------------------------------------------
def test_example_scenes_are_the_renderers_seed_7_scenes():
    """examples/scene-N.png are scenes of the synthetic renderer with a seed no training data uses (7), as
    examples/scenes.json records: re-rendering gives the same pixels."""
    from icv_deploy.training.synthetic import render_scene

    meta = json.loads((ROOT / "examples" / "scenes.json").read_text())
    assert meta["seed"] == 7 and meta["size"] == 256 and len(meta["scenes"]) >= 4
    name, scene = sorted(meta["scenes"].items())[0]
    rendered = render_scene(meta["seed"], scene["index"], meta["size"])
    assert np.array_equal(np.asarray(Image.open(ROOT / "examples" / name).convert("RGB")), rendered.rgb)
    assert [f"{o.color} {o.category}" for o in rendered.objects] == scene["objects"]
    for name in meta["scenes"]:
        with Image.open(ROOT / "examples" / name) as im:
            assert im.size == (256, 256)
