"""The one-pass objective (issue 13): fine-tune a sampled InstructCV into one deterministic UNet pass.

As E2E-FT and Lotus fine-tune Stable Diffusion for perception, the UNet sees a fixed timestep and a fixed input in
its noisy-latent channels (zeros, or the image latent), and its output, read as the clean latent, is compared with
the target's latent directly, with no noise drawn at all: the targets (masks, outlines, depth, colour cards) are
deterministic, so sampling has nothing to add. The runtime's `icv_deploy.one_pass.OnePass` builds the inputs and
reads the output here as at inference, so training and inference cannot drift apart.

    loss = MSE(clean latent, target latent)                                  over the whole batch
         + decoded_weight * weighted L1 (decoded pixels, target pixels)     over `decoded_examples` of the batch
         + mask_weight * (BCE + Dice) (decoded mask, target mask)          over the segmentation ones among them
         + box_weight * (BCE + Dice) (decoded outlines, target outlines)   over the detection ones among them
         + color_weight * BCE (decoded colour's score, present or not)      over the classification ones among them
         + color_map_weight * (BCE + Dice) (the same score per pixel)       over the classification ones among them

The decoded term puts the task loss after the VAE decoder, where the answers are read: the frozen decoder is run
on the predicted latent and gradients flow back through it. It matters most for detection: the autoencoder does not
reproduce one-pixel outlines from the targets' own latents, but the UNet can learn latents that decode to them.
Outline pixels of detection targets weigh more, as in the autoencoder stage (`outline_weight_map`). For depth the
pixel L1 is the L1 in metres (grey is linear in depth: 10 m span the 2 units of [-1, 1]); for classification, of the
colour card.
No conditioning dropout: guidance is folded into the weights (one row per instruction at inference, no guidance
batch).

The mask term is the segmentation loss of E2E-FT's task-specific fine-tuning: the runtime reads a mask as the pixels
whose channel mean passes 127 (DESIGN.md 6), so an L1 fit of an uncertain answer ("which object is the cat?") paints
a dim average that the threshold erases. BCE and Dice on a soft mask (a steep sigmoid around that threshold) reward
committing to the pixels that are more likely in than out. The box term does the same for detection: the runtime
reads boxes from pure-blue strokes, so a soft "blueness" (blue minus the larger of red and green) is pushed over
the line on the target's outline pixels and under it elsewhere. The colour term does it for classification: the
runtime reads yes or no from which of the instruction's two colours the picture is nearer (decode_classification's
score in [-1, 1]), and an MSE fit of an uncertain answer paints a mixture of the two, often nearer neither (the
demo's answers, benchmarks/answer_anatomy.py); BCE on that score (of the picture's mean colour) rewards the nearer
of the two colours, the likelier answer. The decoded examples are taken from the tasks whose term is on first, so
every batch carries them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from icv_deploy.one_pass import OnePass
from icv_deploy.tasks import TASKS

SEGMENTATION, DETECTION, CLASSIFICATION = (TASKS.index(t) for t in ("segmentation", "detection", "classification"))


@dataclass(frozen=True)
class DecodedLoss:
    weight: float = 1.0  # of the decoded-pixel term against the latent MSE; 0 turns it off
    examples: int = 8  # decoded per micro-batch (the decoder's backward pass costs more than the small UNet's)
    outline_weight: float = 50.0  # extra weight of detection-outline pixels and their neighbours
    mask_weight: float = 0.0  # of BCE + Dice on the decoded masks of segmentation examples; 0 turns it off
    mask_sharpness: float = 10.0  # soft mask = sigmoid(sharpness * channel mean in [-1, 1]): 0.05 / 0.95 at -+0.3
    box_weight: float = 0.0  # of BCE + Dice on the decoded outline pixels of detection examples; 0 turns it off
    box_sharpness: float = 10.0  # soft outline = sigmoid(sharpness * (blueness - 0.4)), blueness = (B - max(R, G)) / 2
    color_weight: float = 0.0  # of BCE on the decoded answer colour of classification examples; 0 turns it off
    color_sharpness: float = 5.0  # p(present) = sigmoid(sharpness * score): 0.99 on the present colour exactly
    # Of BCE + Dice on which of the two colours each decoded pixel of classification examples is nearer (the colour
    # term per pixel, with color_sharpness); for the yes/no curriculum, whose "present" answers are grown masks
    # (training/yes_no_curriculum.py): a small one is outvoted by the absent colour in the mean the colour term reads.
    color_map_weight: float = 0.0
    # Sampled objective only: the decoded examples' timesteps are drawn from [min_timestep, 1000), where a few-step
    # sampler decides its answer (4 trailing steps start at 999), not where the noisy target gives it away; 0: as
    # every other example's. On the demo, 300 steps with 500 cost 0.02 mIoU more than without (results/unknown-words-*).
    min_timestep: int = 0

    @property
    def active(self) -> bool:
        """Whether any decoded term is on (the decoder runs, the batches carry target pictures and task ids)."""
        return self.examples > 0 and max(self.weight, self.mask_weight, self.box_weight, self.colors_weight) > 0

    @property
    def colors_weight(self) -> float:
        """The larger weight of the two classification terms, which read each instruction's two colours."""
        return max(self.color_weight, self.color_map_weight)


