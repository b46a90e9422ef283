"""Calibration data for int8 quantization: the UNet's own inputs, recorded while the pipeline answers real
instructions on real images.

Random tensors are a poor stand-in for what a diffusion UNet sees: its inputs are noisy latents of real images at
every noise level of the sampler, the image latent, and CLIP embeddings of instructions and of the empty prompt.
So the pipeline is run on the calibration images with instructions of all four tasks, through the runtime's own
sampler, and a hook on `predict_noise` records each guided UNet call (batch 3: text+image, image only, neither).
The pipeline runs the exported ONNX folder itself in OpenVINO at f32, so calibration needs no PyTorch model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from icv_deploy.errors import IcvError

# One instruction per task (docs/DESIGN.md 6), as in the README's example on examples/scene.png.
CALIBRATION_INSTRUCTIONS = (
    "Segment the red ball",
    "Detect the box",
    "Create a monocular depth map",
    "Show blue if the picture has a ball, otherwise show black",
)
CALIBRATION_SEEDS = (0, 1)
CALIBRATION_STEPS = 8
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"  # the repository's examples/ (an editable install)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def default_calibration_images() -> list[Path]:
    """The repository's examples/*.png (and .jpg): what a checkout calibrates on unless told otherwise."""
    images = sorted(p for p in EXAMPLES.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if EXAMPLES.is_dir() else []
    if not images:
        raise IcvError(f"no calibration images in {EXAMPLES}: pass --calibration-image PATH (real pictures of the kind "
                       "the model will see)")
    return images


def record_unet_inputs(folder: Path, images: list, instructions=CALIBRATION_INSTRUCTIONS, steps: int = CALIBRATION_STEPS,
                       seeds=CALIBRATION_SEEDS, resolution=..., sampler: str | None = None, vae: str | None = None,
                       log=print) -> list[dict[str, np.ndarray]]:
    """Run the pipeline of `folder` (ONNX folder, OpenVINO f32) on every image x instruction x seed and return the
    inputs of every UNet call as {"sample", "timestep", "encoder_hidden_states"} float32 arrays."""
    from icv_deploy.images import load_image
    from icv_deploy.pipeline import InstructCVPipeline

    if not images or not instructions:
        raise IcvError("calibration needs at least one image and one instruction")
    pictures = [(Path(p).name if isinstance(p, (str, Path)) else f"image {i}", load_image(p)) for i, p in enumerate(images)]
    pipe = InstructCVPipeline.from_pretrained(folder, engine="openvino", dtype="fp32", vae=vae, cache_dir=None)
    pipe.progress = False
    backend = pipe.backend
    recorded: list[dict[str, np.ndarray]] = []
    predict = backend.predict_noise

    def recording(sample, timestep, text_embeddings):
        batch = sample.shape[0]
        recorded.append({
            "sample": sample.detach().numpy().astype(np.float32, copy=True),
            "timestep": np.broadcast_to(np.asarray(timestep, np.float32).reshape(-1), (batch,)).copy(),
            "encoder_hidden_states": text_embeddings.detach().numpy().astype(np.float32, copy=True),
        })
        return predict(sample, timestep, text_embeddings)

    backend.predict_noise = recording  # an instance attribute shadows the method; the sampler looks it up per call
    try:
        for name, picture in pictures:
            for instruction in instructions:
                for seed in seeds:
                    pipe(picture, instruction, steps=steps, sampler=sampler, seed=seed, resolution=resolution)
            log(f"calibration: {name}: {len(recorded)} UNet calls recorded")
    finally:
        del backend.predict_noise
    return recorded
