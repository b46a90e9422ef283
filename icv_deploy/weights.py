"""Checking safetensors weights before anything loads them (docs/DESIGN.md 10).

A truncated download, a file cut short by a full disk or a checkpoint saved for another configuration otherwise
ends deep inside diffusers or transformers with a long traceback. Two cheap checks answer it in one line:
  * the header: safetensors' own reader validates the header and that the file covers every tensor it lists
    (the file is memory-mapped, no tensor is read);
  * the shapes: the module the part's config.json describes is built on the `meta` device (no memory) and every
    tensor the file names must have the shape that module expects.
Names the module does not know are left alone: diffusers renames some legacy keys while loading.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ModelFilesError

WEIGHT_PARTS = ("unet", "vae", "text_encoder", "vae_tiny")


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header, or ModelFilesError naming the file and what is wrong."""
    from safetensors import SafetensorError, safe_open

    size = path.stat().st_size
    if size == 0:
        raise ModelFilesError(f"{path}: empty file (an interrupted download or copy?): fetch the weights again")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}
    except SafetensorError as exc:
        reason = " ".join(str(exc).split())
        raise ModelFilesError(f"{path}: corrupt or truncated safetensors file ({size:,} bytes; {reason}): "
                              "fetch the weights again") from None


def expected_shapes(part_folder: Path) -> tuple[str, dict[str, tuple[int, ...]]] | None:
    """(class name, parameter shapes) of the module `part_folder/config.json` describes, built on the meta device;
    None when the config names no class we know how to build."""
    import torch

    from .model_files import read_json  # model_files imports this module

    config_path = part_folder / "config.json"
    if not config_path.exists():
        return None  # a part without config.json is reported by the folder checks
    config = read_json(config_path)  # empty, oversized or invalid: one line
    try:
        with torch.device("meta"):
            if "_class_name" in config:
                import diffusers

                cls = getattr(diffusers, config["_class_name"], None)
                if cls is None:
                    return None
                module = cls.from_config(config)
            elif config.get("architectures"):
                import transformers

                cls = getattr(transformers, config["architectures"][0], None)
                if cls is None:
                    return None
                module = cls(transformers.AutoConfig.from_pretrained(part_folder))
            else:
                return None
    except Exception as exc:  # a config the library refuses: a bad model folder
        reason = " ".join(str(exc).split())[:200]
        raise ModelFilesError(f"{config_path}: cannot build the module it describes ({type(exc).__name__}: {reason})") from None
    return cls.__name__, {name: tuple(t.shape) for name, t in module.state_dict().items()}


def check_part_weights(part_folder: Path) -> None:
    """Every safetensors file of one model part: a sound header, and shapes that fit the part's config."""
    files = sorted(part_folder.glob("*.safetensors"))
    if not files:
        return
    found = {path: read_shapes(path) for path in files}
    expected = expected_shapes(part_folder)
    if expected is None:
        return
    cls_name, want = expected
    for path, shapes in found.items():
        common = [name for name in shapes if name in want]
        if shapes and not common:
            raise ModelFilesError(f"{path}: none of its {len(shapes)} tensors belongs to the {cls_name} that "
                                  f"{part_folder.name}/config.json describes (weights of another model?)")
        for name in common:
            if shapes[name] != want[name]:
                raise ModelFilesError(
                    f"{path}: tensor {name} has shape {list(shapes[name])}, the {cls_name} of "
                    f"{part_folder.name}/config.json needs {list(want[name])} (weights and config of different models)")


def check_model_weights(folder: Path) -> None:
    """Check the weights of every part a model folder has (unet/, vae/, text_encoder/, vae_tiny/)."""
    for part in WEIGHT_PARTS:
        if (Path(folder) / part).is_dir():
            check_part_weights(Path(folder) / part)
