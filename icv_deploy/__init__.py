"""icv-deploy: fast, deployable InstructCV.

    import icv_deploy
    pipe = icv_deploy.load()                         # the bundled demo model ($ICV_MODEL overrides)
    pipe = icv_deploy.load("path/to/model")          # diffusers folder, ONNX folder (engine="onnx") or engines
    res = pipe("cat.jpg", "Segment the cat")
    res.mask, res.save("out/")
"""

__version__ = "0.1.0"


def load(model=None, engine: str = "torch", device: str = "cpu", dtype=None, **options):
    """Open a model: a bundled model's name (`demo`, `demo-1step`), a folder or hub id; None: $ICV_MODEL, else `demo`."""
    from .pipeline import load as _load

    return _load(model, engine=engine, device=device, dtype=dtype, **options)


__all__ = ["load", "__version__"]
