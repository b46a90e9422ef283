"""ONNX Runtime session options tuned for icv-deploy's submodels (issue 7).

What helps a Stable Diffusion UNet on a small CPU (measured in benchmarks/RESULTS.md):
  * one intra-op thread per physical core, one inter-op thread, sequential execution: the graph is a chain of
    large convolutions and matmuls, so parallel branches buy nothing and extra threads only contend;
  * static shapes: `add_free_dimension_override_by_name` pins the symbolic dims (batch, height, width) to the
    sizes a call will use, so every shape in the graph is known when the session is built: constant folding of
    the shape arithmetic, layout (NCHWc) transforms without run-time reorder checks, and a memory pattern
    that is planned once;
  * graph optimisation level ORT_ENABLE_ALL (includes the CPU layout optimisations), memory pattern and the
    CPU memory arena on, denormals flushed to zero (random or fine-tuned weights produce them in late layers,
    and a denormal multiply costs ~100 cycles on x86).
On CUDA the same function sets what matters there (no thread settings; the CUDA provider's own options are
the backend's business). `static_dims` reads the symbolic dimension names from the graph itself, so it works
whatever names the exporter wrote.

The ONNX backend calls it per submodel:

    so = ort_tuning.session_options("unet", device, static_dims=ort_tuning.static_dims(path, shapes))
    session = ort.InferenceSession(str(path), so, providers=...)
"""

from __future__ import annotations

import os
from pathlib import Path


def physical_cores() -> int:
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except ImportError:
        n = None
    if hasattr(os, "sched_getaffinity"):
        allowed = len(os.sched_getaffinity(0))  # a container or taskset may allow fewer cores than exist
        n = min(n, allowed) if n else allowed
    return max(1, n or os.cpu_count() or 1)


def session_options(submodel: str = "unet", device: str = "cpu", *, threads: int | None = None,
                    static_dims: dict[str, int] | None = None, spinning: bool = True,
                    denormal_as_zero: bool = True, optimization: str = "all", optimized_model_path: str | None = None):
    """`onnxruntime.SessionOptions` for one submodel on `device` ("cpu" or "cuda").

    threads: intra-op threads on the CPU (default: physical cores). static_dims: symbolic dim name -> size
    (see `static_dims`). optimization: "all", "extended", "basic" or "none". optimized_model_path: where ORT
    writes the optimised graph (inspection only; a session saved after CPU layout transforms only runs there).
    """
    import onnxruntime as ort

    levels = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[optimization]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_mem_pattern = True
    so.enable_cpu_mem_arena = True
    so.log_severity_level = 3  # warnings about unused initializers and the like are noise for users
    if str(device).startswith("cpu"):
        so.intra_op_num_threads = threads or physical_cores()
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if denormal_as_zero:
            so.add_session_config_entry("session.set_denormal_as_zero", "1")
    for name, size in (static_dims or {}).items():
        so.add_free_dimension_override_by_name(name, int(size))
    if optimized_model_path:
        so.optimized_model_filepath = str(optimized_model_path)
    return so


def graph_inputs(model_path: str | Path) -> dict[str, list]:
    """Input name -> dims (int or symbolic name) from the graph, without loading external weights."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    out = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        out[value.name] = [d.dim_param if d.dim_param else d.dim_value for d in dims]
    return out


def static_dims(model_path: str | Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Symbolic dim name -> size, from the concrete input `shapes` a caller will feed.

    Raises ValueError when the shapes disagree with the graph (a fixed dim of another size, a rank mismatch,
    or one symbolic name that would need two sizes).
    """
    dims: dict[str, int] = {}
    declared = graph_inputs(model_path)
    for name, shape in shapes.items():
        if name not in declared:
            raise ValueError(f"{model_path}: no graph input named {name!r} (inputs: {', '.join(declared)})")
        graph_dims = declared[name]
        if len(graph_dims) != len(shape):
            raise ValueError(f"{model_path}: input {name!r} has rank {len(graph_dims)}, got shape {tuple(shape)}")
        for axis, (want, size) in enumerate(zip(graph_dims, shape)):
            if isinstance(want, str) and want:
                if dims.setdefault(want, int(size)) != int(size):
                    raise ValueError(f"{model_path}: dimension {want!r} would be both {dims[want]} and {size}")
            elif want and int(want) != int(size):
                raise ValueError(f"{model_path}: input {name!r} axis {axis} is fixed at {want}, got {size}")
    return dims


def unet_input_shapes(batch: int, latent_height: int, latent_width: int, in_channels: int = 8,
                      text_tokens: int = 77, text_width: int = 768) -> dict[str, tuple[int, ...]]:
    """The UNet's input shapes for one guided step (batch = 3 x instructions)."""
    return {"sample": (batch, in_channels, latent_height, latent_width), "timestep": (batch,),
            "encoder_hidden_states": (batch, text_tokens, text_width)}
