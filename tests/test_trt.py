"""TensorRT path (issue 3): everything testable without TensorRT here; GPU tests skip with a reason elsewhere."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest
import torch

from icv_deploy.backends import trt_backend as trt_rt
from icv_deploy.backends.base import ModelInfo
from icv_deploy.errors import IcvError, ModelFilesError
from icv_deploy.export.submodels import submodels, trt_profile

SD15 = ModelInfo(vae_scale_factor=8, text_hidden_size=768)
TINY = ModelInfo(vae_scale_factor=2, text_hidden_size=32)
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


# ---- optimisation profiles ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("info", [SD15, TINY], ids=["f8", "f2"])
@pytest.mark.parametrize("batch", [1, 2])
def test_unet_profile_spans_guidance_batches_and_resolutions(info, batch):
    f = info.vae_scale_factor
    prof = trt_profile(submodels(info)["unet"], info, batch=batch, min_res=128, opt_res=256, max_res=512)
    lo, opt, hi = prof["sample"]
    assert lo == (3, 8, 128 // f, 128 // f) and opt == (3 * batch, 8, 256 // f, 256 // f) and hi == (3 * batch, 8, 512 // f, 512 // f)
    assert prof["timestep"] == ((3,), (3 * batch,), (3 * batch,))
    assert prof["encoder_hidden_states"][2] == (3 * batch, 77, info.text_hidden_size)
    assert all(shape[0] % 3 == 0 for shapes in prof.values() for shape in shapes)


def test_vae_and_text_profiles():
    specs = submodels(SD15)
    enc = trt_profile(specs["vae_encoder"], SD15, batch=2, min_res=64, opt_res=256, max_res=768)
    assert enc["sample"] == ((1, 3, 64, 64), (2, 3, 256, 256), (2, 3, 768, 768))  # pixels
    dec = trt_profile(specs["vae_decoder"], SD15, batch=2, min_res=64, opt_res=256, max_res=768)
    assert dec["latent_sample"] == ((1, 4, 8, 8), (2, 4, 32, 32), (2, 4, 96, 96))  # latents
    text = trt_profile(specs["text_encoder"], SD15, batch=1)
    assert text["input_ids"] == ((1, 77), (3, 77), (3, 77))


def test_static_profile_pins_the_opt_shape():
    prof = trt_profile(submodels(SD15)["unet"], SD15, batch=1, min_res=128, opt_res=256, max_res=512, static=True)
    assert prof["sample"] == ((3, 8, 32, 32),) * 3


def test_profile_refuses_bad_resolutions():
    with pytest.raises(IcvError, match="multiple of the VAE scale factor 8"):
        trt_profile(submodels(SD15)["unet"], SD15, min_res=100)
    with pytest.raises(IcvError, match="min <= opt <= max"):
        trt_profile(submodels(SD15)["unet"], SD15, min_res=512, opt_res=256, max_res=1024)


# ---- metadata checks (pure functions) ----------------------------------------------------------------------------
RUNTIME = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}


def test_engine_compat_accepts_the_same_machine():
    trt_rt.check_engine_compat(dict(RUNTIME), RUNTIME)


def test_engine_compat_refuses_another_tensorrt_version():
    with pytest.raises(ModelFilesError, match=r"TensorRT 10\.1\.0.*this machine has TensorRT 10\.3\.0.*build-engines"):
        trt_rt.check_engine_compat({**RUNTIME, "tensorrt_version": "10.1.0"}, RUNTIME)


def test_engine_compat_refuses_another_gpu():
    built = {**RUNTIME, "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    with pytest.raises(ModelFilesError, match=r"built for NVIDIA H100.*9\.0.*this GPU is NVIDIA A100.*8\.0"):
        trt_rt.check_engine_compat(built, RUNTIME)


def test_shapes_outside_the_profile_name_the_fix():
    prof = {"sample": ((3, 8, 16, 16), (3, 8, 32, 32), (3, 8, 64, 64))}
    trt_rt.check_shapes_in_profile("unet", {"sample": (3, 8, 16, 64)}, prof)
    with pytest.raises(IcvError, match="outside the engine's profile.*--max-resolution"):
        trt_rt.check_shapes_in_profile("unet", {"sample": (3, 8, 16, 72)}, prof)
    with pytest.raises(IcvError, match="outside"):
        trt_rt.check_shapes_in_profile("unet", {"sample": (6, 8, 32, 32)}, prof)


# ---- building with polygraphy, faked (no TensorRT here): profiles passed, atomic writes, metadata, reuse --------
@pytest.fixture
def fake_tensorrt(monkeypatch):
    """Stand-ins for tensorrt and polygraphy's builder, recording what the build asked for."""
    calls = []
    trt = types.SimpleNamespace(
        __version__="10.99.0", MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
        OnnxParserFlag=types.SimpleNamespace(NATIVE_INSTANCENORM="native_instancenorm"),
    )
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    import polygraphy.backend.trt as poly

    class Profile(dict):
        def add(self, name, min, opt, max):
            self[name] = (min, opt, max)
            return self

    state = {"fail_in_save": False}

    def save_engine(engine, path):
        with open(path, "wb") as fh:
            fh.write(b"PLAN:" + engine.encode())
        if state["fail_in_save"]:
            raise RuntimeError("disk full")

    monkeypatch.setattr(poly, "Profile", Profile)
    monkeypatch.setattr(poly, "CreateConfig", lambda **kw: kw)
    monkeypatch.setattr(poly, "network_from_onnx_path", lambda path, flags=None: path)
    monkeypatch.setattr(poly, "engine_from_network", lambda net, config=None, save_timing_cache=None:
                        calls.append((net, config, save_timing_cache)) or f"engine-of-{net}")
    monkeypatch.setattr(poly, "save_engine", save_engine)
    monkeypatch.setattr(trt_rt, "runtime_identity", lambda trt_module, device_index=0: dict(RUNTIME, tensorrt_version=trt_module.__version__))
    return calls, state


