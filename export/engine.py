"""Building TensorRT fp16 engines from an exported ONNX folder (docs/DESIGN.md 7), through polygraphy.

    engines/engines.json              metadata: TensorRT version, GPU name and compute capability, profiles, files
                                      with their size and SHA-256 (checked before a plan is deserialised)
    engines/{text_encoder,unet,vae_encoder,vae_decoder}.plan
    engines/timing.cache              reused by later builds on the same GPU (or --timing-cache FILE)
    engines/tokenizer/, scheduler/, model_index.json   copied from the ONNX folder, so the folder loads on its own

Precision follows the ONNX fp16 graphs (export/optimize.py): the text encoder and the UNet build with fp16 allowed,
except Softmax and the timestep path (the layers fed by `timestep` alone, and the constants only they read), which
are pinned to float32 with OBEY precision constraints; the VAE engines build in float32 when the VAE's config says
`force_upcast` (the SD VAE overflows in fp16; TAESD does not ask). Each engine has one optimisation profile
(`submodels.trt_profile`: batch 3 and multiples of 3 for the UNet, 1 .. batch for a one-pass model; min/opt/max
resolution). Engines are written to a
temporary name and renamed, so a crash never leaves a half-written `.plan`; engines already built for the same ONNX
graph, profile, precision, GPU and TensorRT version are kept. Running engines is the runtime's job
(`icv_deploy.backends.trt_backend`): the runtime never imports the exporter.
"""

from __future__ import annotations

import contextlib
import shutil
from collections import defaultdict
from pathlib import Path

from icv_deploy.atomic import atomic_dir, atomic_path, copy_file
from icv_deploy.backends import trt_backend as trt_rt
from icv_deploy.backends.onnx_backend import (COPIED_FILES, COPIED_FOLDERS, SUBMODEL_NAMES, check_onnx_folder,
                                               info_from_manifest)
from icv_deploy.errors import IcvError
from icv_deploy.model_files import read_json

from .manifest import plain_file_entry, sha256_file, write_manifest
from .optimize import fed_only_by, vae_keeps_fp32
from .submodels import submodels, trt_profile

GPU_EXTRA_HINT = "pip install 'icv-deploy[gpu]' on a machine with an NVIDIA GPU and CUDA (it brings tensorrt and polygraphy)"


def require_tensorrt():
    """Import tensorrt and polygraphy, or raise the one-line error the CLI prints (exit 2)."""
    try:
        import tensorrt
    except ImportError:
        raise IcvError(f"TensorRT is not installed: {GPU_EXTRA_HINT}") from None
    try:
        import polygraphy  # noqa: F401
    except ImportError:
        raise IcvError(f"polygraphy is not installed: {GPU_EXTRA_HINT}") from None
    return tensorrt


def profiles_for(info, batch: int, min_res: int, opt_res: int, max_res: int, static: bool, guidance: bool = True) -> dict:
    """Submodel -> {input: [min, opt, max]} as JSON-friendly lists (guidance False: a one-pass model's batches)."""
    specs = submodels(info)
    return {
        name: {k: [list(s) for s in shapes]
               for k, shapes in trt_profile(specs[name], info, batch, min_res, opt_res, max_res, static, guidance).items()}
        for name in SUBMODEL_NAMES
    }


def is_one_pass(onnx_dir: Path) -> bool:
    """Whether the ONNX folder's icv_config.json declares a one-pass model (one UNet row per instruction)."""
    from icv_deploy.model_files import model_config
    from icv_deploy.one_pass import OnePass

    scheduler = read_json(onnx_dir / "scheduler" / "scheduler_config.json")
    return OnePass.from_config(model_config(onnx_dir), scheduler, where=str(onnx_dir / "icv_config.json")) is not None


