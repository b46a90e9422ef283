"""`run_pairs`: (image, instruction) pairs from different requests share a UNet batch when their images share a
working size, and each result is the one its pair gets alone with the same seed (what the server's dynamic
batching relies on)."""

from __future__ import annotations

import numpy as np
import pytest

import icv_deploy
from icv_deploy.errors import IcvError


@pytest.fixture(scope="module")
def pipe(tiny_model):
    pipe = icv_deploy.load(tiny_model)
    pipe.progress = False
    return pipe


def test_pairs_of_different_images_and_seeds_equal_their_single_runs(pipe, scene_image, monkeypatch):
    other = np.ascontiguousarray(scene_image[::-1, ::-1])  # same size, different content
    small = scene_image[:40, :56]  # another working size: its own batch
    pairs = [(scene_image, "Segment the box"), (other, "Detect the box"), (small, "Create a monocular depth map"),
             (scene_image, "Show blue if the picture has a box, otherwise show black")]
    seeds = [3, 11, 5, 3]
    unet_batches = []
    predict = pipe.backend.predict_noise
    monkeypatch.setattr(pipe.backend, "predict_noise", lambda x, t, e: unet_batches.append(x.shape[0]) or predict(x, t, e))
    batched = pipe.run_pairs(pairs, steps=3, seed=seeds, resolution=None)
    # Two working sizes: one batch of 3 pairs (9 UNet rows per step), one of 1 pair (3 rows).
    assert sorted(set(unet_batches)) == [3, 9] and len(unet_batches) == 2 * 3
    monkeypatch.undo()
    for (image, text), seed, res in zip(pairs, seeds, batched):
        alone = pipe(image, text, steps=3, seed=seed, resolution=None)
        assert res.instruction == text and res.settings["seed"] == seed and res.image.shape == image.shape
        assert res.task == alone.task and res.visual.shape == alone.visual.shape
        assert np.abs(res.visual.astype(int) - alone.visual.astype(int)).max() <= 1


def test_per_pair_tasks_and_mismatched_lists(pipe, scene_image):
    pairs = [(scene_image, "the box"), (scene_image, "the sky")]
    results = pipe.run_pairs(pairs, steps=1, task=["segmentation", "detection"], resolution=None)
    assert [r.task for r in results] == ["segmentation", "detection"]
    with pytest.raises(IcvError, match="3 seed values for 2 pairs"):
        pipe.run_pairs(pairs, steps=1, seed=[1, 2, 3], task="segmentation")