@pytest.fixture(scope="session")
def onnx_tiny_for_trt(tiny_model, tmp_path_factory):
    """The tiny model's ONNX export, shared with the other export test files (same path, built once)."""
    from icv_deploy.export.onnx_export import export_onnx

    out = tmp_path_factory.getbasetemp() / "icv-onnx-tiny"
    if not (out / "manifest.json").exists():
        export_onnx(tiny_model, out, log=lambda *_: None)
    return out


def test_build_engines_with_faked_tensorrt(fake_tensorrt, onnx_tiny_for_trt, tmp_path):
    from icv_deploy.export.engine import build_engines

    calls, state = fake_tensorrt
    out = tmp_path / "engines"
    meta = build_engines(onnx_tiny_for_trt, out, batch=1, min_res=32, opt_res=64, max_res=128, log=lambda *_: None)
    assert len(calls) == 4
    net, config, cache = calls[1]  # the UNet
    assert net.endswith("unet/model.onnx") and config["fp16"] is True and cache == str(out / "timing.cache")
    assert config["profiles"][0]["sample"] == ((3, 8, 16, 16), (3, 8, 32, 32), (3, 8, 64, 64))  # f = 2
    on_disk = json.loads((out / "engines.json").read_text())
    assert on_disk == meta and meta["tensorrt_version"] == "10.99.0" and meta["compute_capability"] == "8.0"
    assert meta["vae"] == "full"  # copied from the ONNX manifest, so the runtime can refuse the other VAE
    assert meta["engines"]["unet"]["profile"]["sample"][2] == [3, 8, 64, 64]
    assert (out / "unet.plan").read_bytes().startswith(b"PLAN:") and (out / "tokenizer").is_dir()
    assert trt_rt.check_engine_folder(out)["engines"].keys() == meta["engines"].keys()

    # Same ONNX, profile and machine: nothing rebuilt. A crash while saving leaves no .plan under the final name.
    build_engines(onnx_tiny_for_trt, out, batch=1, min_res=32, opt_res=64, max_res=128, log=lambda *_: None)
    assert len(calls) == 4
    (out / "unet.plan").unlink()
    state["fail_in_save"] = True
    with pytest.raises(RuntimeError, match="disk full"):
        build_engines(onnx_tiny_for_trt, out, batch=1, min_res=32, opt_res=64, max_res=128, log=lambda *_: None)
    assert not (out / "unet.plan").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_engines_built_from_a_tiny_vae_export_say_so(fake_tensorrt, onnx_taesd, tmp_path):
    from icv_deploy.backends.trt_backend import TrtBackend
    from icv_deploy.export.engine import build_engines

    out = tmp_path / "engines"
    meta = build_engines(onnx_taesd, out, min_res=32, opt_res=64, max_res=128, log=lambda *_: None)
    assert meta["vae"] == "tiny" and json.loads((out / "engines.json").read_text())["vae"] == "tiny"
    with pytest.raises(ModelFilesError, match="tiny VAE, vae=full was asked for"):
        TrtBackend.from_folder(out, vae="full")  # refused before TensorRT or a GPU is needed


