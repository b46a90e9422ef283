"""TensorRT path: everything testable without TensorRT here (builds, loading and CUDA-graph contexts run against
stand-ins for tensorrt and polygraphy that record what they were asked); the GPU test skips without TensorRT."""

from __future__ import annotations

import hashlib
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
@pytest.mark.parametrize("info,batch,sample,text", [
    (SD15, 1, ((3, 8, 16, 16), (3, 8, 32, 32), (3, 8, 64, 64)), (3, 77, 768)),     # 128 / 256 / 512 px over f = 8
    (SD15, 2, ((3, 8, 16, 16), (6, 8, 32, 32), (6, 8, 64, 64)), (6, 77, 768)),
    (TINY, 2, ((3, 8, 64, 64), (6, 8, 128, 128), (6, 8, 256, 256)), (6, 77, 32)),  # f = 2
], ids=["f8-batch1", "f8-batch2", "f2-batch2"])
def test_unet_profile_spans_guidance_batches_and_resolutions(info, batch, sample, text):
    prof = trt_profile(submodels(info)["unet"], info, batch=batch, min_res=128, opt_res=256, max_res=512)
    assert prof["sample"] == sample and prof["encoder_hidden_states"][2] == text
    assert prof["timestep"] == ((3,), (sample[1][0],), (sample[2][0],))


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
    # The pipeline encodes K instructions, then the empty prompt, in calls of their own: 1 .. 3K rows stay open.
    text = trt_profile(submodels(SD15)["text_encoder"], SD15, batch=2, static=True)
    assert text["input_ids"] == ((1, 77), (6, 77), (6, 77))


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


# ---- stand-ins for TensorRT's network, runtime and engine (the TensorRT 10 Python API, as much as the code uses) ----
LAYER_TYPES = types.SimpleNamespace(SHAPE="SHAPE", SOFTMAX="SOFTMAX", CONSTANT="CONSTANT")


class FakeTensor:
    def __init__(self, name, dtype="float32"):
        self.name, self.dtype = name, dtype