def layers_kept_fp32(network, trt, timestep_input: str = "timestep") -> list:
    """The layers of a parsed TensorRT network that must compute in float32 when fp16 is allowed, as in the ONNX
    fp16 graphs (optimize.to_fp16): every SoftMax, and the timestep path (layers fed by `timestep` alone, plus the
    constants, i.e. weights, that only those layers read). Layers with a non-float output (shapes, indices, casts to
    fp16) are left alone: their type is not a precision choice."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]

    def names(layer, count, get):
        return [t.name for t in (get(i) for i in range(count)) if t is not None]

    nodes = [(i, "Shape" if layer.type == trt.LayerType.SHAPE else str(layer.type),
              names(layer, layer.num_inputs, layer.get_input), names(layer, layer.num_outputs, layer.get_output))
             for i, layer in enumerate(layers)]
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    time_path = set(fed_only_by(nodes, inputs, timestep_input)) if timestep_input in inputs else set()
    readers = defaultdict(set)
    for i, _, ins, _ in nodes:
        for tensor in ins:
            readers[tensor].add(i)
    for i, _, ins, outs in nodes:
        if not ins and outs and all(readers[t] and readers[t] <= time_path for t in outs):
            time_path.add(i)  # a weight read by the time path only
    kept = [layer for i, layer in enumerate(layers) if i in time_path or layer.type == trt.LayerType.SOFTMAX]
    return [layer for layer in kept
            if layer.num_outputs and all(layer.get_output(k).dtype == trt.float32 for k in range(layer.num_outputs))]


def keep_fp32(network, trt) -> int:
    """Pin `layers_kept_fp32` to float32 (compute and outputs); the config must OBEY precision constraints."""
    layers = layers_kept_fp32(network, trt)
    for layer in layers:
        layer.precision = trt.float32
        for k in range(layer.num_outputs):
            layer.set_output_type(k, trt.float32)
    return len(layers)


class Engine:
    """One TensorRT engine file: build it from ONNX with a profile (polygraphy), atomically."""

    def __init__(self, plan: Path):
        self.plan = Path(plan)

    def build(self, onnx_path: Path, profile: dict, fp16: bool = True, timing_cache: Path | None = None,
              workspace_gb: float | None = None) -> int:
        """Build and save the plan; returns how many layers were pinned to float32 in an fp16 build."""
        trt = require_tensorrt()
        from polygraphy.backend.trt import CreateConfig, Profile, engine_from_network, network_from_onnx_path, save_engine

        trt_profile_ = Profile()
        for name, (lo, opt, hi) in profile.items():
            trt_profile_.add(name, min=tuple(lo), opt=tuple(opt), max=tuple(hi))
        pools = {trt.MemoryPoolType.WORKSPACE: int(workspace_gb * 2**30)} if workspace_gb else None
        config = CreateConfig(
            fp16=fp16, precision_constraints="obey" if fp16 else None, profiles=[trt_profile_],
            memory_pool_limits=pools,
            load_timing_cache=str(timing_cache) if timing_cache and Path(timing_cache).exists() else None,
        )
        # Native InstanceNormalization: the exported GroupNorm is Reshape + InstanceNorm; the plugin is slower.
        # The functional loader parses now and returns (builder, network, parser): the network can be edited.
        network = network_from_onnx_path(str(onnx_path), flags=[trt.OnnxParserFlag.NATIVE_INSTANCENORM])
        pinned = keep_fp32(network[1], trt) if fp16 else 0
        engine = engine_from_network(network, config=config, save_timing_cache=str(timing_cache) if timing_cache else None)
        with atomic_path(self.plan) as tmp:
            save_engine(engine, path=str(tmp))
        return pinned


def engine_fp16(onnx_dir: Path, name: str) -> bool:
    """fp16 for the text encoder and UNet; for the VAE engines only when the VAE does not ask for float32."""
    if not name.startswith("vae"):
        return True
    return not vae_keeps_fp32(read_json(onnx_dir / name / "config.json"))


def build_engines(onnx_dir, output, batch: int = 1, min_res: int = 128, opt_res: int = 256, max_res: int = 512,
                  static: bool = False, timing_cache: Path | None = None, progress=None, log=print,
                  device: str = "cuda") -> dict:
    """Build the four engines of `onnx_dir` into `output` on `device` (`cuda` = the current GPU, or `cuda:N`);
    returns the metadata written to engines.json."""
    trt = require_tensorrt()
    index = parse_build_device(device)
    with torch_cuda_device(index):
        return _build_engines(trt, index, Path(onnx_dir), Path(output), batch, min_res, opt_res, max_res, static,
                              timing_cache, progress, log)


def parse_build_device(device: str) -> int | None:
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type != "cuda":
        raise IcvError(f"device {device!r}: TensorRT engines are built on a CUDA device (cuda or cuda:N)")
    return parsed.index


def torch_cuda_device(index: int | None):
    """TensorRT builds on the current CUDA device: make GPU `index` current for the build (None: leave it)."""
    if index is None:
        return contextlib.nullcontext()
    import torch

    return torch.cuda.device(index)


def _build_engines(trt, device_index, onnx_dir, output, batch, min_res, opt_res, max_res, static, timing_cache,
                   progress, log) -> dict:
    manifest = check_onnx_folder(onnx_dir)
    info = info_from_manifest(manifest, onnx_dir)
    one_pass = is_one_pass(onnx_dir)
    profiles = profiles_for(info, batch, min_res, opt_res, max_res, static, guidance=not one_pass)
    identity = trt_rt.runtime_identity(trt, device_index)
    timing_cache = Path(timing_cache) if timing_cache else output / "timing.cache"
    output.mkdir(parents=True, exist_ok=True)
    previous = _previous_metadata(output)

    engines = {}
    names = progress(SUBMODEL_NAMES, desc="engines") if progress else SUBMODEL_NAMES
    for name in names:
        plan = output / f"{name}.plan"
        source = manifest["submodels"][name]
        precision = "fp16" if engine_fp16(onnx_dir, name) else "fp32"
        old = previous.get("engines", {}).get(name, {})
        # A kept plan must still be the file this builder wrote: its hash goes into engines.json, which the runtime
        # trusts, so a plan replaced since would otherwise be vouched for.
        digest = sha256_file(plan) if plan.exists() else None
        reusable = (digest is not None and old.get("sha256") == digest and old.get("onnx_sha256") == source["sha256"]
                    and old.get("onnx_data_sha256") == onnx_data_sha256(source)  # the weights of graphs over 2 GB
                    and old.get("profile") == profiles[name] and old.get("precision") == precision
                    and all(previous.get(k) == v for k, v in identity.items()))
        if reusable:
            log(f"{name}: engine up to date, kept")
            pinned = old.get("fp32_layers", 0)
        else:
            log(f"{name}: building {precision} (minutes for the UNet) ...")
            pinned = Engine(plan).build(onnx_dir / source["path"], profiles[name], fp16=precision == "fp16",
                                        timing_cache=timing_cache)
            digest = sha256_file(plan)
        engines[name] = {"path": plan.name, "bytes": plan.stat().st_size, "sha256": digest,
                         "precision": precision, "fp32_layers": pinned, "onnx_sha256": source["sha256"],
                         "onnx_data_sha256": onnx_data_sha256(source),
                         "profile": profiles[name]}

    for folder in COPIED_FOLDERS:
        with atomic_dir(output / folder) as tmp:
            shutil.copytree(onnx_dir / folder, tmp, dirs_exist_ok=True)
    for name in COPIED_FILES:  # model_index.json, icv_config.json (the model's defaults): as the ONNX folder has them
        if (onnx_dir / name).is_file():
            copy_file(onnx_dir / name, output / name)
        else:
            (output / name).unlink(missing_ok=True)
    metadata = {
        "format": trt_rt.FORMAT, "format_version": trt_rt.FORMAT_VERSION, **identity, "precision": "fp16",
        "io_dtype": "float32", "static_shapes": static, "batch": batch, "one_pass": one_pass,
        "resolution": {"min": min_res, "opt": opt_res, "max": max_res},
        "model_info": info.__dict__, "vae": manifest.get("vae", "full"), "source_onnx": str(onnx_dir),
        "source_hash": manifest.get("source_hash"), "engines": engines,
        "copied_files": [plain_file_entry(output, output / n) for n in COPIED_FILES if (output / n).is_file()],
    }
    write_manifest(output / trt_rt.METADATA_NAME, metadata)
    return metadata


def onnx_data_sha256(source: dict) -> str | None:
    """SHA-256 of a graph's external weights file (graphs over 2 GB keep their weights there), None without one."""
    return (source.get("external_data") or {}).get("sha256")


def _previous_metadata(output: Path) -> dict:
    import json

    try:
        return json.loads((output / trt_rt.METADATA_NAME).read_text())
    except (OSError, ValueError):
        return {}