def outline_weight_map(pixels: torch.Tensor, outline_weight) -> torch.Tensor:
    """1 everywhere, 1 + outline_weight on and beside the outline strokes of `pixels` in [-1, 1] (outline_strokes);
    `outline_weight` a number, or a tensor that broadcasts to (N, 1, H, W), such as one weight per example."""
    near_outline = F.max_pool2d(outline_strokes(pixels), 3, stride=1, padding=1)  # the line and its sides
    return 1.0 + outline_weight * near_outline


def outline_strokes(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W): 1 on pure blue pixels that lie on a stroke, i.e. have a pixel of another colour around them.
    A filled blue area, such as the answer card of "Show blue if ...", is not an outline: weighting it would make one
    blue card outweigh the rest of the batch 50 to 1."""
    blue = pure_blue(pixels)[:, None].float()
    inside = -F.max_pool2d(-blue, 3, stride=1, padding=1)  # 1 where the whole 3 x 3 around is blue (edges: what is there)
    return blue - inside


def pure_blue(pixels: torch.Tensor) -> torch.Tensor:
    """Where `pixels` in [-1, 1] are within 25 of (0, 0, 255), the outline colour of detection targets."""
    return (pixels[:, 2] > 0.9) & (pixels[:, 0] < -0.8) & (pixels[:, 1] < -0.8)


def one_pass_loss(batch: dict, unet, vae, text_encoder, mode: OnePass, scheduler_config: dict,
                  decoded: DecodedLoss) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, its terms) of a cached-latent batch: image_latents, target_mean, input_ids (+ target_pixels, task_id,
    answer_colors)."""
    scaling = vae.config.scaling_factor
    image_latents = batch["image_latents"]  # the posterior mode, unscaled, as the pipeline feeds the UNet
    target = batch["target_mean"] * scaling  # deterministic targets: the posterior mean, no sample drawn
    noise_in = mode.noise_channels(image_latents, scaling)
    timesteps = torch.full((len(target),), mode.timestep, device=target.device, dtype=torch.long)
    text = text_encoder(batch["input_ids"])[0]
    output = unet(torch.cat([noise_in, image_latents], dim=1), timesteps, encoder_hidden_states=text,
                  return_dict=False)[0]
    clean = mode.clean_latents(output.float(), noise_in.float(), scheduler_config)
    latent = F.mse_loss(clean, target.float())
    decoded_loss, terms = decoded_terms(clean, batch, vae, decoded)
    return latent + decoded_loss, {"latent_mse": latent.item(), **terms}


def decoded_terms(clean: torch.Tensor, batch: dict, vae, decoded: DecodedLoss, candidates: torch.Tensor | None = None):
    """(sum of the weighted decoded terms, their values) for predicted clean latents `clean` (scaled): the pixel L1,
    mask, box and colour terms over `decoded.examples` of the `candidates` (batch indices; default all), the tasks
    with a term first. Shared by the one-pass objective and the sampled one (training/objectives.py), which passes the
    examples whose conditioning was not dropped."""
    if not decoded.active:
        return 0.0, {}
    candidates = torch.arange(len(clean)) if candidates is None else candidates
    if len(candidates) == 0:  # every example's conditioning dropped: nothing to decode (a mean would be NaN)
        return 0.0, {}
    chosen = candidates[decoded_examples(batch["task_id"][candidates], decoded)]
    pixels = batch["target_pixels"][chosen].float()
    painted = vae.decode((clean[chosen] / vae.config.scaling_factor).to(vae.dtype)).sample.float()
    loss, terms = 0.0, {}
    if decoded.weight > 0:
        # Outlines weigh more in detection targets only: a blue shape in another task's target (a yes/no answer
        # of the curriculum, training/yes_no_curriculum.py) has edges too, but no outline to keep.
        is_detection = (batch["task_id"][chosen] == DETECTION).float()[:, None, None, None]
        weights = outline_weight_map(pixels, decoded.outline_weight * is_detection)
        pixel_l1 = (weights * (painted - pixels).abs()).mean()
        terms["pixel_l1"] = pixel_l1.item()
        loss = decoded.weight * pixel_l1
    for task, weight, term, name in ((SEGMENTATION, decoded.mask_weight, mask_loss, "mask_bce_dice"),
                                     (DETECTION, decoded.box_weight, box_loss, "box_bce_dice"),
                                     (CLASSIFICATION, decoded.color_weight, color_loss, "color_bce"),
                                     (CLASSIFICATION, decoded.color_map_weight, color_map_loss, "color_map_bce_dice")):
        these = batch["task_id"][chosen] == task
        if weight > 0 and these.any():
            extra = (batch["answer_colors"][chosen][these].float(),) if task == CLASSIFICATION else ()
            value = term(painted[these], pixels[these], decoded, *extra)
            terms[name] = value.item()
            loss = loss + weight * value
    return loss, terms


