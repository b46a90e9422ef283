"""icv-deploy: fast, deployable InstructCV.

    import icv_deploy
    pipe = icv_deploy.load("path/to/model")          # diffusers folder, ONNX folder (engine="onnx") or engines
    res = pipe("cat.jpg", "Segment the cat")
    res.mask, res.save("out/")
"""

__version__ = "0.1.0"


def load(model, engine: str = "torch", device: str = "cpu", dtype=None, **options):
    from .pipeline import load as _load

    return _load(model, engine=engine, device=device, dtype=dtype, **options)


__all__ = ["load", "__version__"]