def test_engine_folder_refusals(fake_tensorrt, onnx_tiny_for_trt, tmp_path):
    from icv_deploy.export.engine import build_engines

    out = tmp_path / "engines"
    build_engines(onnx_tiny_for_trt, out, min_res=32, opt_res=64, max_res=128, log=lambda *_: None)
    with open(out / "vae_decoder.plan", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(ModelFilesError, match="vae_decoder.plan.*truncated or replaced"):
        trt_rt.check_engine_folder(out)
    (out / "vae_decoder.plan").unlink()
    with pytest.raises(ModelFilesError, match="missing vae_decoder.plan"):
        trt_rt.check_engine_folder(out)
    meta = json.loads((out / "engines.json").read_text())
    (out / "engines.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ModelFilesError, match="version 99"):
        trt_rt.check_engine_folder(out)
    with pytest.raises(ModelFilesError, match="no engines.json"):
        trt_rt.check_engine_folder(tmp_path)


def test_trt_backend_refuses_cpu_device(fake_tensorrt, onnx_tiny_for_trt, tmp_path):
    from icv_deploy.backends import load_backend
    from icv_deploy.export.engine import build_engines

    out = tmp_path / "engines"
    build_engines(onnx_tiny_for_trt, out, min_res=32, opt_res=64, max_res=128, log=lambda *_: None)
    with pytest.raises(IcvError, match="needs a CUDA device"):
        load_backend(out, engine="trt", device="cpu")


# ---- CLI -------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here: the missing-TensorRT message cannot be shown")
def test_build_engines_without_tensorrt_exits_2_with_install_hint(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from icv_deploy.export.cli import main

    result = CliRunner().invoke(main, ["build-engines", "--onnx", str(tmp_path), "--output", str(tmp_path / "e")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "TensorRT is not installed" in lines[0] and "icv-deploy[gpu]" in lines[0]
    assert not (tmp_path / "e").exists()


def test_build_engines_needs_exactly_one_source(tmp_path):
    from click.testing import CliRunner

    from icv_deploy.export.cli import main

    result = CliRunner().invoke(main, ["build-engines", "--output", str(tmp_path / "e")])
    assert result.exit_code == 2 and "exactly one of --onnx" in result.output


def test_trt_backend_without_tensorrt_says_how_to_install(monkeypatch, fake_tensorrt, onnx_tiny_for_trt, tmp_path):
    from icv_deploy.export.engine import build_engines

    out = tmp_path / "engines"
    build_engines(onnx_tiny_for_trt, out, min_res=32, opt_res=64, max_res=128, log=lambda *_: None)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(IcvError, match=r"TensorRT is not installed: pip install 'icv-deploy\[gpu\]'"):
        trt_rt.TrtBackend.from_folder(out, device="cuda")


# ---- on a GPU with TensorRT ------------------------------------------------------------------------------------
@pytest.mark.trt
@pytest.mark.slow
@pytest.mark.skipif(not (HAS_TRT and torch.cuda.is_available()),
                    reason="needs TensorRT and a CUDA GPU (pip install 'icv-deploy[gpu]' on a GPU machine)")
@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "cuda-graph"])
def test_trt_backend_matches_onnx_on_gpu(cuda_graph, tiny_model, tmp_path):
    from icv_deploy.backends import load_backend
    from icv_deploy.export.engine import build_engines
    from icv_deploy.export.onnx_export import export_onnx

    onnx_dir = export_onnx(tiny_model, tmp_path / "onnx", log=lambda *_: None) and tmp_path / "onnx"
    build_engines(onnx_dir, tmp_path / "engines", min_res=32, opt_res=64, max_res=128, static=cuda_graph, log=lambda *_: None)
    trt_b = load_backend(tmp_path / "engines", engine="trt", device="cuda", cuda_graph=cuda_graph)
    ref = load_backend(onnx_dir, engine="onnx")
    g = torch.Generator().manual_seed(0)
    sample, text = torch.randn(3, 8, 32, 32, generator=g), torch.randn(3, 77, 32, generator=g)
    t = torch.full((3,), 500.5)
    for _ in range(2):  # the second call replays the CUDA graph
        got = trt_b.predict_noise(sample.cuda(), t.cuda(), text.cuda()).cpu()
    want = ref.predict_noise(sample, t, text)
    assert ((got - want).abs().max() / want.abs().max()).item() < 5e-2
    ids = torch.randint(0, 49408, (3, 77), generator=g)
    want_text = ref.encode_text(ids)
    assert ((trt_b.encode_text(ids.cuda()).cpu() - want_text).abs().max() / want_text.abs().max()).item() < 5e-2