def decoded_examples(task_ids: torch.Tensor, decoded: DecodedLoss) -> torch.Tensor:
    """Indices of the batch examples that go through the decoder: the first `examples`, those of the tasks whose
    term is on first (a stable order, so the rest keep the batch's random order)."""
    first = [task for task, weight in ((SEGMENTATION, decoded.mask_weight), (DETECTION, decoded.box_weight),
                                       (CLASSIFICATION, decoded.colors_weight)) if weight > 0]
    later = ~torch.isin(task_ids, torch.tensor(first, dtype=task_ids.dtype))
    return torch.argsort(later.to(torch.int8), stable=True)[:decoded.examples]


def mask_loss(painted: torch.Tensor, pixels: torch.Tensor, decoded: DecodedLoss) -> torch.Tensor:
    """BCE + soft Dice between the decoded mask and the target mask (channel mean above the runtime's threshold);
    an empty target asks for an empty mask."""
    return bce_dice(decoded.mask_sharpness * painted.mean(dim=1), (pixels.mean(dim=1) > 0).float())  # 127.5 of 255


def box_loss(painted: torch.Tensor, pixels: torch.Tensor, decoded: DecodedLoss) -> torch.Tensor:
    """BCE + soft Dice between the decoded outline pixels (soft blueness) and the target's pure-blue outlines."""
    return bce_dice(decoded.box_sharpness * (blueness(painted) - 0.4), pure_blue(pixels).float())


def color_loss(painted: torch.Tensor, pixels: torch.Tensor, decoded: DecodedLoss, colors: torch.Tensor) -> torch.Tensor:
    """BCE of the runtime's classification score of the decoded pictures (their mean colour; decode_classification
    takes the median, which a flat answer shares) against the truth, the named colour nearer the target picture.
    `colors`: (n, 2, 3), each example's colour if present and colour if absent, in [-1, 1]."""
    score = present_score(painted.mean(dim=(2, 3)), colors)
    truth = present_score(pixels.mean(dim=(2, 3)), colors) > 0
    return F.binary_cross_entropy_with_logits(decoded.color_sharpness * score, truth.float())


def color_map_loss(painted: torch.Tensor, pixels: torch.Tensor, decoded: DecodedLoss,
                   colors: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice, per pixel, of color_loss's score: is each decoded pixel nearer the colour for "present" than
    the one for "absent", against the same of the target's pixels. Dice keeps a small grown mask of the curriculum
    from being outvoted by the absent colour around it, as the mask term does for segmentation."""
    score = present_score(painted, colors)
    return bce_dice(decoded.color_sharpness * score, (present_score(pixels, colors) > 0).float())


def present_score(rgb: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
    """(distance to the "absent" colour - distance to the "present" one) / their distance, over dim 1 of `rgb`
    ((n, 3) colours or (n, 3, H, W) pictures): +1 on the present colour, -1 on the absent one."""
    present, absent = (c.reshape(*c.shape, *(1,) * (rgb.dim() - 2)) for c in (colors[:, 0], colors[:, 1]))
    gap = (present - absent).norm(dim=1).clamp(min=1e-6)
    return ((rgb - absent).norm(dim=1) - (rgb - present).norm(dim=1)) / gap


def outline_band_loss(painted: torch.Tensor, pixels: torch.Tensor, sharpness: float) -> torch.Tensor:
    """box_loss on the outlines of `pixels` and 2 pixels around them only: elsewhere, a blue object of an input picture
    may be as blue as an outline and must be reproduced as it is (the autoencoder sees every kind of picture)."""
    line = pure_blue(pixels).float()
    band = F.max_pool2d(line[:, None], 5, stride=1, padding=2)[:, 0] > 0
    logits = sharpness * (blueness(painted) - 0.4)
    return bce_dice(torch.where(band, logits, torch.full_like(logits, -30.0)), line)  # sigmoid(-30): 0, no gradient


def blueness(painted: torch.Tensor) -> torch.Tensor:
    """(B - max(R, G)) / 2 of pictures in [-1, 1]: 1 for pure blue (0, 0, 255), 0 for greys, negative for reds."""
    return (painted[:, 2] - torch.maximum(painted[:, 0], painted[:, 1])) / 2


def bce_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE over every pixel plus soft Dice per example, averaged (the Dice smoothing term keeps empty targets
    defined); Dice keeps thin or small targets from being outvoted by the background."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    soft, target = torch.sigmoid(logits).flatten(1), target.flatten(1)
    dice = 1 - (2 * (soft * target).sum(1) + 1) / (soft.sum(1) + target.sum(1) + 1)
    return bce + dice.mean()
