"""ONNX export of the four submodels (issue 3): layout, checker, manifest, verification, parity with PyTorch."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch

from icv_deploy.export import optimize, verify
from icv_deploy.export.onnx_export import export_onnx

SUBMODELS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")


def shared_onnx_export(tiny_model, tmp_path_factory):
    """One verified fp32 export of the session's tiny model, shared by the export, onnx and trt test files."""
    out = tmp_path_factory.getbasetemp() / "icv-onnx-tiny"
    if not (out / "manifest.json").exists():
        export_onnx(tiny_model, out, log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def onnx_tiny(tiny_model, tmp_path_factory):
    return shared_onnx_export(tiny_model, tmp_path_factory)


def _graph_inputs(path):
    model = onnx.load(str(path), load_external_data=False)
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}


def test_layout_is_optimum_like(onnx_tiny, tiny_model):
    for name in SUBMODELS:
        assert (onnx_tiny / name / "model.onnx").is_file()
        assert (onnx_tiny / name / "config.json").is_file()
    assert json.loads((onnx_tiny / "vae_decoder" / "config.json").read_text()) == json.loads((tiny_model / "vae" / "config.json").read_text())
    assert (onnx_tiny / "tokenizer" / "tokenizer.json").is_file()
    assert (onnx_tiny / "scheduler" / "scheduler_config.json").is_file()
    assert (onnx_tiny / "model_index.json").is_file()
    assert not list(onnx_tiny.glob(".*")), "no temporary or state files left behind"


def test_checker_passes_and_unet_has_8_channels(onnx_tiny):
    for name in SUBMODELS:
        onnx.checker.check_model(str(onnx_tiny / name / "model.onnx"))  # by path (external data)
    unet = _graph_inputs(onnx_tiny / "unet" / "model.onnx")
    assert unet["sample"] == ["batch", 8, "height", "width"]
    assert unet["timestep"] == ["batch"]
    assert _graph_inputs(onnx_tiny / "vae_encoder" / "model.onnx")["sample"] == ["batch", 3, "height", "width"]
    assert _graph_inputs(onnx_tiny / "text_encoder" / "model.onnx")["input_ids"] == ["batch", 77]


def test_manifest_records_hashes_and_errors(onnx_tiny):
    manifest = json.loads((onnx_tiny / "manifest.json").read_text())
    assert manifest["opset"] == 17 and manifest["precision"] == "fp32" and manifest["io_dtype"] == "float32"
    assert manifest["model_info"]["unet_in_channels"] == 8 and manifest["model_info"]["vae_scale_factor"] == 2
    for name in SUBMODELS:
        entry = manifest["submodels"][name]
        data = (onnx_tiny / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
        assert entry["max_rel_error"] <= 1e-4


def test_backend_matches_torch_backend_on_odd_latent_sizes(onnx_tiny, tiny_model):
    """The four calls at shapes the export never saw: batch 3, non-square, latent sides not multiples of 2."""
    from icv_deploy.backends import load_backend

    ref, ort_backend = load_backend(tiny_model, "torch"), load_backend(onnx_tiny, "onnx")
    assert ort_backend.info == ref.info and ort_backend.dtype == torch.float32
    g = torch.Generator().manual_seed(0)

    def rel(a, b):
        assert a.shape == b.shape
        return ((a - b).abs().max() / b.abs().max()).item()

    ids = torch.randint(0, 49408, (3, 77), generator=g)
    assert rel(ort_backend.encode_text(ids), ref.encode_text(ids)) < 1e-4
    pixels = torch.rand(1, 3, 38, 50, generator=g) * 2 - 1
    assert rel(ort_backend.encode_image(pixels), ref.encode_image(pixels)) < 1e-4
    sample, text = torch.randn(3, 8, 19, 25, generator=g), torch.randn(3, 77, 32, generator=g)
    t = torch.tensor(988.9, dtype=torch.float64).expand(3)  # fractional, float64, expanded: as samplers pass it
    assert rel(ort_backend.predict_noise(sample, t, text), ref.predict_noise(sample, t, text)) < 1e-4
    latents = torch.randn(2, 4, 19, 25, generator=g)
    assert rel(ort_backend.decode_latents(latents), ref.decode_latents(latents)) < 1e-4


def test_vae_encoder_is_posterior_mode_unscaled(onnx_tiny, tiny_model):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_model, subfolder="vae").eval()
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(x).latent_dist.mode().numpy()
    got = verify.onnx_output(onnx_tiny / "vae_encoder" / "model.onnx", {"sample": x})
    assert verify.relative_error(got, expected) < 1e-4


@pytest.mark.slow
def test_pipeline_parity_onnx_vs_torch(onnx_tiny, tiny_model, scene_image):
    """Done-when: same seed and settings, non-square image, res.visual within 3/255 per pixel (fp32, CPU)."""
    import icv_deploy

    kwargs = dict(steps=3, seed=5, resolution=64)
    torch_res = icv_deploy.load(tiny_model, engine="torch")(scene_image, "Segment the cat", **kwargs)
    onnx_res = icv_deploy.load(onnx_tiny, engine="onnx")(scene_image, "Segment the cat", **kwargs)
    assert torch_res.visual.shape == onnx_res.visual.shape and torch_res.visual.shape[0] != torch_res.visual.shape[1]
    diff = np.abs(torch_res.visual.astype(int) - onnx_res.visual.astype(int))
    assert diff.max() <= 3


