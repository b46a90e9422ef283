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

The word term (`word_weight`) asks the same question through the instruction. Runs 3-6 of
benchmarks/results/scene-recognition-2026-12-01/ found features that see the categories and a text encoder that
never told the category words apart, since nothing needed it to. For each example that kept both conditions and
names a category (the word's one CLIP token), the text encoder's output at that word, e, and each cell's features,
f, give a CLIP-style score, and the target is the cell's share of the named category (zero everywhere for a
category the picture lacks, as training/absent_negatives.py asks):

    word term = BCE(sigmoid(<P f, Q e> / sqrt(d) + b), share of the named category)     averaged over cells, blocks

P (a 1x1 convolution per block) and Q (one linear map) are the head's; the gradient through e reaches the text
encoder, whose outputs are what the UNet's cross-attention reads, so the category words have to differ there.
"""

from __future__ import annotations

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
    word_weight: float = 0.0  # of the word term (the named category's cells, scored through the instruction)
    word_width: int = 64  # d: the width of the space where cells and words meet

    @property
    def active(self) -> bool:
        return self.weight > 0 or self.word_weight > 0


def scenes_folder(settings: SceneRecognition, data: str | Path) -> Path:
    """settings.scenes, or else the one synth folder that the data's build recorded (icv_build.json)."""
    if settings.scenes:
        return Path(settings.scenes)
    from .build import build_options

    try:
        sources = build_options(data)["sources"]
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
    """The 1x1 convolutions that read the chosen blocks, and the hooks that keep the blocks' outputs; with
    `word_weight`, the cell and word projections of the word term and the category of each category word's token
    (`category_tokens`: one CLIP token id per category, in the order of the shares' channels 1..)."""

    def __init__(self, settings: SceneRecognition, unet, categories: int, category_tokens: list[int] | None = None,
                 text_width: int | None = None):
        super().__init__()
        self.settings, self.features = settings, {}
        self.heads = torch.nn.ModuleDict({
            block.replace(".", "-"): torch.nn.Conv2d(block_channels(unet, block), 1 + categories, 1)
            for block in settings.blocks})
        if settings.word_weight > 0:
            if category_tokens is None or len(category_tokens) != categories or not text_width:
                raise IcvError("scene_recognition.word_weight needs one token per category and the text width")
            self.register_buffer("category_tokens", torch.tensor(category_tokens), persistent=False)
            self.cells = torch.nn.ModuleDict({
                block.replace(".", "-"): torch.nn.Conv2d(block_channels(unet, block), settings.word_width, 1)
                for block in settings.blocks})
            self.words = torch.nn.Linear(text_width, settings.word_width)
            self.word_bias = torch.nn.Parameter(torch.full((len(settings.blocks),), -2.0))  # most cells are not it
        modules = dict(unet.named_modules())
        for block in settings.blocks:
            modules[block].register_forward_hook(self._keep(block))

    def _keep(self, block: str):
        def hook(module, args, output):
            self.features[block] = output[0] if isinstance(output, tuple) else output
        return hook

    def forward(self, batch: dict, kept: torch.Tensor, text: torch.Tensor | None = None,
                kept_text: torch.Tensor | None = None) -> tuple[torch.Tensor | float, dict[str, float]]:
        """(weighted terms, their values) over the features of the UNet's last forward pass: the category term for
        the batch rows `kept` (those that saw their picture), the word term for the rows `kept_text` (those that saw
        picture and instruction; `text`: the text encoder's output for the batch)."""
        total, values = 0.0, {}
        if self.settings.weight > 0 and len(kept):
            term = self.category_term(batch["scene_shares"][kept].float() / 255, kept)
            total, values["scene_recognition"] = self.settings.weight * term, term.item()
        if self.settings.word_weight > 0 and text is not None and kept_text is not None and len(kept_text):
            word = self.word_term(batch, text, kept_text)
            if word is not None:
                total, values["scene_word"] = total + self.settings.word_weight * word, word.item()
        return total, values

    def category_term(self, shares: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        terms = []
        for block in self.settings.blocks:
            logits = self.heads[block.replace(".", "-")](self.features[block][kept].float())
            target = F.adaptive_avg_pool2d(shares, logits.shape[-2:])
            # KL divergence (cross-entropy less the shares' own entropy): 0 for a perfect head at every grid size
            kl = torch.special.xlogy(target, target) - target * F.log_softmax(logits, dim=1)
            terms.append(kl.sum(1).mean())
        return torch.stack(terms).mean()

    def word_term(self, batch: dict, text: torch.Tensor, rows: torch.Tensor) -> torch.Tensor | None:
        """The word term over `rows` whose instruction holds a category word (None if none does)."""
        ids = batch["input_ids"][rows]
        is_word = ids[..., None] == self.category_tokens  # (rows, tokens, categories)
        named = is_word.any(-1).any(-1)
        if not named.any():
            return None
        rows, is_word = rows[named], is_word[named]
        position = is_word.any(-1).float().argmax(-1)  # the first category word of each instruction
        category = is_word[torch.arange(len(rows)), position].float().argmax(-1)
        words = self.words(text[rows, position].float())  # (n, d)
        shares = batch["scene_shares"][rows].float() / 255
        named_share = shares[torch.arange(len(rows)), 1 + category][:, None]  # (n, 1, grid, grid)
        terms = []
        for i, block in enumerate(self.settings.blocks):
            cells = self.cells[block.replace(".", "-")](self.features[block][rows].float())  # (n, d, h, w)
            logits = torch.einsum("ndhw,nd->nhw", cells, words) / self.settings.word_width ** 0.5 + self.word_bias[i]
            target = F.adaptive_avg_pool2d(named_share, logits.shape[-2:])[:, 0]
            terms.append(F.binary_cross_entropy_with_logits(logits, target))
        return torch.stack(terms).mean()
