"""ONNX Runtime backend (issue 3): options, I/O binding, and refusing folders that do not match the runtime."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from icv_deploy.backends import load_backend
from icv_deploy.backends.onnx_backend import OnnxBackend
from icv_deploy.errors import IcvError, ModelFilesError


@pytest.fixture(scope="session")
def onnx_tiny(tiny_model, tmp_path_factory):
    """The tiny model's ONNX export, shared with the other export test files (same path, built once)."""
    from icv_deploy.export.onnx_export import export_onnx

    out = tmp_path_factory.getbasetemp() / "icv-onnx-tiny"
    if not (out / "manifest.json").exists():
        export_onnx(tiny_model, out, log=lambda *_: None)
    return out


@pytest.fixture
def folder_copy(onnx_tiny, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(onnx_tiny, dst)
    return dst


def _edit_manifest(folder, edit):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_options_reach_the_sessions(onnx_tiny):
    import onnxruntime as ort

    backend = OnnxBackend.from_folder(onnx_tiny, graph_optimization="basic", intra_op_threads=1, inter_op_threads=1)
    options = backend.sessions["unet"].get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.intra_op_num_threads == 1
    assert backend.sessions["unet"].get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(IcvError, match="graph_optimization 'fast'"):
        OnnxBackend.from_folder(onnx_tiny, graph_optimization="fast")


def test_io_binding_path_gives_the_same_numbers(onnx_tiny):
    """The binding code (used on CUDA) also runs on CPU memory: same results as the numpy path."""
    plain, bound = OnnxBackend.from_folder(onnx_tiny), OnnxBackend.from_folder(onnx_tiny, io_binding=True)
    assert bound.io_binding and not plain.io_binding
    g = torch.Generator().manual_seed(3)
    sample, text = torch.randn(3, 8, 10, 14, generator=g), torch.randn(3, 77, 32, generator=g)
    t = torch.tensor([999.0, 500.5, 1.0])
    torch.testing.assert_close(bound.predict_noise(sample, t, text), plain.predict_noise(sample, t, text))
    ids = torch.randint(0, 49408, (2, 77), generator=g)
    torch.testing.assert_close(bound.encode_text(ids), plain.encode_text(ids))


def test_cuda_without_the_cuda_provider_says_how_to_install(onnx_tiny):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(IcvError, match=r"no CUDA provider: pip install 'icv-deploy\[gpu\]'"):
        load_backend(onnx_tiny, engine="onnx", device="cuda")


def test_precision_must_match(onnx_tiny):
    assert OnnxBackend.from_folder(onnx_tiny, dtype="fp32").precision == "fp32"
    with pytest.raises(ModelFilesError, match="graphs are fp32, fp16 was asked for"):
        OnnxBackend.from_folder(onnx_tiny, dtype="fp16")
    with pytest.raises(IcvError, match="bf16 is torch-only"):
        OnnxBackend.from_folder(onnx_tiny, dtype="bf16")


def test_refuses_a_missing_graph(folder_copy):
    (folder_copy / "vae_decoder" / "model.onnx").unlink()
    with pytest.raises(ModelFilesError, match=r"missing vae_decoder/model\.onnx"):
        OnnxBackend.from_folder(folder_copy)


def test_refuses_a_truncated_graph(folder_copy):
    path = folder_copy / "unet" / "model.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelFilesError, match="truncated or replaced"):
        OnnxBackend.from_folder(folder_copy)


def test_refuses_a_model_with_4_unet_channels(folder_copy):
    _edit_manifest(folder_copy, lambda m: m["model_info"].update(unet_in_channels=4))
    with pytest.raises(ModelFilesError, match="4 input channels, an InstructCV model needs 8"):
        OnnxBackend.from_folder(folder_copy)


def test_refuses_a_manifest_whose_io_differs(folder_copy):
    _edit_manifest(folder_copy, lambda m: m["submodels"]["unet"]["inputs"][1].update(dtype="int64"))
    with pytest.raises(ModelFilesError, match="unet inputs .* do not match what this runtime feeds"):
        OnnxBackend.from_folder(folder_copy)


def test_refuses_a_graph_swapped_behind_the_manifest(folder_copy):
    """Sizes updated, so only the session check can notice that unet/model.onnx is the VAE decoder."""
    shutil.copyfile(folder_copy / "vae_decoder" / "model.onnx", folder_copy / "unet" / "model.onnx")
    size = (folder_copy / "unet" / "model.onnx").stat().st_size
    _edit_manifest(folder_copy, lambda m: m["submodels"]["unet"].update(bytes=size))
    with pytest.raises(ModelFilesError, match="unet/model.onnx: graph has no input 'sample'|input sample has shape"):
        OnnxBackend.from_folder(folder_copy)


def test_refuses_folders_that_are_not_exports(tiny_model, tmp_path):
    with pytest.raises(ModelFilesError, match="no manifest.json"):
        load_backend(tiny_model, engine="onnx")
    with pytest.raises(ModelFilesError, match="no such ONNX folder"):
        load_backend(tmp_path / "nothing", engine="onnx")


def test_check_command_verifies_hashes(folder_copy):
    from icv_deploy.export.cli import main

    ok = CliRunner().invoke(main, ["check", str(folder_copy)])
    assert ok.exit_code == 0 and json.loads(ok.output)["ok"] is True
    path = folder_copy / "text_encoder" / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # same size, different content: only the hash can tell
    path.write_bytes(bytes(data))
    bad = CliRunner().invoke(main, ["check", str(folder_copy)])
    assert bad.exit_code == 2 and "content hash differs" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_export_cli_bad_model_is_one_line(tmp_path):
    from icv_deploy.export.cli import main

    result = CliRunner().invoke(main, ["onnx", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1


def test_export_refuses_a_foreign_non_empty_output(tiny_model, tmp_path):
    from icv_deploy.export.onnx_export import export_onnx

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(IcvError, match="not an `icv-export` folder"):
        export_onnx(tiny_model, tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_failed_verification_keeps_nothing_and_resume_skips_finished_parts(tiny_model, tmp_path, monkeypatch,
                                                                           interrupt_onnx_export_at):
    from icv_deploy.export import onnx_export, verify

    out = tmp_path / "out"
    monkeypatch.setitem(verify.BOUNDS, "fp32", -1.0)  # every verification fails
    with pytest.raises(verify.VerificationError, match="text_encoder"):
        onnx_export.export_onnx(tiny_model, out, log=lambda *_: None)
    assert not (out / "text_encoder").exists() and not (out / "manifest.json").exists()

    monkeypatch.setitem(verify.BOUNDS, "fp32", 1e-4)
    interrupt_onnx_export_at("vae_encoder")
    with pytest.raises(KeyboardInterrupt):
        onnx_export.export_onnx(tiny_model, out, log=lambda *_: None)
    assert (out / "unet" / "model.onnx").exists() and not (out / "vae_encoder").exists()

    interrupt_onnx_export_at(None)
    messages = []
    manifest = onnx_export.export_onnx(tiny_model, out, log=messages.append)
    assert "text_encoder: already exported, kept" in messages and "unet: already exported, kept" in messages
    assert set(manifest["submodels"]) == {"text_encoder", "unet", "vae_encoder", "vae_decoder"}
    OnnxBackend.from_folder(out)
