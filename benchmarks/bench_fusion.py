"""ONNX Runtime's own transformer fusions for a UNet (attention -> Attention / MultiHeadAttention contrib ops,
LayerNorm + residual -> SkipLayerNormalization, Gelu), run on an exported UNet for the CPU, for
`ort_unet_sweep.py --variants tuned-static-fused`.

Only the fusions that have CPU kernels are on: GroupNorm, SkipGroupNorm, BiasSplitGelu, BiasAdd, packed QKV/KV
and NHWC convolutions exist for CUDA only. onnxruntime 1.32's FusionAttentionUnet reads the head count with
`int()` of a one-element array, which NumPy 2.4 refuses (TypeError: only 0-dimensional arrays can be
converted); `_numpy2_head_count` replaces that one method so that attention fusion runs at all.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

CUDA_ONLY_FUSIONS = ("enable_group_norm", "enable_skip_group_norm", "enable_bias_splitgelu", "enable_bias_add",
                     "enable_packed_qkv", "enable_packed_kv", "enable_nhwc_conv", "enable_bias_skip_layer_norm",
                     "enable_qordered_matmul")


def _numpy2_head_count() -> None:
    """Patch FusionAttentionUnet.get_num_heads (PyTorch-2 pattern) to read a one-element array with .item()."""
    import onnxruntime.transformers.optimizer  # noqa: F401  (importing it loads the fusion modules patched below)

    for name, module in list(sys.modules.items()):
        if not name.endswith("fusion_attention_unet") or getattr(module, "_icv_patched", False):
            continue
        original = module.FusionAttentionUnet.get_num_heads

        def get_num_heads(self, reshape_q, is_torch2=False, original=original):
            if not is_torch2:
                return original(self, reshape_q, is_torch2)
            parent = self.model.get_parent(reshape_q, 1)
            if parent is not None and parent.op_type == "Concat" and len(parent.input) == 4:
                value = self.model.get_constant_value(parent.input[2])
                if isinstance(value, np.ndarray) and value.size == 1 and int(value.reshape(-1)[0]) > 0:
                    return int(value.reshape(-1)[0])
            return 0

        module.FusionAttentionUnet.get_num_heads = get_num_heads
        module._icv_patched = True


def fused_unet(unet_path: Path, out_path: Path, log=print) -> Path:
    """Write ORT's CPU-capable UNet fusions of `unet_path` to `out_path` (once) and return the path."""
    from collections import Counter

    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    out_path = Path(out_path)
    if out_path.exists():
        return out_path
    _numpy2_head_count()
    options = FusionOptions("unet")
    for flag in CUDA_ONLY_FUSIONS:
        setattr(options, flag, False)
    model = optimize_model(str(unet_path), model_type="unet", opt_level=0, optimization_options=options, use_gpu=False)
    counts = Counter(node.op_type for node in model.model.graph.node)
    log(f"fused: {counts['Attention']} Attention, {counts['MultiHeadAttention']} MultiHeadAttention, "
        f"{counts['SkipLayerNormalization']} SkipLayerNormalization nodes")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    model.save_model_to_file(str(tmp), use_external_data_format=True, all_tensors_to_one_file=True)
    tmp.replace(out_path)  # the graph last: its external data file (model.onnx.tmp.data) is already complete
    return out_path
