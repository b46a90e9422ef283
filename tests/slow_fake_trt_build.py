"""`build_engines` in a process of its own with TensorRT faked as in test_trt.py, each plan written slowly in
pieces, so that test_crash_resume.py can SIGKILL the engine writer in the middle of a plan.

    python tests/slow_fake_trt_build.py ONNX_DIR OUTPUT_DIR
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_trt import LAYER_TYPES, RUNTIME, network_from_onnx  # noqa: E402  (the fakes the in-process tests use)


def install_fake_tensorrt() -> None:
    sys.modules["tensorrt"] = types.SimpleNamespace(
        __version__="10.99.0", MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
        OnnxParserFlag=types.SimpleNamespace(NATIVE_INSTANCENORM="native_instancenorm"),
        LayerType=LAYER_TYPES, float32="float32",
    )
    import polygraphy.backend.trt as poly

    from icv_deploy.backends import trt_backend

    class Profile(dict):
        def add(self, name, min, opt, max):
            self[name] = (min, opt, max)
            return self

    def engine_from_network(network, config=None, save_timing_cache=None):
        builder, net, onnx_path = network
        return f"engine-of-{Path(onnx_path).parent.name}-fp16-{config['fp16']}-{sorted(config['profiles'][0].items())}"

    def save_engine(engine, path):
        """A plan of some 100 kB, written 4 kB at a time: the kill lands while a plan is half on disk."""
        data = (b"PLAN:" + engine.encode()) * 200
        with open(path, "wb") as fh:
            for start in range(0, len(data), 4096):
                fh.write(data[start:start + 4096])
                fh.flush()
                time.sleep(0.01)

    poly.Profile = Profile
    poly.CreateConfig = lambda **kw: kw
    poly.network_from_onnx_path = lambda path, flags=None: ("builder", network_from_onnx(path), path)
    poly.engine_from_network = engine_from_network
    poly.save_engine = save_engine
    trt_backend.runtime_identity = lambda trt_module, device_index=None: dict(RUNTIME, tensorrt_version=trt_module.__version__)


if __name__ == "__main__":
    install_fake_tensorrt()
    from icv_deploy.export.engine import build_engines

    build_engines(sys.argv[1], sys.argv[2], min_res=32, opt_res=64, max_res=128, log=print)
