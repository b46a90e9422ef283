"""Grounding the category word: a loss on the UNet's cross-attention maps (TokenCompose, Wang et al. CVPR 2024).

benchmarks/answer_anatomy.py found the demo model deaf to the category: asked to segment a category the picture
does not hold, it paints the same mask as for the named one (IoU 0.98), a mask of every object. The diffusion loss
and the decoded-mask loss only say which pixels to paint; nothing ties the word "cube" to the cube's pixels, and
2,800 steps did not find the tie. TokenCompose supervises it where it lives: in each cross-attention layer, the
attention that the image positions pay to the category token should fall inside that category's mask.

For the segmentation examples of a batch that kept both conditions, the target mask (the target's channel mean
above the runtime's threshold, the mask the example teaches) is average-pooled to each layer's grid, and the
attention a position pays to the category word (summed over its tokens, averaged over heads) is `a`:

    token term = 1 - sum(a * mask) / sum(a)        the word's attention mass outside the object (TokenCompose L_token)
    pixel term = BCE(a, mask)                       the word's attention high on the object, low elsewhere (L_pixel)

averaged over the layers. The category word is found in the tokens (the ids of `categories`, by default
training/synthetic.py's category names, each one CLIP token), so the terms need no change to the data or the
latent cache.

diffusers' default attention (scaled_dot_product_attention) never forms the probabilities; the recorder puts its
classic `AttnProcessor` on the cross-attention layers (attn2), which does, and keeps them while it is on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from icv_deploy.tasks import TASKS

from .synthetic import CATEGORIES

SEGMENTATION = TASKS.index("segmentation")


@dataclass(frozen=True)
class AttentionGrounding:
    token_weight: float = 0.0  # of the token term; 0 turns it off
    pixel_weight: float = 0.0  # of the pixel term; 0 turns it off
    categories: tuple[str, ...] = CATEGORIES  # the category words to find in the instructions

    @property
    def active(self) -> bool:
        return max(self.token_weight, self.pixel_weight) > 0


class Grounding:
    """The grounding loss of a training run: its weights, the UNet's recorder and the category words' token ids.
    The loss function starts the recorder before the UNet's forward pass and asks for `terms` after it."""

    def __init__(self, weights: AttentionGrounding, unet, tokenizer):
        self.weights = weights
        self.recorder = CrossAttentionRecorder(unet)
        self.token_ids = category_token_ids(tokenizer, weights.categories)

    def terms(self, batch: dict, candidates: torch.Tensor):
        """grounding_terms over the maps recorded since `recorder.start()`."""
        return grounding_terms(self.recorder.stop(), batch, candidates, self.token_ids, self.weights)


class CrossAttentionRecorder:
    """Keeps each cross-attention layer's probabilities, (batch x heads, positions, tokens), while `recording`."""

    def __init__(self, unet):
        from diffusers.models.attention_processor import AttnProcessor

        self.recording, self.maps = False, []
        layers = [module for name, module in unet.named_modules() if name.endswith("attn2")]
        if not layers:
            raise ValueError("the UNet has no cross-attention layers (attn2) to ground the instruction in")
        for layer in layers:
            layer.set_processor(AttnProcessor())
            layer.get_attention_scores = self._recorded(layer.get_attention_scores, layer.heads)

    def _recorded(self, scores, heads: int):
        def get_attention_scores(query, key, attention_mask=None):
            probs = scores(query, key, attention_mask)
            if self.recording:
                self.maps.append((probs, heads))
            return probs
        return get_attention_scores

    def start(self) -> None:
        self.recording, self.maps = True, []

    def stop(self) -> list[tuple[torch.Tensor, int]]:
        maps, self.recording, self.maps = self.maps, False, []
        return maps


def category_token_ids(tokenizer, categories) -> torch.Tensor:
    """The token ids of the category words (without the start and end tokens)."""
    return torch.tensor(sorted({i for c in categories for i in tokenizer(c).input_ids[1:-1]}))


def grounding_terms(maps, batch: dict, candidates: torch.Tensor, token_ids: torch.Tensor,
                    grounding: AttentionGrounding) -> tuple[torch.Tensor | float, dict[str, float]]:
    """(weighted sum, values) of the token and pixel terms over the segmentation examples among `candidates` (batch
    indices) whose instruction holds a category word, averaged over the recorded layers `maps`."""
    chosen = candidates[batch["task_id"][candidates] == SEGMENTATION]
    word = torch.isin(batch["input_ids"][chosen], token_ids.to(batch["input_ids"].device))  # (n, tokens)
    chosen, word = chosen[word.any(1)], word[word.any(1)]
    if len(chosen) == 0 or not maps:
        return 0.0, {}
    masks = (batch["target_pixels"][chosen].float().mean(dim=1, keepdim=True) > 0).float()  # (n, 1, H, W)
    # An empty mask (a category the picture lacks: training/absent_negatives.py) has no inside: it takes the pixel
    # term only, which pulls the word's attention down everywhere.
    has_object = masks.flatten(1).any(1)
    height, width = masks.shape[-2:]
    token_terms, pixel_terms = [], []
    for probs, heads in maps:
        positions = probs.shape[1]
        per_head = probs.view(-1, heads, positions, probs.shape[2])[chosen].float().mean(dim=1)  # (n, positions, tokens)
        attention = (per_head * word[:, None, :]).sum(dim=-1)  # what each position pays to the category word
        rows = round(math.sqrt(positions * height / width))  # the layer's grid keeps the picture's aspect
        inside = F.adaptive_avg_pool2d(masks, (rows, positions // rows)).flatten(1)  # share of each cell on the object
        outside = 1 - (attention * inside).sum(1) / attention.sum(1).clamp(min=1e-6)
        token_terms.append(outside[has_object].mean() if has_object.any() else outside.new_zeros(()))
        pixel_terms.append(F.binary_cross_entropy(attention.clamp(1e-6, 1 - 1e-6), inside))
    token, pixel = torch.stack(token_terms).mean(), torch.stack(pixel_terms).mean()
    return (grounding.token_weight * token + grounding.pixel_weight * pixel,
            {"grounding_token": token.item(), "grounding_pixel": pixel.item()})
