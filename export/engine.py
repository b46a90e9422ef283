"""Building TensorRT fp16 engines from an exported ONNX folder (DESIGN.md 7), through polygraphy.

    engines/engines.json              metadata: TensorRT version, GPU name and compute capability, profiles, files
    engines/{text_encoder,unet,vae_encoder,vae_decoder}.plan
    engines/timing.cache              reused by later builds on the same GPU (or --timing-cache FILE)
    engines/tokenizer/, scheduler/, model_index.json   copied from the ONNX folder, so the folder loads on its own

Each engine has one optimisation profile (`submodels.trt_profile`: batch 3 and multiples of 3 for the UNet,
min/opt/max resolution). Engines are written to a temporary name and renamed, so a crash never leaves a
half-written `.plan`; engines already built for the same ONNX graph, profile, GPU and TensorRT version are kept.
Running engines is the runtime's job (`icv_deploy.backends.trt_backend`): the runtime never imports the exporter.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from icv_deploy.atomic import atomic_path
from icv_deploy.backends import trt_backend as trt_rt
from icv_deploy.backends.onnx_backend import COPIED_FOLDERS, SUBMODEL_NAMES, check_onnx_folder, info_from_manifest
from icv_deploy.errors import IcvError

from .manifest import sha256_file, write_manifest
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


def profiles_for(info, batch: int, min_res: int, opt_res: int, max_res: int, static: bool) -> dict:
    """Submodel -> {input: [min, opt, max]} as JSON-friendly lists."""
    specs = submodels(info)
    return {
        name: {k: [list(s) for s in shapes] for k, shapes in trt_profile(specs[name], info, batch, min_res, opt_res, max_res, static).items()}
        for name in SUBMODEL_NAMES
    }


class Engine:
    """One TensorRT engine file: build it from ONNX with a profile (polygraphy), atomically."""

    def __init__(self, plan: Path):
        self.plan = Path(plan)

    def build(self, onnx_path: Path, profile: dict, fp16: bool = True, timing_cache: Path | None = None,
              workspace_gb: float | None = None) -> None:
        trt = require_tensorrt()
        from polygraphy.backend.trt import CreateConfig, Profile, engine_from_network, network_from_onnx_path, save_engine

        trt_profile_ = Profile()
        for name, (lo, opt, hi) in profile.items():
            trt_profile_.add(name, min=tuple(lo), opt=tuple(opt), max=tuple(hi))
        pools = {trt.MemoryPoolType.WORKSPACE: int(workspace_gb * 2**30)} if workspace_gb else None
        config = CreateConfig(
            fp16=fp16, profiles=[trt_profile_], memory_pool_limits=pools,
            load_timing_cache=str(timing_cache) if timing_cache and Path(timing_cache).exists() else None,
        )
        # Native InstanceNormalization: the exported GroupNorm is Reshape + InstanceNorm; the plugin is slower.
        network = network_from_onnx_path(str(onnx_path), flags=[trt.OnnxParserFlag.NATIVE_INSTANCENORM])
        engine = engine_from_network(network, config=config, save_timing_cache=str(timing_cache) if timing_cache else None)
        with atomic_path(self.plan) as tmp:
            save_engine(engine, path=str(tmp))


def build_engines(onnx_dir, output, batch: int = 1, min_res: int = 128, opt_res: int = 256, max_res: int = 512,
                  static: bool = False, timing_cache: Path | None = None, progress=None, log=print) -> dict:
    """Build the four engines of `onnx_dir` into `output`; returns the metadata written to engines.json."""
    trt = require_tensorrt()
    onnx_dir, output = Path(onnx_dir), Path(output)
    manifest = check_onnx_folder(onnx_dir)
    info = info_from_manifest(manifest, onnx_dir)
    profiles = profiles_for(info, batch, min_res, opt_res, max_res, static)
    identity = trt_rt.runtime_identity(trt)
    timing_cache = Path(timing_cache) if timing_cache else output / "timing.cache"
    output.mkdir(parents=True, exist_ok=True)
    previous = _previous_metadata(output)

    engines = {}
    names = progress(SUBMODEL_NAMES, desc="engines") if progress else SUBMODEL_NAMES
    for name in names:
        plan = output / f"{name}.plan"
        source = manifest["submodels"][name]
        old = previous.get("engines", {}).get(name, {})
        reusable = (plan.exists() and old.get("onnx_sha256") == source["sha256"] and old.get("profile") == profiles[name]
                    and all(previous.get(k) == v for k, v in identity.items()))
        if reusable:
            log(f"{name}: engine up to date, kept")
        else:
            log(f"{name}: building (minutes for the UNet) ...")
            Engine(plan).build(onnx_dir / source["path"], profiles[name], fp16=True, timing_cache=timing_cache)
        engines[name] = {"path": plan.name, "bytes": plan.stat().st_size, "sha256": sha256_file(plan),
                         "onnx_sha256": source["sha256"], "profile": profiles[name]}

    for folder in COPIED_FOLDERS:
        shutil.rmtree(output / folder, ignore_errors=True)
        shutil.copytree(onnx_dir / folder, output / folder)
    shutil.copyfile(onnx_dir / "model_index.json", output / "model_index.json")
    metadata = {
        "format": trt_rt.FORMAT, "format_version": trt_rt.FORMAT_VERSION, **identity, "precision": "fp16",
        "io_dtype": "float32", "static_shapes": static, "batch": batch,
        "resolution": {"min": min_res, "opt": opt_res, "max": max_res},
        "model_info": info.__dict__, "vae": manifest.get("vae", "full"), "source_onnx": str(onnx_dir),
        "source_hash": manifest.get("source_hash"), "engines": engines,
    }
    write_manifest(output / trt_rt.METADATA_NAME, metadata)
    return metadata


def _previous_metadata(output: Path) -> dict:
    import json

    try:
        return json.loads((output / trt_rt.METADATA_NAME).read_text())
    except (OSError, ValueError):
        return {}
