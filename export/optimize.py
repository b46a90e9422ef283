"""Graph clean-up, fp16 conversion and saving of exported ONNX graphs.

- `clean_up`: onnxslim (constant folding, shape inference, dead-node and common-subexpression elimination). The
  result keeps standard ONNX ops only, so ONNX Runtime and TensorRT both read it.
- `to_fp16`: weights and activations in fp16 with float32 graph inputs and outputs (`keep_io_types`): every graph
  of an icv-deploy folder takes and returns float32, whatever its precision, so the runtime never casts by
  precision. What overflows or loses precision in fp16 stays float32:
    * Softmax (attention probabilities: diffusers' `upcast_softmax`),
    * the timestep path (sinusoidal embedding and time MLP, everything computed from `timestep` alone: diffusers
      computes the sinusoids in float32, and fp16 cannot even hold 988.9),
    * the whole VAE when its config says `force_upcast` (the SD 1.5 VAE overflows in fp16; diffusers upcasts it
      too): `onnx_export` then leaves the VAE graphs in float32.
- `save`: one file, or, for graphs over 2 GB (protobuf's limit), the graph plus ONE `model.onnx_data` beside it.
"""

from __future__ import annotations

from pathlib import Path

import onnx

EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2  # protobuf refuses messages of 2 GiB; keep a margin
FP16_BLOCKED_OPS = ("Softmax",)


def clean_up(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding, shape inference and dead-code elimination through onnxslim."""
    import onnxslim

    return onnxslim.slim(model)


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Weight bytes in the graph (ByteSize() itself overflows past 2 GB)."""
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) if t.HasField("raw_data") else t.ByteSize()
    for node in model.graph.node:
        if node.op_type == "Constant":
            total += sum(a.t.ByteSize() for a in node.attribute if a.HasField("t"))
    return total


def save(model: onnx.ModelProto, path: Path, external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> None:
    """Save `model` at `path`; over the threshold, every weight goes into ONE file `<name>_data` beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + "_data")
    if data.exists():
        data.unlink()  # onnx appends to an existing external-data file
    if initializer_bytes(model) > external_data_threshold:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        data.chmod(path.stat().st_mode & 0o777)  # onnx creates it owner-only; match the graph's permissions
    else:
        onnx.save_model(model, path)


def vae_keeps_fp32(vae_config: dict) -> bool:
    """The VAE asks to run in float32 (`force_upcast`, diffusers' default for AutoencoderKL; TAESD says false)."""
    return bool(vae_config.get("force_upcast", True))


def fed_only_by(nodes, graph_inputs, input_name: str, shape_ops=("Shape", "Size")) -> list:
    """Ids of the nodes that compute on `input_name` and on no other graph input, for any graph given as
    topologically sorted `(id, op_type, input names, output names)`: ONNX nodes here, TensorRT layers in
    export/engine.py, so both keep the same time embedding in float32.

    Shape-like values (outputs of `shape_ops`) count as constants: the UNet expands the timestep to the sample's
    batch with Shape(sample), and that must not pull the expansion out of the timestep path.
    """
    from_timestep, from_others = {input_name}, set(graph_inputs) - {input_name}
    ids = []
    for node_id, op_type, inputs, outputs in nodes:
        ins = [i for i in inputs if i]
        touches_t = any(i in from_timestep for i in ins)
        touches_other = op_type not in shape_ops and any(i in from_others for i in ins)
        if touches_other:
            from_others.update(outputs)
        elif touches_t:
            from_timestep.update(outputs)
            ids.append(node_id)
    return ids


def timestep_only_nodes(model: onnx.ModelProto, input_name: str = "timestep") -> list[str]:
    """Names of the ONNX nodes on the time embedding path (`fed_only_by`; exported graphs are topologically sorted)."""
    nodes = [(n.name, n.op_type, list(n.input), list(n.output)) for n in model.graph.node]
    return fed_only_by(nodes, [i.name for i in model.graph.input], input_name)


def to_fp16(model: onnx.ModelProto, keep_fp32_inputs: tuple[str, ...] = ("timestep",)) -> onnx.ModelProto:
    """fp16 weights and compute, float32 I/O; Softmax and the timestep path stay float32 (see module doc)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    for i, node in enumerate(model.graph.node):  # the converter's node block list works by name
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    graph_inputs = {i.name for i in model.graph.input}
    blocked_nodes = []
    for name in keep_fp32_inputs:
        if name in graph_inputs:
            blocked_nodes += timestep_only_nodes(model, name)
    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP16_BLOCKED_OPS),
        node_block_list=blocked_nodes,
        # In-memory shape inference needs < 2 GB; bigger graphs were shape-inferred by path before loading.
        disable_shape_infer=initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD,
    )
    # The converter appends the input casts at the end of the node list: restore topological order.
    wrapped = OnnxModel(converted)
    wrapped.topological_sort()
    return wrapped.model
