"""Reading the task from what the model painted (tasks/painted.py).

The paintings are drawn by encodings.py, the training targets, independently of the reader; the noisy
versions add what a diffusion model's output has: pixel noise, blur, JPEG-like compression, soft edges.
"""

import cv2
import numpy as np
import pytest

from icv_deploy.tasks.encodings import (COLORS, TASKS, encode_classification, encode_depth, encode_detection,
                                        encode_segmentation)
from icv_deploy.tasks.painted import read_task, task_scores

SIZE = (96, 128)


def photo(seed, grey=False):
    """A smooth random colour (or grey) picture, standing in for the model's input image."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    image = cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 4), None, 0, 255, cv2.NORM_MINMAX)
    return np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8) if grey else image


def blobs(seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE[0], 0:SIZE[1]] / np.array(SIZE).reshape(2, 1, 1)
    mask = np.zeros(SIZE, bool)
    for _ in range(rng.integers(1, 4)):
        cx, cy, r = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.1, 0.25)
        mask |= (x - cx) ** 2 + (y - cy) ** 2 < r ** 2
    return mask


def scene_depth(seed):
    """Metric depth of a floor receding to a wall, with an object in front: a smooth ramp and a step."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(1.0, rng.uniform(5, 9.5), SIZE[0])[::-1]
    depth = np.repeat(rows[:, None], SIZE[1], axis=1)
    depth[30:70, 40:80] = rng.uniform(1.5, 3.0)
    return depth


def paintings(seed, image):
    """(task, painting) for each task, as encodings.py draws the training targets."""
    boxes = np.array([[10, 12, 60, 70], [70, 20, 120, 50]], dtype=float)
    colour = [c for c in COLORS if c not in ("black", "white", "gray", "grey")][seed % 10]
    return [
        ("segmentation", encode_segmentation(blobs(seed))),
        ("detection", encode_detection(image, boxes)),
        ("detection", image.copy()),  # nothing found: no outline
        ("depth", encode_depth(scene_depth(seed))),
        ("classification", encode_classification(True, SIZE, colour, "black")),
    ]


def noisy(painting, kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "clean":
        return painting
    if kind == "noise":
        return np.clip(painting + rng.normal(0, 10, painting.shape), 0, 255).astype(np.uint8)
    if kind == "blur":
        return cv2.GaussianBlur(painting, (0, 0), 1.5)
    ok, data = cv2.imencode(".jpg", painting[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 60])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]


@pytest.mark.parametrize("grey_input", [False, True], ids=["colour-input", "grey-input"])
@pytest.mark.parametrize("kind", ["clean", "noise", "blur", "jpeg"])
@pytest.mark.parametrize("seed", range(4))
def test_reads_each_painting_as_its_task(seed, kind, grey_input):
    image = photo(seed, grey=grey_input)
    for task, painting in paintings(seed, image):
        got = read_task(noisy(painting, kind, seed), image)
        assert got == task, (task, kind, task_scores(noisy(painting, kind, seed), image))


def test_scores_are_fractions_and_the_best_wins():
    image = photo(0)
    for task, painting in paintings(0, image):
        scores = task_scores(painting, image)
        assert set(scores) == set(TASKS) and all(0.0 <= v <= 1.0 for v in scores.values())
        assert max(scores, key=scores.get) == task


@pytest.mark.parametrize("value,task", [(0, "segmentation"), (255, "segmentation"), (128, "depth")])
def test_solid_grey_paintings_are_masks_or_flat_depth(value, task):
    # A solid black painting is an empty mask, not the classification colour black (see painted.py).
    assert read_task(np.full((*SIZE, 3), value, np.uint8), photo(1)) == task


def test_candidates_limit_the_answer_and_detection_needs_the_input():
    image = photo(2)
    for task, painting in paintings(2, image):
        others = tuple(t for t in TASKS if t != task)
        assert read_task(painting, image, candidates=others) in others
    mask = encode_segmentation(blobs(2))
    assert task_scores(encode_detection(image, np.array([[5, 5, 50, 50]])))["detection"] == 0.0  # no input given
    with pytest.raises(ValueError, match="differ in size"):
        task_scores(mask, image[:50])
    with pytest.raises(ValueError, match="HxWx3"):
        task_scores(mask[..., 0], image)


def test_the_pipeline_reads_an_open_task_from_the_painting(tiny_model, scene_image):
    """Four instructions that leave the task open; the decoder returns one painting of each kind (drawn by
    encodings.py on the model's input), so each result must carry that task, decided by the painting."""
    import icv_deploy

    pipe = icv_deploy.load(tiny_model)
    pipe.progress = False
    h, w = scene_image.shape[:2]  # resolution=None keeps 60x84, a multiple of the VAE scale factor
    mask = np.zeros((h, w), bool)
    mask[30:50, 20:45] = True
    painted = [encode_segmentation(mask), encode_detection(scene_image, np.array([[20, 30, 45, 50]])),
               encode_depth(np.linspace(1, 9, h)[:, None].repeat(w, axis=1)),
               encode_classification(True, (h, w), "blue", "black")]
    pipe.decode_latents = lambda latents: np.stack(painted[:len(latents)])
    results = pipe.run_many(scene_image, ["Show me the red box", "the red box", "Is there a red box?",
                                          "Mark the red box"], steps=1, resolution=None)
    assert [r.task for r in results] == ["segmentation", "detection", "depth", "classification"]
    assert {r.decided_by for r in results} == {"painted"} and {r.category for r in results} == {"red box"}
    assert results[0].mask[35, 30] and not results[0].mask[5, 5]
    assert len(results[1].boxes) == 1 and results[3].present and results[3].colors == ("blue", "black")
    assert results[2].to_json()["decided_by"] == "painted"

    said = pipe(scene_image, "Segment the red box", steps=1, resolution=None)
    forced = pipe(scene_image, "the red box", steps=1, resolution=None, task="depth")
    assert (said.task, said.decided_by) == ("segmentation", "text")
    assert (forced.task, forced.decided_by) == ("depth", "forced")
