"""Convert an exported ONNX folder into an OpenVINO IR folder, optionally with an int8 UNet (`icv-export openvino`).

    out/manifest.json                                  format "icv-deploy-openvino" (icv_deploy.backends.openvino_backend)
    out/{text_encoder,unet,vae_encoder,vae_decoder}/openvino_model.xml + openvino_model.bin + config.json
    out/tokenizer/, scheduler/, model_index.json [, icv_config.json]   carried over from the ONNX folder

Precisions (what `--precision` writes; the runtime's default inference precision follows it):
    f32   weights stored f32; runs f32 by default. The reference: same graph as the ONNX folder.
    bf16  weights stored f16 (half the disk; OpenVINO's default `compress_to_fp16`), runs bf16 where the CPU has
          it (AMX, AVX512-BF16), f32 elsewhere.
    int8  the bf16 folder with the UNet quantized by NNCF post-training quantization (`quantize_unet`), calibrated
          on the UNet's own inputs from real images and instructions (`calibration.py`).

The manifest carries the ONNX folder's source model and hashes, records each file's size and SHA-256, and for int8
the quantization method and its calibration set. Each submodel folder is written under a temporary name and renamed
when complete; an interrupted export resumes from the finished submodels (the same source and precision), and the
manifest is written last, so a folder without one is never taken for a finished export.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from icv_deploy import __version__
from icv_deploy.atomic import copy_file, write_json
from icv_deploy.backends import openvino_backend as ovb
from icv_deploy.backends.onnx_backend import COPIED_FILES, COPIED_FOLDERS, MANIFEST_NAME, SUBMODEL_NAMES, check_onnx_folder
from icv_deploy.errors import IcvError

from . import calibration
from . import manifest as mf
from .manifest import plain_file_entry, sha256_file, write_manifest
from .onnx_export import _copy_tree

STATE_NAME = ".icv-openvino-state.json"

# NNCF settings for the diffusion UNet (recorded in the manifest). TRANSFORMER adds SmoothQuant on the MatMuls
# (attention and feed-forward), whose activations have the outlier channels that plain min-max ranges lose, and
# NNCF's transformer patterns (its MIXED preset: symmetric weights, asymmetric activations). The first and last
# layers and the timestep embedding stay in float: conv_in sees raw latents, conv_out writes the predicted noise,
# and the time embedding's range varies over the sampler's timesteps. Bias correction is off, as in OpenVINO's
# Stable Diffusion quantization notebooks: slow on a UNet and no better there.
IGNORED_PATTERNS = (r".*/conv_in/.*", r".*/conv_out/.*", r".*/time_embedding/.*")
SMOOTH_QUANT_ALPHA = 0.95


def quantize_unet(model, items: list[dict], log=print):
    """NNCF post-training int8 quantization of the UNet `model` (an ov.Model) on recorded UNet inputs."""
    import nncf

    nncf.set_log_level(logging.ERROR)
    ignored = nncf.IgnoredScope(patterns=list(IGNORED_PATTERNS), validate=True)
    log(f"unet: quantizing to int8 on {len(items)} recorded UNet calls (NNCF {nncf.__version__}) ...")
    return nncf.quantize(
        model, nncf.Dataset(items), subset_size=len(items), model_type=nncf.ModelType.TRANSFORMER,
        ignored_scope=ignored,
        advanced_parameters=nncf.AdvancedQuantizationParameters(
            smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=SMOOTH_QUANT_ALPHA),
            disable_bias_correction=True),
    )


def quantization_record(model, calibration_info: dict) -> dict:
    """What the manifest says about an int8 UNet: the method, its settings, what stayed float, the calibration set."""
    import re

    import nncf

    names = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in ("Convolution", "MatMul")]
    kept = [n for n in names if any(re.fullmatch(p, n) for p in IGNORED_PATTERNS)]
    return {
        "method": "NNCF post-training quantization (nncf.quantize): static int8 weights and activations",
        "submodels": ["unet"], "nncf": nncf.__version__, "model_type": "TRANSFORMER", "preset": "MIXED (NNCF default)",
        "smooth_quant_alpha_matmul": SMOOTH_QUANT_ALPHA, "bias_correction": False,
        "ignored_scope_patterns": list(IGNORED_PATTERNS), "kept_in_float": kept,
        "fake_quantize_nodes": sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops()),
        "calibration": calibration_info,
    }


def relative_l2(core, reference_model, model, items: list[dict]) -> float:
    """||out - ref|| / ||ref|| of two models, both compiled with the f32 hint, over `items`."""
    ref = core.compile_model(reference_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    new = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    num = den = 0.0
    for item in items:
        a, b = np.asarray(new(item)[0], np.float64), np.asarray(ref(item)[0], np.float64)
        num, den = num + float(((a - b) ** 2).sum()), den + float((b ** 2).sum())
    return (num / den) ** 0.5 if den else float("nan")


def int8_unet(core, onnx_dir: Path, unet_path: Path, images, instructions, steps, resolution, calibration_info: dict,
              log=print):
    """(quantized UNet, its manifest record): calibrate on the pipeline's own UNet inputs, quantize, measure."""
    # The whole pipeline is loaded while recording; it is freed before the UNet is read again to be quantized.
    items = calibration.record_unet_inputs(onnx_dir, images, instructions, steps, resolution=resolution, log=log)
    gc.collect()
    model = core.read_model(str(unet_path))
    quantized = quantize_unet(model, items, log=log)
    record = quantization_record(quantized, {**calibration_info, "unet_calls": len(items)})
    check = items[:: max(1, len(items) // 8)][:8]
    error = relative_l2(core, model, quantized, check)
    record["unet_rel_l2_vs_f32_on_calibration_inputs"] = round(error, 5)
    log(f"unet: int8 relative L2 error against f32 on {len(check)} calibration calls: {error:.3%}")
    return quantized, record


def export_openvino(onnx_dir, output, precision: str = "bf16", calibration_images=None,
                    calibration_instructions=calibration.CALIBRATION_INSTRUCTIONS,
                    calibration_steps: int = calibration.CALIBRATION_STEPS, calibration_resolution=...,
                    log=print, progress=None) -> dict:
    """Write the IR folder of the ONNX folder `onnx_dir` into `output`; returns the manifest."""
    ov = ovb.import_openvino()
    if precision not in ovb.PRECISIONS:
        raise IcvError(f"precision {precision!r}: choose one of {', '.join(ovb.PRECISIONS)}")
    onnx_dir, output = Path(onnx_dir), Path(output)
    source = check_onnx_folder(onnx_dir)
    if source["precision"] != "fp32":
        raise IcvError(f"{onnx_dir}: an {source['precision']} ONNX folder; convert an fp32 one (`icv-export onnx` "
                       "without --fp16): OpenVINO chooses its own precision")
    state = {"source_onnx_manifest": sha256_file(onnx_dir / MANIFEST_NAME), "precision": precision, "done": {}}
    if precision == "int8":  # part of what a resumed export must match: another calibration set, another UNet
        images = [Path(p) for p in (calibration_images or calibration.default_calibration_images())]
        state["calibration"] = {"images": [p.name for p in images], "image_sha256": [sha256_file(p) for p in images],
                                "instructions": list(calibration_instructions), "steps": calibration_steps,
                                "seeds": list(calibration.CALIBRATION_SEEDS), "resolution": calibration_resolution
                                if calibration_resolution is not ... else "the model's default"}
    previous = mf.resume_export(output, state, STATE_NAME, ("source_onnx_manifest", "precision", "calibration"),
                                ovb.IR_FILE, ovb.FORMAT, "icv-export openvino")
    state["done"] = previous.get("done", {})
    state.update({k: previous[k] for k in ("quantization",) if k in previous})
    core = ov.Core()
    compress = precision != "f32"
    names = progress(SUBMODEL_NAMES, desc="openvino") if progress else SUBMODEL_NAMES
    for name in names:
        if name in state["done"]:
            log(f"{name}: already converted, kept")
            continue
        entry = {"weights_dtype": "f16" if compress else "f32"}
        if name == "unet" and precision == "int8":
            model, state["quantization"] = int8_unet(
                core, onnx_dir, onnx_dir / source["submodels"]["unet"]["path"], images, calibration_instructions,
                calibration_steps, calibration_resolution, state["calibration"], log)
            entry["weights_dtype"] = "int8"
        else:
            model = core.read_model(str(onnx_dir / source["submodels"][name]["path"]))
        _save_submodel(ov, model, onnx_dir / name / "config.json", output, name, compress)
        state["done"][name] = entry
        write_json(output / STATE_NAME, state)
        log(f"{name}: converted ({entry['weights_dtype']} weights)")

    for folder in COPIED_FOLDERS:
        _copy_tree(onnx_dir / folder, output / folder)
    for file in COPIED_FILES:  # model_index.json, and icv_config.json where the ONNX folder has one
        if (onnx_dir / file).is_file():
            copy_file(onnx_dir / file, output / file)
        else:
            (output / file).unlink(missing_ok=True)
    manifest = {
        "format": ovb.FORMAT, "format_version": ovb.FORMAT_VERSION, "precision": precision,
        "io_dtype": source["io_dtype"], "vae": source.get("vae", "full"),
        "source_model": source.get("source_model"), "source_hash": source.get("source_hash"),
        "source_onnx": str(onnx_dir), "source_onnx_manifest_sha256": state["source_onnx_manifest"],
        "exporter": {"icv_deploy": __version__, "openvino": ov.__version__,
                     "method": "openvino.Core.read_model(ONNX) -> openvino.save_model(compress_to_fp16="
                               f"{compress})" + (" with an NNCF int8 UNet" if precision == "int8" else "")},
        "default_inference_precision": "f32" if precision == "f32" else "bf16 where the CPU has it, else f32",
        "quantization": state.get("quantization"),
        "model_info": source["model_info"], "image_size_multiple": source.get("image_size_multiple"), "submodels": {},
        "copied_files": [plain_file_entry(output, output / f) for f in COPIED_FILES if (output / f).is_file()],
    }
    for name in SUBMODEL_NAMES:
        xml = output / name / ovb.IR_FILE
        manifest["submodels"][name] = {
            **plain_file_entry(output, xml), "weights": plain_file_entry(output, xml.with_suffix(".bin")),
            "weights_dtype": state["done"][name]["weights_dtype"],
            "inputs": source["submodels"][name]["inputs"], "outputs": source["submodels"][name]["outputs"],
        }
    write_manifest(output / MANIFEST_NAME, manifest)
    (output / STATE_NAME).unlink(missing_ok=True)
    ovb.check_ir_folder(output)  # what the runtime will check, before anyone relies on the folder
    return manifest


def _save_submodel(ov, model, config_json: Path, output: Path, name: str, compress: bool) -> None:
    """Write name/openvino_model.{xml,bin} + config.json under a temporary folder, then rename it into place."""
    work = output / f".{name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        ov.save_model(model, str(work / ovb.IR_FILE), compress_to_fp16=compress)
        shutil.copyfile(config_json, work / "config.json")
        shutil.rmtree(output / name, ignore_errors=True)
        os.replace(work, output / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
