"""Teaching the UNet to see the categories: a per-cell category loss on its features (issue 12).

benchmarks/recognition_probe.py found the demo UNet unable to tell which categories a picture holds (a linear probe
of its features scores the base rate), so no loss on the category word could bind the word to a shape. The
diffusion loss rewards recognition only through the few target pixels that depend on it (one mask, one flat
colour); a dedicated recogniser learns it from exact labels. This gives the UNet those labels, where TokenCompose
and REPA put their extra losses: on its own features, during training only.

A head (one 1x1 convolution per chosen block, e.g. the middle block at 8 x 8 and the last up block at the latent
grid) reads the block's output and predicts, for each cell of the block's grid, how the cell's pixels divide among
the background and the scene's categories. The target is the exact division, from the `icv-data synth` scene the
example was built from (its instance map and annotation), mirrored with the example:

    term = KL(shares of the cell || softmax(head(features)))       averaged over cells and blocks

for every example of the batch that kept its image condition, whatever its task and timestep (the picture is the
same under every instruction). The head is not part of the model: the saved UNet is the plain diffusers one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icv_deploy.errors import IcvError


@dataclass(frozen=True)
class SceneRecognition:
    scenes: str = ""  # the `icv-data synth` folder the data was built from; "": the one its icv_build.json names
    weight: float = 0.0  # of the term; 0 turns it off
    blocks: tuple[str, ...] = ("mid_block", "up_blocks.2")  # whose outputs the head reads
    grid: int = 32  # the latent grid the shares are measured on (resolution / VAE scale factor)

    @property
    def active(self) -> bool:
        return self.weight > 0


def scenes_folder(settings: SceneRecognition, data: str | Path) -> Path:
    """settings.scenes, or else the one synth folder that the data's build recorded (icv_build.json)."""
    if settings.scenes:
        return Path(settings.scenes)
    try:
        sources = json.loads((Path(data) / "icv_build.json").read_text())["options"]["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        sources = []
    synth = [source[1] for source in sources if source[0] == "synth"]
    if len(synth) != 1:
        raise IcvError(f"scene_recognition.scenes is not set and {data}/icv_build.json names no single synth folder "
                       "to read the scenes from: set it")
    return Path(synth[0])


def scene_shares(scenes, image_id: str, grid: int) -> np.ndarray:
    """(1 + categories, grid, grid) uint8: the share (x 255) of each cell's pixels that the background (0) and each
    category cover in the instance map of scene `image_id` of `scenes` (a SynthAdapter)."""
    from .datasets.base import read_label_png

    path = scenes.root / "instances" / f"{image_id}.png"
    instances = read_label_png(path, what="instance mask")
    if instances.shape[0] % grid or instances.shape[1] % grid:
        raise IcvError(f"{path}: {instances.shape[1]} x {instances.shape[0]} is not divisible by the grid {grid}")
    labels = np.zeros(instances.shape, np.int64)
    for obj in scenes.annotation(image_id)["objects"]:
        labels[instances == obj["id"]] = scenes.categories.index(obj["category"]) + 1
    onehot = np.eye(1 + len(scenes.categories), dtype=np.float32)[labels]
    h, w = instances.shape
    shares = onehot.reshape(grid, h // grid, grid, w // grid, -1).mean((1, 3)).transpose(2, 0, 1)
    return np.round(shares * 255).astype(np.uint8)


class SceneLabels:
    """The shares of every example's scene, read once: examples of one scene (its four tasks) share one map."""

    def __init__(self, settings: SceneRecognition, rows, data: str | Path = ""):
        from tqdm.auto import tqdm

        root = scenes_folder(settings, data)
        if not (root / "synth.json").is_file():
            raise IcvError(f"scene_recognition scenes {root}: not an `icv-data synth` folder (no synth.json)")
        from .datasets.synth import SynthAdapter

        scenes = SynthAdapter(root)  # the reader of icv-data build, with its checks
        self.categories = list(scenes.categories)
        sources, ids = rows["source"], rows["image_id"]
        if any(source != "synth" for source in sources):
            raise IcvError("scene_recognition: every example must come from the synth scenes it names")
        scene_of = {image_id: i for i, image_id in enumerate(dict.fromkeys(ids))}
        missing = [i for i in scene_of if not (root / "annotations" / f"{i}.json").is_file()]
        if missing:
            raise IcvError(f"scene_recognition scenes {root}: no scene {missing[0]} ({len(missing)} of the training "
                           "data's scenes are missing): is it the folder the data was built from?")
        self.shares = torch.from_numpy(np.stack([
            scene_shares(scenes, image_id, settings.grid)
            for image_id in tqdm(scene_of, desc="scene labels", unit="scene")]))
        self.scene = torch.tensor([scene_of[i] for i in ids])

    def __call__(self, index: int, mirrored: bool) -> torch.Tensor:
        shares = self.shares[self.scene[index]]
        return shares.flip(-1) if mirrored else shares


def block_channels(unet, block: str) -> int:
    """The number of channels a UNet block puts out (down_blocks.i, mid_block, up_blocks.i)."""
    channels = list(unet.config.block_out_channels)
    if block == "mid_block":
        return channels[-1]
    kind, _, index = block.partition(".")
    if kind in ("down_blocks", "up_blocks") and index.isdigit() and int(index) < len(channels):
        return (channels if kind == "down_blocks" else channels[::-1])[int(index)]
    raise IcvError(f"scene_recognition.blocks: {block!r} is not down_blocks.i, mid_block or up_blocks.i of this UNet")


class SceneRecognitionHead(torch.nn.Module):
    """The 1x1 convolutions that read the chosen blocks, and the hooks that keep the blocks' outputs."""

    def __init__(self, settings: SceneRecognition, unet, categories: int):
        super().__init__()
        self.settings, self.features = settings, {}
        self.heads = torch.nn.ModuleDict({
            block.replace(".", "-"): torch.nn.Conv2d(block_channels(unet, block), 1 + categories, 1)
            for block in settings.blocks})
        modules = dict(unet.named_modules())
        for block in settings.blocks:
            modules[block].register_forward_hook(self._keep(block))

    def _keep(self, block: str):
        def hook(module, args, output):
            self.features[block] = output[0] if isinstance(output, tuple) else output
        return hook

    def forward(self, batch: dict, kept: torch.Tensor) -> tuple[torch.Tensor | float, dict[str, float]]:
        """(weighted term, its value) for the batch rows `kept` (those that saw their picture), over the features
        of the UNet's last forward pass."""
        if len(kept) == 0:
            return 0.0, {}
        shares = batch["scene_shares"][kept].float() / 255
        terms = []
        for block in self.settings.blocks:
            logits = self.heads[block.replace(".", "-")](self.features[block][kept].float())
            target = F.adaptive_avg_pool2d(shares, logits.shape[-2:])
            # KL divergence (cross-entropy less the shares' own entropy): 0 for a perfect head at every grid size
            kl = torch.special.xlogy(target, target) - target * F.log_softmax(logits, dim=1)
            terms.append(kl.sum(1).mean())
        term = torch.stack(terms).mean()
        return self.settings.weight * term, {"scene_recognition": term.item()}
