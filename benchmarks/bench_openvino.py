"""The OpenVINO engines of latency.py: openvino (bf16 where the CPU has it, else f32), openvino-bf16, openvino-f32
and openvino-int8, each named by the precision it really runs in, so tables, JSON and plots say it.

openvino / -bf16 / -f32 open the ONNX folder itself; openvino-int8 opens an int8 IR folder (--openvino-model, or one
quantized once into the cache with `icv-export openvino --precision int8` and redone when the ONNX folder changes).
Compiled models go to OpenVINO's model cache in the cache folder, so a second run does not recompile.
"""

from __future__ import annotations

from pathlib import Path

import click

from icv_deploy.errors import IcvError

OPENVINO_ENGINES = ("openvino", "openvino-bf16", "openvino-f32", "openvino-int8")


def cpu_has_bf16() -> bool:
    from icv_deploy.backends.openvino_backend import cpu_capabilities, import_openvino

    return "BF16" in cpu_capabilities(import_openvino().Core())


def resolve_names(names: list[str]) -> list[str]:
    """"openvino" becomes the precision it will run in; openvino-bf16 on a CPU without bf16 is refused (it would run
    f32 under a bf16 label). Duplicates after that are dropped."""
    if not any(n in OPENVINO_ENGINES for n in names):
        return names
    bf16 = cpu_has_bf16()
    if "openvino-bf16" in names and not bf16:
        raise IcvError("openvino-bf16: this CPU has no bf16 support (OpenVINO reports no BF16): use openvino-f32, "
                       "or openvino, which picks")
    resolved = [("openvino-bf16" if bf16 else "openvino-f32") if n == "openvino" else n for n in names]
    return list(dict.fromkeys(resolved))


def int8_folder(onnx_dir: Path, given: Path | None, cache: Path) -> Path:
    """The int8 IR folder: the one given, or one quantized once from `onnx_dir` into the cache (again when the ONNX
    folder's manifest changes)."""
    if given is not None:
        return given
    from icv_deploy.export.manifest import sha256_file
    from icv_deploy.model_files import read_json

    folder = cache / "openvino-ir" / f"{onnx_dir.name}-int8"
    source = sha256_file(onnx_dir / "manifest.json")
    manifest = folder / "manifest.json"
    if not manifest.exists() or read_json(manifest).get("source_onnx_manifest_sha256") != source:
        from icv_deploy.export.openvino_export import export_openvino

        click.echo(f"quantizing {onnx_dir} to an int8 OpenVINO folder in {folder} (once; NNCF, calibrated on "
                   "the examples)", err=True)
        export_openvino(onnx_dir, folder, precision="int8", log=lambda s: click.echo(s, err=True))
    return folder


def open_openvino(engine: str, onnx_dir: Path, int8_dir: Path | None, cache: Path, vae: str = "full"):
    """(pipeline, options for the JSON) of an OpenVINO engine named by resolve_names."""
    from icv_deploy.pipeline import InstructCVPipeline

    precision = engine.split("-", 1)[1]
    folder = int8_dir if precision == "int8" else onnx_dir
    dtype = {"bf16": "bf16", "f32": "fp32", "int8": "int8"}[precision]
    pipe = InstructCVPipeline.from_pretrained(folder, engine="openvino", dtype=dtype, vae=vae,
                                              cache_dir=cache / "openvino")
    backend = pipe.backend
    options = {"folder": str(folder), "precision": backend.precision, "inference_precision": backend.inference_precision,
               "precision_reason": backend.precision_reason, "static_shapes": backend.static_shapes,
               "model_cache": str(backend.cache_dir)}
    if precision == "int8":
        options["quantization"] = backend.manifest.get("quantization")
    return pipe, options