class FakeLayer:
    def __init__(self, name, type_, inputs, outputs):
        self.name, self.type, self._inputs, self._outputs = name, type_, inputs, outputs
        self.precision, self.output_types = None, {}

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, i):
        return self._inputs[i]

    def get_output(self, i):
        return self._outputs[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


class FakeNetwork:
    """Layers in order, each reading and writing named tensors: the shape of an INetworkDefinition."""

    def __init__(self, inputs, layers):
        self.tensors = {name: FakeTensor(name) for name in inputs}
        self._inputs = [self.tensors[n] for n in inputs]
        self._layers = []
        for name, type_, ins, outs in layers:  # outs: [(name, dtype)]
            made = [self.tensors.setdefault(n, FakeTensor(n, dtype)) for n, dtype in outs]
            self._layers.append(FakeLayer(name, type_, [self.tensors[n] for n in ins], made))

    num_layers = property(lambda self: len(self._layers))
    num_inputs = property(lambda self: len(self._inputs))

    def get_layer(self, i):
        return self._layers[i]

    def get_input(self, i):
        return self._inputs[i]


def network_from_onnx(path) -> FakeNetwork:
    """A network with one layer per ONNX node and one constant layer per weight, as TensorRT's parser makes it."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    floats = {v.name for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    floats |= {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}

    def outs(names):
        return [(n, "float32" if n in floats else "int64") for n in names]

    types_ = {"Shape": "SHAPE", "Softmax": "SOFTMAX"}
    layers = [(t.name, "CONSTANT", [], outs([t.name])) for t in model.graph.initializer]
    layers += [(n.name, types_.get(n.op_type, n.op_type), [i for i in n.input if i], outs(n.output)) for n in model.graph.node]
    return FakeNetwork([i.name for i in model.graph.input], layers)


class FakeEngine:
    num_io_tensors = 2

    def __init__(self, plan_bytes):
        self.plan_bytes, self.contexts = plan_bytes, []

    def get_tensor_name(self, i):
        return ("input", "output")[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name == "input" else "OUTPUT"

    def get_tensor_dtype(self, name):
        return "FLOAT"

    def create_execution_context(self):
        self.contexts.append(("context", len(self.contexts), torch.cuda.current_device()))
        return self.contexts[-1]


# ---- building with polygraphy, faked (no TensorRT here): profiles passed, atomic writes, metadata, reuse --------
@pytest.fixture
def fake_cuda(monkeypatch):
    """Two visible GPUs as far as the TensorRT backend asks; records which device was current when."""
    state = {"current": 0, "entered": []}

    class Device:
        def __init__(self, device):
            self.index = torch.device(device).index if not isinstance(device, int) else device

        def __enter__(self):
            self.previous, state["current"] = state["current"], self.index
            state["entered"].append(self.index)

        def __exit__(self, *exc):
            state["current"] = self.previous

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
    monkeypatch.setattr(torch.cuda, "device", Device)
    return state


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """Stand-ins for tensorrt and polygraphy's builder, recording what the build and the runtime were asked."""
    calls, deserialised, identities = [], [], []
    class Logger:
        ERROR = "error"

        def __init__(self, level):
            pass

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            deserialised.append((data, torch.cuda.current_device()))
            return FakeEngine(data)

    trt = types.SimpleNamespace(
        __version__="10.99.0", MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
        OnnxParserFlag=types.SimpleNamespace(NATIVE_INSTANCENORM="native_instancenorm"),
        LayerType=LAYER_TYPES, float32="float32", Logger=Logger, Runtime=Runtime,
        TensorIOMode=types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
        DataType=types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", INT32="INT32", INT64="INT64", BOOL="BOOL"),
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

    def engine_from_network(network, config=None, save_timing_cache=None):
        builder, net, parser = network
        calls.append((parser, config, save_timing_cache, net))
        return f"engine-of-{parser}"

    def runtime_identity(trt_module, device_index=None):
        identities.append(device_index)
        return dict(RUNTIME, tensorrt_version=trt_module.__version__)

    monkeypatch.setattr(poly, "Profile", Profile)
    monkeypatch.setattr(poly, "CreateConfig", lambda **kw: kw)
    # The functional loader returns (builder, network, parser); the fake parser is the ONNX path it read.
    monkeypatch.setattr(poly, "network_from_onnx_path", lambda path, flags=None: ("builder", network_from_onnx(path), path))
    monkeypatch.setattr(poly, "engine_from_network", engine_from_network)
    monkeypatch.setattr(poly, "save_engine", save_engine)
    monkeypatch.setattr(trt_rt, "runtime_identity", runtime_identity)
    state.update(deserialised=deserialised, identities=identities)
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
    net, config, cache, _ = calls[1]  # the UNet
    assert net.endswith("unet/model.onnx") and config["fp16"] is True and cache == str(out / "timing.cache")
    assert config["profiles"][0]["sample"] == ((3, 8, 16, 16), (3, 8, 32, 32), (3, 8, 64, 64))  # f = 2
    # The tiny model's SD-style VAE says force_upcast: its engines build in float32, with no constraints to obey.
    built = {name: call[1] for name, call in zip(("text_encoder", "unet", "vae_encoder", "vae_decoder"), calls)}
    assert [built[n]["fp16"] for n in built] == [True, True, False, False]
    assert [built[n]["precision_constraints"] for n in built] == ["obey", "obey", None, None]
    assert [meta["engines"][n]["precision"] for n in built] == ["fp16", "fp16", "fp32", "fp32"]
    assert meta["engines"]["unet"]["fp32_layers"] > 0 and meta["engines"]["vae_decoder"]["fp32_layers"] == 0
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
    # TAESD's config says force_upcast false: fp16 like the rest.
    assert meta["engines"]["vae_decoder"]["precision"] == meta["engines"]["vae_encoder"]["precision"] == "fp16"
    with pytest.raises(ModelFilesError, match="tiny VAE, vae=full was asked for"):
        TrtBackend.from_folder(out, vae="full")  # refused before TensorRT or a GPU is needed


# ---- precision: what stays float32 in an fp16 engine ---------------------------------------------------------------
def test_layers_kept_fp32_on_a_hand_built_network():
    """The UNet's time path in miniature, worked out by hand: sinusoids of the timestep (expanded to the batch through
    Shape(sample), which must not count as reading the sample), a time MLP with its own weight, a cast to fp16
    where it joins the sample path, and attention whose SoftMax stays fp32."""
    from icv_deploy.export.engine import keep_fp32, layers_kept_fp32

    f32, i64, f16 = "float32", "int64", "float16"
    network = FakeNetwork(["sample", "timestep", "text"], [
        ("freqs", "CONSTANT", [], [("freqs", f32)]),            # read by the time path only: kept
        ("shared", "CONSTANT", [], [("shared", f32)]),          # read by both paths: left alone
        ("conv_w", "CONSTANT", [], [("conv_w", f32)]),
        ("shape", "SHAPE", ["sample"], [("sshape", i64)]),
        ("batch", "SLICE", ["sshape"], [("batch", i64)]),       # neither path (int, from a shape)
        ("expand_t", "SLICE", ["timestep", "batch"], [("tb", f32)]),
        ("mul_t", "ELEMENTWISE", ["tb", "freqs"], [("arg", f32)]),
        ("sin_t", "UNARY", ["arg"], [("sin", f32)]),
        ("mlp", "MATRIX_MULTIPLY", ["sin", "shared"], [("temb", f32)]),
        ("to_half", "CAST", ["temb"], [("temb16", f16)]),       # on the path, but its type is not a choice
        ("conv", "CONVOLUTION", ["sample", "conv_w"], [("h", f32)]),
        ("add_temb", "ELEMENTWISE", ["h", "temb16"], [("h2", f32)]),
        ("scores", "MATRIX_MULTIPLY", ["h2", "text"], [("scores", f32)]),
        ("softmax", "SOFTMAX", ["scores"], [("probs", f32)]),
        ("out", "MATRIX_MULTIPLY", ["probs", "shared"], [("out", f32)]),
    ])
    trt = types.SimpleNamespace(LayerType=LAYER_TYPES, float32=f32)
    kept = [layer.name for layer in layers_kept_fp32(network, trt)]
    assert kept == ["freqs", "expand_t", "mul_t", "sin_t", "mlp", "softmax"]
    assert keep_fp32(network, trt) == 6
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        assert (layer.precision, layer.output_types) == ((f32, {0: f32}) if layer.name in kept else (None, {}))
    # A network without a timestep input (text encoder, VAE): only SoftMax.
    no_time = FakeNetwork(["x"], [("sm", "SOFTMAX", ["x"], [("y", f32)]), ("u", "UNARY", ["y"], [("z", f32)])])
    assert [layer.name for layer in layers_kept_fp32(no_time, trt)] == ["sm"]


def test_time_path_of_the_exported_unet_is_kept_fp32(onnx_tiny_for_trt):
    """On the tiny UNet's real graph (one layer per ONNX node): the layers diffusers' time modules became, and every
    SoftMax, are kept; no convolution or attention projection is."""
    from icv_deploy.export.engine import layers_kept_fp32

    network = network_from_onnx(onnx_tiny_for_trt / "unet" / "model.onnx")
    kept = {layer.name for layer in layers_kept_fp32(network, types.SimpleNamespace(LayerType=LAYER_TYPES, float32="float32"))}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    time_modules = [la.name for la in layers if any(m in la.name for m in ("/time_proj/", "/time_embedding/", "/time_emb_proj/"))
                    and la.get_output(0).dtype == "float32"]
    softmaxes = [la.name for la in layers if la.type == "SOFTMAX"]
    assert len(time_modules) >= 10 and softmaxes and set(time_modules) | set(softmaxes) <= kept
    assert not [la.name for la in layers if la.name in kept and (la.type == "Conv" or "/to_q/" in la.name or "/to_k/" in la.name)]


# ---- loading: plan hashes, cuda:N, CUDA graphs --------------------------------------------------------------------
def test_each_plan_hash_is_checked_before_it_is_deserialised(fake_tensorrt, fake_cuda, onnx_tiny_for_trt, tmp_path):
    from icv_deploy.export.engine import build_engines

    _, state = fake_tensorrt
    out = tmp_path / "engines"
    build_engines(onnx_tiny_for_trt, out, min_res=32, opt_res=64, max_res=128, log=lambda *_: None)
    backend = trt_rt.TrtBackend.from_folder(out, device="cuda")
    assert [data for data, _ in state["deserialised"]] == [(out / f"{n}.plan").read_bytes() for n in trt_rt.SUBMODEL_NAMES]
    assert backend.engines["unet"].engine.plan_bytes == (out / "unet.plan").read_bytes()

    plan = (out / "unet.plan").read_bytes()
    (out / "unet.plan").write_bytes(plan[:-1] + bytes([plan[-1] ^ 1]))  # same size, one bit changed
    state["deserialised"].clear()
    with pytest.raises(ModelFilesError, match=r"unet\.plan: SHA-256 .* not the .* recorded in engines\.json.*executable"):
        trt_rt.TrtBackend.from_folder(out, device="cuda")
    # Only the text encoder (checked and loaded first) reached TensorRT; the changed UNet plan never did.
    assert [data for data, _ in state["deserialised"]] == [(out / "text_encoder.plan").read_bytes()]

    meta = json.loads((out / "engines.json").read_text())
    del meta["engines"]["unet"]["sha256"]
    (out / "engines.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFilesError, match="no sha256 recorded for the unet engine"):
        trt_rt.check_engine_folder(out)


def test_a_replaced_plan_is_rebuilt_not_vouched_for(fake_tensorrt, onnx_tiny_for_trt, tmp_path):
    from icv_deploy.export.engine import build_engines

    calls, _ = fake_tensorrt
    out = tmp_path / "engines"
    build_engines(onnx_tiny_for_trt, out, min_res=32, opt_res=64, max_res=128, log=lambda *_: None)
    (out / "unet.plan").write_bytes(b"X" * (out / "unet.plan").stat().st_size)
    meta = build_engines(onnx_tiny_for_trt, out, min_res=32, opt_res=64, max_res=128, log=lambda *_: None)
    assert len(calls) == 5 and calls[-1][0].endswith("unet/model.onnx")  # only the UNet built again
    assert (out / "unet.plan").read_bytes().startswith(b"PLAN:")
    assert meta["engines"]["unet"]["sha256"] == hashlib.sha256((out / "unet.plan").read_bytes()).hexdigest()


def test_cuda_n_selects_that_gpu(fake_tensorrt, fake_cuda, onnx_tiny_for_trt, tmp_path):
    from icv_deploy.export.engine import build_engines

    _, state = fake_tensorrt
    out = tmp_path / "engines"
    build_engines(onnx_tiny_for_trt, out, min_res=32, opt_res=64, max_res=128, log=lambda *_: None, device="cuda:1")
    assert state["identities"] == [1] and fake_cuda["entered"][0] == 1  # built with GPU 1 current
    state["identities"].clear()
    backend = trt_rt.TrtBackend.from_folder(out, device="cuda:1")
    assert backend.device == torch.device("cuda", 1) and state["identities"] == [1]
    assert {device for _, device in state["deserialised"]} == {1}  # every engine deserialised with GPU 1 current
    assert {ctx[2] for e in backend.engines.values() for ctx in e.engine.contexts} == {1}
    assert fake_cuda["current"] == 0  # and the caller's current device is left as it was

    fake_cuda["current"] = 1
    assert trt_rt.TrtBackend.from_folder(out, device="cuda").device == torch.device("cuda", 1)  # plain cuda: the current one
    with pytest.raises(IcvError, match=r"device cuda:2: this machine has 2 CUDA device\(s\), cuda:0 \.\. cuda:1"):
        trt_rt.TrtBackend.from_folder(out, device="cuda:2")


class RecordingUnet:
    """The UNet engine's calling surface for `graphed_unet`: which context each run used, and for which shape."""

    def __init__(self):
        self.context, self.made, self.runs = "own", 0, []

    def new_context(self):
        self.made += 1
        return f"graph-{self.made}"

    def run(self, context, sample, timestep, encoder_hidden_states):
        self.runs.append((context, tuple(sample.shape)))
        return sample[:, :4] * timestep[:, None, None, None] + encoder_hidden_states.mean()


def unet_call(size, t=10.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 8, size, size, generator=g), torch.full((3,), t), torch.randn(3, 77, 4, generator=g)


def test_cuda_graphs_of_a_dynamic_engine_each_get_their_own_context():
    from icv_deploy.backends.cuda_graph import eager_record

    unet = RecordingUnet()
    graphed = trt_rt.graphed_unet(unet, static_shapes=False, record=eager_record)
    graphed.enabled = True  # CPU tensors: force the graph path (eager_record has a CUDA graph's contract)
    graphed.max_graphs = 2
    for size, seed in ((4, 0), (8, 1), (4, 2), (6, 3)):
        x = unet_call(size, seed=seed)
        torch.testing.assert_close(graphed(*x), unet.run("check", *x))
    recorded = {ctx: shape[2] for ctx, shape in unet.runs if ctx.startswith("graph")}
    assert recorded == {"graph-1": 4, "graph-2": 8}  # one context per captured shape, never shared
    assert {shape[2] for ctx, shape in unet.runs if ctx == "own"} == {6}  # past max_graphs: eager, on no graph's context


def test_cuda_graph_of_a_static_engine_uses_its_one_context():
    from icv_deploy.backends.cuda_graph import eager_record

    unet = RecordingUnet()
    graphed = trt_rt.graphed_unet(unet, static_shapes=True, record=eager_record)
    graphed.enabled = True
    for seed in range(3):
        graphed(*unet_call(4, t=seed + 1.0, seed=seed))
    assert unet.made == 0 and graphed.captures == 1 and graphed.max_graphs == 1
    assert {ctx for ctx, _ in unet.runs} == {"own"}


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
def test_build_engines_without_tensorrt_exits_2_with_install_hint(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from icv_deploy.export.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, installed or not
    result = CliRunner().invoke(main, ["build-engines", "--onnx", str(tmp_path), "--output", str(tmp_path / "e")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "TensorRT is not installed" in lines[0] and "icv-deploy[gpu]" in lines[0]
    assert not (tmp_path / "e").exists()


def test_build_engines_refuses_a_device_that_is_not_cuda(tmp_path):
    from click.testing import CliRunner

    from icv_deploy.export.cli import main

    result = CliRunner().invoke(main, ["build-engines", "--onnx", str(tmp_path), "--output", str(tmp_path / "e"),
                                       "--device", "cpu"])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "error: device 'cpu': TensorRT engines are built on a CUDA device (cuda or cuda:N)"]


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
