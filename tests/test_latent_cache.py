"""The latent cache: what it holds for each example, and each distinct picture encoded once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from icv_deploy.training.latent_cache import load_or_build_cache


def _rows(pictures: list[Image.Image], targets: list[Image.Image]):
    from datasets import Dataset, Features, Image as ImageFeature

    features = Features({"input_image": ImageFeature(), "edited_image": ImageFeature()})
    return Dataset.from_dict({"input_image": pictures, "edited_image": targets}, features=features)


def _picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8))


def test_every_example_holds_its_own_pictures_encoding_and_repeats_are_encoded_once(tiny_model, tmp_path):
    from diffusers import AutoencoderKL

    from icv_deploy.training.augment import to_tensor

    vae = AutoencoderKL.from_pretrained(tiny_model, subfolder="vae").eval()
    scenes = [_picture(seed) for seed in range(3)]
    inputs = [scenes[i] for i in (0, 0, 1, 1, 2, 0, 2)]  # the tasks of a scene share its input picture
    targets = [_picture(10 + i) for i in range(6)] + [_picture(10)]  # the last repeats the first
    encoded = []
    real_encode = vae.encode
    vae.encode = lambda x: encoded.append(len(x)) or real_encode(x)

    cache = load_or_build_cache(tmp_path, vae, _rows(inputs, targets), resolution=16, flip=True, batch=3,
                                progress=False)
    # 3 distinct inputs and 6 distinct targets, each encoded plain and mirrored: 18 pictures, not 2 x 7 x 2
    assert sum(encoded) == 2 * (3 + 6)

    with torch.no_grad():  # the reference: each picture encoded alone
        for index, (picture, target) in enumerate(zip(inputs, targets)):
            x = to_tensor(picture)[None]
            for flip, pixels in enumerate((x, x.flip(-1))):
                expected = real_encode(pixels).latent_dist.mode()[0]
                torch.testing.assert_close(cache["image_latents"][index, flip], expected, rtol=1e-4, atol=1e-5)
            posterior = real_encode(to_tensor(target)[None]).latent_dist
            torch.testing.assert_close(cache["target_mean"][index, 0], posterior.mean[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(cache["target_std"][index, 0], posterior.std[0], rtol=1e-4, atol=1e-5)

    encoded.clear()  # a second run with the same autoencoder and data reads the file
    again = load_or_build_cache(tmp_path, vae, _rows(inputs, targets), resolution=16, flip=True, batch=3,
                                progress=False)
    assert encoded == [] and torch.equal(again["image_latents"], cache["image_latents"])


def test_an_interrupted_build_resumes_from_its_parts(tiny_model, tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_model, subfolder="vae").eval()
    inputs = [_picture(seed) for seed in range(7)]
    targets = [_picture(20 + seed) for seed in range(7)]
    whole = load_or_build_cache(tmp_path / "whole", vae, _rows(inputs, targets), resolution=16, flip=False, batch=2,
                                progress=False, part_rows=3)

    encoded = []
    real_encode = vae.encode

    def encode_then_fail(x):  # the machine goes away while the third part (rows 6-7) is encoded
        if sum(encoded) >= 2 * 6:
            raise KeyboardInterrupt
        encoded.append(len(x))
        return real_encode(x)

    vae.encode = encode_then_fail
    folder = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        load_or_build_cache(folder, vae, _rows(inputs, targets), resolution=16, flip=False, batch=2, progress=False,
                            part_rows=3)
    assert len(list((folder / "latents.parts").glob("*.safetensors"))) == 2 and not (folder / "latents.safetensors").exists()

    encoded.clear()
    vae.encode = lambda x: encoded.append(len(x)) or real_encode(x)
    resumed = load_or_build_cache(folder, vae, _rows(inputs, targets), resolution=16, flip=False, batch=2,
                                  progress=False, part_rows=3)
    assert sum(encoded) == 2  # only the last part's input and target
    for name, tensor in whole.items():
        torch.testing.assert_close(resumed[name], tensor)
    assert not (folder / "latents.parts").exists()
