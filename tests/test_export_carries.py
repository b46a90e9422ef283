"""Export carries what the runtime needs: the model's icv_config.json travels into ONNX and engine folders (so every
engine answers with the model's defaults and no options), dummy inputs come from the model's own config (a
tokenizer and text encoder of 1,000 tokens, not CLIP's 49,408), and the source hash covers whole files (a
re-trained checkpoint of the same size never resumes stale graphs)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import icv_deploy
from icv_deploy.export.onnx_export import export_onnx

from test_trt import fake_tensorrt  # noqa: F401  (fixture: TensorRT and polygraphy faked)

pytestmark = pytest.mark.slow

MODEL_SETTINGS = {"sampler": "euler", "steps": 3, "resolution": 32, "guidance_scale": 5.0, "image_guidance_scale": 1.2,
                  "trained_steps": 7, "a_future_setting": {"kept": True}}


def small_vocab_tokenizer(folder, merges: int = 486):
    """A CLIP BPE tokenizer with only the first `merges` merges: 256 + 256 byte tokens + merges + 2 specials."""
    from transformers import CLIPTokenizer

    from icv_deploy.clip_vocab import clip_vocab_and_merges

    vocab, all_merges = clip_vocab_and_merges()
    kept = all_merges[:merges]
    tokens = list(vocab)[:512] + ["".join(m.split()) for m in kept] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(kept) + "\n", encoding="utf-8")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77).save_pretrained(folder)
    return folder, len(tokens)


@pytest.fixture(scope="module")
def small_vocab_model(tmp_path_factory):
    """A tiny random model whose tokenizer and text encoder have 1,000 tokens, with its own icv_config.json."""
    from icv_deploy.testing import build_pipeline, tiny_configs

    root = tmp_path_factory.mktemp("small-vocab")
    tokenizer, size = small_vocab_tokenizer(root / "tokenizer")
    unet, vae, text = tiny_configs(vae_levels=2)
    pipe = build_pipeline(unet, vae, {**text, "vocab_size": size}, seed=4, tokenizer_dir=tokenizer)
    pipe.save_pretrained(root / "model", safe_serialization=True)
    (root / "model" / "icv_config.json").write_text(json.dumps(MODEL_SETTINGS))
    assert size == 1000 and len(pipe.tokenizer) == 1000
    return root / "model"


@pytest.fixture(scope="module")
def small_vocab_onnx(small_vocab_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("small-vocab-onnx") / "onnx"
    export_onnx(small_vocab_model, out, log=lambda *_: None)  # verified: random token ids must fit the text encoder
    return out


def test_export_takes_dummy_token_ids_from_the_models_vocabulary(small_vocab_onnx):
    manifest = json.loads((small_vocab_onnx / "manifest.json").read_text())
    assert manifest["model_info"]["vocab_size"] == 1000
    assert manifest["submodels"]["text_encoder"]["max_rel_error"] < 1e-4


def test_onnx_answers_like_torch_with_no_options(small_vocab_model, small_vocab_onnx, scene_image):
    assert (small_vocab_onnx / "icv_config.json").read_bytes() == (small_vocab_model / "icv_config.json").read_bytes()
    listed = {f["path"] for f in json.loads((small_vocab_onnx / "manifest.json").read_text())["copied_files"]}
    assert listed == {"icv_config.json", "model_index.json"}
    torch_pipe = icv_deploy.load(small_vocab_model)
    onnx_pipe = icv_deploy.load(small_vocab_onnx, engine="onnx")
    assert onnx_pipe.defaults == torch_pipe.defaults and torch_pipe.defaults["steps"] == 3
    torch_res = torch_pipe(scene_image, "Segment the red box")  # no options: the model's own defaults
    onnx_res = onnx_pipe(scene_image, "Segment the red box")
    settings = ("steps", "sampler", "resolution", "guidance_scale", "image_guidance_scale")
    assert [onnx_res.settings[k] for k in settings] == [torch_res.settings[k] for k in settings] == [3, "euler", 32, 5.0, 1.2]
    assert onnx_res.visual.shape == torch_res.visual.shape == (22, 32, 3)  # 60x84 at a long side of 32
    assert np.abs(onnx_res.visual.astype(int) - torch_res.visual.astype(int)).max() <= 3  # the parity tolerance


def test_onnx_folder_refuses_a_damaged_copy_of_the_settings(small_vocab_onnx, tmp_path):
    from icv_deploy.backends.onnx_backend import check_onnx_folder
    from icv_deploy.errors import ModelFilesError

    copy = shutil.copytree(small_vocab_onnx, tmp_path / "copy")
    (copy / "icv_config.json").write_text(json.dumps({**MODEL_SETTINGS, "steps": 100}))
    with pytest.raises(ModelFilesError, match="icv_config.json"):
        check_onnx_folder(copy)


def test_engine_folders_carry_the_settings(fake_tensorrt, small_vocab_onnx, tmp_path):  # noqa: F811
    from icv_deploy.backends.trt_backend import check_engine_folder
    from icv_deploy.errors import ModelFilesError
    from icv_deploy.export.engine import build_engines
    from icv_deploy.model_files import model_config

    out = tmp_path / "engines"
    metadata = build_engines(small_vocab_onnx, out, min_res=32, opt_res=32, max_res=64, log=lambda *_: None)
    assert model_config(out) == MODEL_SETTINGS  # what the pipeline reads for every engine
    assert {f["path"] for f in metadata["copied_files"]} == {"icv_config.json", "model_index.json"}
    check_engine_folder(out)
    (out / "icv_config.json").write_text("{}")
    with pytest.raises(ModelFilesError, match="icv_config.json"):
        check_engine_folder(out)


def test_a_retrained_checkpoint_of_the_same_size_never_resumes_stale_graphs(tiny_model, tmp_path, interrupt_onnx_export_at):

    model = shutil.copytree(tiny_model, tmp_path / "model")
    out = tmp_path / "onnx"
    interrupt_onnx_export_at("vae_encoder")
    with pytest.raises(KeyboardInterrupt):
        export_onnx(model, out, check=False, log=lambda *_: None)
    stale = (out / "unet" / "model.onnx").read_bytes()

    # "Re-train": flip the sign of a few float32 weights in the middle of the UNet's file, more than 1 MiB from
    # either end (where a hash of each file's first and last MiB would not look); the size stays the same.
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    middle = header + (len(data) - header) // 2 // 4 * 4
    assert middle - (1 << 20) > 0 and len(data) - middle > 1 << 20
    for k in range(64):
        data[middle + 4 * k + 3] ^= 0x80
    weights.write_bytes(bytes(data))

    interrupt_onnx_export_at(None)
    messages = []
    export_onnx(model, out, check=False, log=messages.append)
    assert not [m for m in messages if "already exported, kept" in m]
    assert (out / "unet" / "model.onnx").read_bytes() != stale
