"""Replaying the guided UNet step as a CUDA graph (static shapes).

A denoising step calls the UNet thousands of kernels deep with the same shapes every step; on a fast GPU at
256 px the launch overhead is a large part of the step. A CUDA graph records those launches once and replays
them with one call. The price: the graph reads and writes fixed memory. So the wrapper keeps, per input
shape, static input buffers (the caller's tensors are copied into them), one recorded graph and its static
output buffer (copied out, so a later replay never changes a tensor the caller already holds).

The recording itself is a small function, `record(fn) -> (replay, static_output)`: `cuda_record` is the
real one (warm-up on a side stream, capture, as the PyTorch CUDA-graph docs do it); tests pass an eager
stand-in to check the shape keying and buffer logic on the CPU. On a device that is not CUDA the wrapper
calls the function directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger("icv_deploy")

Recorder = Callable[[Callable[[], torch.Tensor]], tuple[Callable[[], None], torch.Tensor]]


def cuda_record(fn: Callable[[], torch.Tensor], warmup: int = 3) -> tuple[Callable[[], None], torch.Tensor]:
    """Capture `fn()` (which reads only static buffers) into a CUDA graph; return (replay, static output)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture: cuDNN/cuBLAS pick algorithms, allocate workspaces
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn()
    return graph.replay, output


def eager_record(fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
    """A stand-in with a CUDA graph's contract, for tests: replay re-runs fn into the same output buffer."""
    output = fn()

    def replay():
        output.copy_(fn())

    return replay, output


@dataclass
class _Captured:
    inputs: tuple[torch.Tensor, ...]  # static buffers the graph reads
    replay: Callable[[], None]
    output: torch.Tensor  # static buffer the graph writes


class GraphedCall:
    """`GraphedCall(fn)(*tensors)` == `fn(*tensors)`, replayed from a CUDA graph per distinct input signature.

    `fn` must be a pure function of its tensor arguments with fixed output shape per input shape
    (the UNet: sample, timestep, text embeddings -> noise). `max_graphs` bounds the memory kept for
    graphs of different shapes (each holds its own activations); past it, new shapes run eagerly.
    `fn_for_graph(signature)`, if given, returns the function to record for a new signature, while eager calls
    keep using `fn`: a TensorRT execution context bakes its input shapes into the work a graph records, so
    the TensorRT backend gives each graph a context of its own (trt_backend.graphed_unet).
    """

    def __init__(self, fn: Callable[..., torch.Tensor], record: Recorder | None = None, max_graphs: int = 4,
                 enabled: bool | None = None, fn_for_graph: Callable[[tuple], Callable[..., torch.Tensor]] | None = None):
        self.fn = fn
        self.fn_for_graph = fn_for_graph
        self.record = record or cuda_record
        self.max_graphs = max_graphs
        self.enabled = enabled  # None: decide from the device of the first argument
        self.graphs: dict[tuple, _Captured] = {}
        self.eager_signatures: set[tuple] = set()  # shapes whose capture failed
        self.captures = 0  # how many graphs were recorded (tests and benchmarks read it)

    @staticmethod
    def signature(tensors) -> tuple:
        return tuple((tuple(t.shape), t.dtype, str(t.device)) for t in tensors)

    def _use_graph(self, tensors) -> bool:
        if self.enabled is not None:
            return self.enabled
        return all(t.device.type == "cuda" for t in tensors)

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        if not self._use_graph(tensors):
            return self.fn(*tensors)
        key = self.signature(tensors)
        if key in self.eager_signatures:
            return self.fn(*tensors)
        captured = self.graphs.get(key)
        if captured is None:
            if len(self.graphs) >= self.max_graphs:
                return self.fn(*tensors)
            try:
                captured = self._capture(key, tensors)
            except RuntimeError as exc:  # an op that cannot be captured (a host sync, say): stay correct, run eagerly
                log.warning("CUDA graph capture failed (%s); running this shape eagerly", " ".join(str(exc).split())[:200])
                self.eager_signatures.add(key)
                return self.fn(*tensors)
        for buffer, value in zip(captured.inputs, tensors):
            buffer.copy_(value)
        captured.replay()
        return captured.output.clone()

    def _capture(self, key, tensors) -> _Captured:
        inputs = tuple(t.detach().clone() for t in tensors)
        fn = self.fn_for_graph(key) if self.fn_for_graph else self.fn
        replay, output = self.record(lambda: fn(*inputs))
        captured = _Captured(inputs, replay, output)
        self.graphs[key] = captured
        self.captures += 1
        return captured

    def reset(self) -> None:
        """Drop every recorded graph and its buffers (e.g. before changing resolution for good)."""
        self.graphs.clear()
