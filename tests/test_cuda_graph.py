"""The CUDA-graph wrapper and the torch backend's fast-path options.

On the CPU, `eager_record` stands in for graph capture with the same contract (the recorded function reads
static input buffers and writes one static output buffer), so the shape keying and the buffer copies are
checked here; the real capture runs in the GPU test, which skips without CUDA.
"""

from __future__ import annotations

import pytest
import torch

from icv_deploy.backends.cuda_graph import GraphedCall, eager_record


def scaled(sample, timestep, text):
    # depends on every input, so a stale static buffer shows up in the result
    return sample[:, :4] * timestep[:, None, None, None] + text.mean()


def inputs(batch=3, size=4, t=10.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 8, size, size, generator=g), torch.full((batch,), t), torch.randn(batch, 77, 16, generator=g)


def test_replays_match_eager_and_inputs_are_copied_each_call():
    graphed = GraphedCall(scaled, record=eager_record, enabled=True)
    first_inputs, second_inputs = inputs(t=999.0, seed=1), inputs(t=3.5, seed=2)
    first = graphed(*first_inputs)
    kept = first.clone()
    second = graphed(*second_inputs)
    assert graphed.captures == 1  # same shapes: one recording, replayed
    torch.testing.assert_close(first, scaled(*first_inputs))
    torch.testing.assert_close(second, scaled(*second_inputs))
    torch.testing.assert_close(first, kept)  # a later replay must not change a returned tensor


def test_one_graph_per_shape_and_eager_past_the_limit():
    graphed = GraphedCall(scaled, record=eager_record, max_graphs=2, enabled=True)
    for size in (4, 8, 4, 8):
        graphed(*inputs(size=size))
    assert graphed.captures == 2 and len(graphed.graphs) == 2
    odd = inputs(batch=6, size=2)
    torch.testing.assert_close(graphed(*odd), scaled(*odd))  # third shape: eager, no new graph
    assert graphed.captures == 2


def test_cpu_tensors_run_eagerly_without_recording():
    def refuse(fn):
        raise AssertionError("must not record on the CPU")

    graphed = GraphedCall(scaled, record=refuse)
    x = inputs()
    torch.testing.assert_close(graphed(*x), scaled(*x))
    assert graphed.captures == 0


def unet_inputs(backend, batch=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = backend.info.text_hidden_size
    return (torch.randn(batch, 8, size, size, generator=g), torch.full((batch,), 500.0),
            torch.randn(batch, 77, d, generator=g))


def test_torch_backend_fast_options_on_cpu_keep_outputs(tiny_model):
    from icv_deploy.backends.torch_backend import TorchBackend

    plain = TorchBackend.from_folder(tiny_model, "cpu", "fp32")
    fast = TorchBackend.from_folder(tiny_model, "cpu", "fp32", channels_last=True, cuda_graph=True)
    assert fast.graphed_unet is None  # no CUDA graph on the CPU: eager fallback
    sample, t, text = unet_inputs(plain)
    with torch.inference_mode():
        reference = plain.unet(sample, t, encoder_hidden_states=text, return_dict=False)[0]
    torch.testing.assert_close(fast.predict_noise(sample, t, text), reference, rtol=1e-4, atol=1e-5)
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(fast.encode_image(pixels), plain.encode_image(pixels), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_graphed_call_of_the_real_unet_with_eager_record(tiny_model):
    """The backend's UNet call through GraphedCall's buffers (CPU stand-in for capture) equals eager, step after step."""
    from icv_deploy.backends.torch_backend import TorchBackend

    backend = TorchBackend.from_folder(tiny_model, "cpu", "fp32")
    graphed = GraphedCall(backend._eager_unet, record=eager_record, enabled=True)
    for step, t in enumerate((999.0, 500.0, 1.0)):
        sample, _, text = unet_inputs(backend, seed=step)
        timestep = torch.full((3,), t)
        with torch.inference_mode():
            got = graphed(sample, timestep, text)
            want = backend._eager_unet(sample, timestep, text)
        torch.testing.assert_close(got, want)
    assert graphed.captures == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_backend_matches_eager_on_gpu(tiny_model):
    from icv_deploy.backends.torch_backend import TorchBackend

    eager = TorchBackend.from_folder(tiny_model, "cuda", "fp32")
    fast = TorchBackend.from_folder(tiny_model, "cuda", "fp32", fast=True)
    assert fast.graphed_unet is not None
    for seed in range(3):
        sample, t, text = (x.cuda() for x in unet_inputs(eager, seed=seed))
        torch.testing.assert_close(fast.predict_noise(sample, t * (seed + 1) / 3, text),
                                   eager.predict_noise(sample, t * (seed + 1) / 3, text), rtol=1e-3, atol=1e-4)
    assert fast.graphed_unet.captures == 1


def test_a_failed_capture_falls_back_to_eager_for_that_shape():
    def broken(fn):
        raise RuntimeError("operation not permitted when stream is capturing")

    graphed = GraphedCall(scaled, record=broken, enabled=True)
    for seed in range(2):
        x = inputs(seed=seed)
        torch.testing.assert_close(graphed(*x), scaled(*x))
    assert graphed.captures == 0 and len(graphed.eager_signatures) == 1