@pytest.mark.slow
def test_icv_infer_cli_engine_onnx_matches_torch(onnx_tiny, tiny_model, scene_image, tmp_path):
    import cv2
    from click.testing import CliRunner

    from icv_deploy.cli import main

    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), scene_image[:, :, ::-1])
    visuals = {}
    for engine, model in (("torch", tiny_model), ("onnx", onnx_tiny)):
        out = tmp_path / engine
        args = [str(image), "Create a monocular depth map", "--model", str(model), "--engine", engine, "--steps", "2",
                "--seed", "1", "--resolution", "64", "--output", str(out), "--quiet"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        (visual,) = list(out.rglob("visual.png"))
        visuals[engine] = cv2.imread(str(visual)).astype(int)
    assert visuals["torch"].shape == visuals["onnx"].shape
    assert np.abs(visuals["torch"] - visuals["onnx"]).max() <= 3


@pytest.mark.slow
def test_fp16_export_keeps_float32_io_and_one_external_data_file(tiny_model, tmp_path):
    out = tmp_path / "fp16"
    manifest = export_onnx(tiny_model, out, fp16=True, external_data_threshold=100_000, log=lambda *_: None)
    assert manifest["precision"] == "fp16"
    for name in SUBMODELS:
        path = out / name / "model.onnx"
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path), load_external_data=False)
        types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
        assert all(t in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64) for t in types.values()), types
        locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {"model.onnx_data"}, locations  # one external-data file per graph
        entry = manifest["submodels"][name]
        assert entry["external_data"]["path"] == f"{name}/model.onnx_data"
        # The SD VAE overflows in fp16 (force_upcast): its graphs stay fp32; text encoder and UNet are fp16.
        assert entry["precision"] == ("fp32" if name.startswith("vae") else "fp16")
        assert entry["max_rel_error"] <= verify.BOUNDS[entry["precision"]]
    from icv_deploy.backends import load_backend

    backend, ref = load_backend(out, engine="onnx", dtype="fp16"), load_backend(tiny_model, engine="torch")
    assert backend.precision == "fp16" and backend.dtype == torch.float32
    sample, text = torch.randn(3, 8, 12, 10), torch.randn(3, 77, 32)
    t = torch.tensor([988.9, 500.0, 1.0])
    want = ref.predict_noise(sample, t, text)
    assert ((backend.predict_noise(sample, t, text) - want).abs().max() / want.abs().max()).item() < 5e-2
    unet = onnx.load(str(out / "unet" / "model.onnx"))
    weights = [t for t in unet.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)  # conv weights are fp16
    produced = {o: n for n in unet.graph.node for o in n.output}
    for node in unet.graph.node:  # Softmax and the sinusoidal time embedding compute in float32
        if node.op_type in ("Softmax", "Sin", "Cos"):
            x = node.input[0]
            assert produced.get(x) is None or produced[x].op_type != "Cast" or \
                next(a.i for a in produced[x].attribute if a.name == "to") == onnx.TensorProto.FLOAT


def test_timestep_only_nodes_finds_the_time_path():
    """A toy graph: t -> Mul -> Sin feeds an Add with x; Shape(x) does not pull x's path into t's."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Shape", ["x"], ["xs"], name="shape_x"),
        helper.make_node("Expand", ["t", "xs1"], ["te"], name="expand_t"),
        helper.make_node("Mul", ["te", "c"], ["tm"], name="mul_t"),
        helper.make_node("Sin", ["tm"], ["ts"], name="sin_t"),
        helper.make_node("Add", ["x", "ts"], ["y"], name="add_xt"),
        helper.make_node("Slice", ["xs", "c0", "c1"], ["xs1"], name="slice_shape"),
    ]
    nodes = nodes[:1] + [nodes[5]] + nodes[1:5]
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]), helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [helper.make_tensor("c", TensorProto.FLOAT, [], [2.0]), helper.make_tensor("c0", TensorProto.INT64, [1], [0]),
         helper.make_tensor("c1", TensorProto.INT64, [1], [1])],
    )
    assert optimize.timestep_only_nodes(helper.make_model(graph), "t") == ["expand_t", "mul_t", "sin_t"]


def test_relative_error_and_bound():
    ref = np.array([1.0, -2.0, 4.0])
    assert verify.relative_error(ref + [0, 0, 0.004], ref) == pytest.approx(1e-3)
    assert verify.relative_error(ref[:2], ref) == float("inf")
    verify.check("unet", 5e-5, "fp32")
    with pytest.raises(verify.VerificationError, match="unet.*bound 0.0001"):
        verify.check("unet", 2e-4, "fp32")
    with pytest.raises(verify.VerificationError):
        verify.check("unet", float("nan"), "fp32")
