"""Instruction tuning: fine-tune Stable Diffusion into an 8-channel InstructCV model with Hugging Face accelerate.

    icv-train --config tiny --data data/demo --output runs/tiny
    accelerate launch --multi_gpu --num_processes 8 -m icv_deploy.training.train --config instructcv-rp --data data/rp

The InstructPix2Pix objective (training/objectives.py): the UNet sees the noisy target latent next to the input
image's latent and predicts the noise (or v), with conditioning dropout for classifier-free guidance.
`objective: one_pass` trains a one-pass model instead (training/one_pass_loss.py). This module is the loop: data,
models, optimizer, checkpoints, validation grids and the saved model.
Output folder: checkpoints/, logs/ (tensorboard, losses.jsonl), validation/ (PNG grids) and model/ (the final
diffusers `StableDiffusionInstructPix2PixPipeline` folder with `icv_config.json`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch

from icv_deploy.cli_common import debug_option, one_line_errors
from icv_deploy.errors import IcvError

from .attention_grounding import AttentionGrounding, Grounding
from .color_words import ColorWordHead, ColorWords, color_word_tokens
from .config import TrainConfig, load_config, parse_set, reject_unknown_keys, shipped_configs
from .objectives import instruct_pix2pix_loss, objective_settings, timestep_weights
from .one_pass_loss import one_pass_loss
from .prompts import category_word_tokens
from .scene_recognition import SceneLabels, SceneRecognition, SceneRecognitionHead

logger = logging.getLogger("icv_deploy.training")


@dataclass
class TrainResult:
    step: int
    model_dir: Path | None
    losses: dict[int, float] = field(default_factory=dict)  # optimizer step -> mean loss over processes


def batch_generator(seed: int, process: int, epoch: int, batch: int) -> torch.Generator:
    """Noise, timesteps and dropout of one micro-batch: a function of where it is, not of what ran before."""
    state = np.random.SeedSequence([seed, process, epoch, batch]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def train(cfg: TrainConfig, resume: str | None = None) -> TrainResult:
    # `accelerate launch --multi_gpu` on a machine without CUDA: run the processes on the CPU over gloo.
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    from accelerate import Accelerator, PartialState
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from .model_init import load_training_models
    from .train_checkpoints import find_resume_checkpoint, load_checkpoint, save_checkpoint
    from .train_data import EpochShuffleSampler, InstructionExamples, open_dataset, tokenize, validation_indices
    from .train_validation import build_pipeline, one_pass_predictor, predict_grid, sampled_predictor, save_grid

    if not cfg.data:
        raise IcvError("no training data: pass --data DIR (an `icv-data build` output folder)")
    output = Path(cfg.output)
    rows = open_dataset(cfg.data, cfg.max_train_samples)

    from accelerate.utils import parse_flag_from_env

    # Accelerator reads ACCELERATE_USE_CPU itself; PartialState, made first here, must be told.
    processes = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).num_processes
    per_step = cfg.train_batch_size * processes
    total = cfg.total_batch_size or per_step
    if total % per_step:
        raise IcvError(f"total_batch_size {total} is not a multiple of train_batch_size x processes = {per_step}")
    accelerator = Accelerator(
        gradient_accumulation_steps=total // per_step,
        mixed_precision=cfg.mixed_precision,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
    )
    logger.info("process %d of %d on %s (%s)", accelerator.process_index, accelerator.num_processes,
                accelerator.device, accelerator.distributed_type)
    set_seed(cfg.seed)

    with accelerator.main_process_first():  # the main process makes a random base model first, if asked
        models = load_training_models(cfg.base_model, random_dir=output / "random-base", seed=cfg.seed,
                                      architecture=cfg.architecture, base_vae=cfg.base_vae)
    unet, vae, text_encoder, tokenizer = models.unet, models.vae, models.text_encoder, models.tokenizer
    scheduler_config = dict(models.noise_scheduler.config)
    one_pass, decoded = objective_settings(cfg, scheduler_config)
    weights = timestep_weights(cfg, models.noise_scheduler.config.num_train_timesteps)
    if models.widened:
        logger.info("widened the base UNet's conv_in from 4 to 8 input channels")
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    vae.requires_grad_(False).to(accelerator.device)
    cache = None
    encode_autocast = None if weight_dtype == torch.float32 else weight_dtype
    if cfg.cache_latents:  # in fp32, before the VAE is cast; the main process builds it, the others read it
        from .latent_cache import load_or_build_cache

        with accelerator.main_process_first():
            cache = load_or_build_cache(output / "latent-cache", vae, rows, cfg.resolution, cfg.random_flip,
                                        encode_autocast, progress=accelerator.is_local_main_process)
    negatives = None
    if cfg.segmentation_negatives:  # their empty-mask target encoded as the cache's targets were
        from .absent_negatives import AbsentCategoryNegatives, empty_mask_posterior

        empty = empty_mask_posterior(vae, cfg.resolution, cfg.random_flip, encode_autocast)
        negatives = AbsentCategoryNegatives(cfg.segmentation_negatives, rows, tokenizer, *empty)
    text_encoder.requires_grad_(cfg.train_text_encoder).to(accelerator.device)
    if weight_dtype != torch.float32:  # frozen modules run in the mixed-precision dtype, trained ones stay fp32
        vae.to(dtype=weight_dtype)
        if not cfg.train_text_encoder:
            text_encoder.to(dtype=weight_dtype)
    unet.set_attn_processor(AttnProcessor2_0())
    grounding = None
    if cfg.attention_grounding:
        reject_unknown_keys("attention_grounding", cfg.attention_grounding, AttentionGrounding.__dataclass_fields__)
        grounding_weights = AttentionGrounding(**cfg.attention_grounding)
        if grounding_weights.active:  # it swaps the cross-attention layers to an attention that forms probabilities
            grounding = Grounding(grounding_weights, unet, tokenizer)
    recognition = scene_labels = None
    if cfg.scene_recognition:
        reject_unknown_keys("scene_recognition", cfg.scene_recognition, SceneRecognition.__dataclass_fields__)
        recognition_settings = SceneRecognition(**cfg.scene_recognition)
        if recognition_settings.active:  # a training-only head on the UNet's features, fed the scenes' category maps
            scene_labels = SceneLabels(recognition_settings, rows, cfg.data)
            words = (list(category_word_tokens(tokenizer, scene_labels.categories,
                                               "scene_recognition.word_weight").values())
                     if recognition_settings.word_weight > 0 else None)
            recognition = SceneRecognitionHead(recognition_settings, unet, len(scene_labels.categories), words,
                                               text_encoder.config.hidden_size)
            recognition.to(accelerator.device)
    color_words = None
    if cfg.color_words:
        reject_unknown_keys("color_words", cfg.color_words, ColorWords.__dataclass_fields__)
        color_settings = ColorWords(**cfg.color_words)
        if color_settings.weight > 0:  # a training-only head on the text encoder's outputs at the colour words
            color_words = ColorWordHead(color_word_tokens(tokenizer), text_encoder.config.hidden_size,
                                        color_settings.weight).to(accelerator.device)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    unet.train()

    ema = ema_text = None
    if cfg.use_ema:
        ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, model_cls=UNet2DConditionModel, model_config=unet.config)
        ema.to(accelerator.device)  # saved and restored by train_checkpoints as safetensors, not pickles
        if cfg.train_text_encoder:  # the UNet's averaged weights are paired with the text encoder's averaged ones
            from transformers import CLIPTextModel

            ema_text = EMAModel(text_encoder.parameters(), decay=cfg.ema_decay, model_cls=CLIPTextModel,
                                model_config=text_encoder.config)
            ema_text.to(accelerator.device)

    heads = [head for head in (recognition, color_words) if head is not None]
    groups = [{"params": list(unet.parameters()) + [p for head in heads for p in head.parameters()]}]
    if cfg.train_text_encoder:
        groups.append({"params": list(text_encoder.parameters()),
                       "lr": cfg.text_encoder_learning_rate or cfg.learning_rate})
    params = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    if cache is not None:
        from .latent_cache import CachedLatentExamples
        from .phrasing_grammar import Rephrase
        from .unknown_tokens import UnknownTokens

        insertion = UnknownTokens(**cfg.unknown_tokens) if cfg.unknown_tokens else None
        rephrase = Rephrase(**cfg.rephrase) if cfg.rephrase else None
        wants_pixels = (decoded is not None and decoded.active) or grounding is not None
        pixels = cfg.resolution if wants_pixels else None  # for the decoded and grounding terms
        examples = CachedLatentExamples(rows, cache, tokenizer, cfg.random_flip, cfg.seed, target_pixels=pixels,
                                        negatives=negatives, scene_labels=scene_labels,
                                        answer_colors=decoded is not None and decoded.colors_weight > 0,
                                        unknown_tokens=insertion, rephrase=rephrase)
    else:
        examples = InstructionExamples(rows, tokenizer, cfg.resolution, cfg.resize_min, cfg.resize_max,
                                       cfg.random_flip, cfg.seed)
    sampler = EpochShuffleSampler(len(examples), cfg.seed)
    loader = torch.utils.data.DataLoader(examples, batch_size=cfg.train_batch_size, sampler=sampler,
                                         num_workers=cfg.dataloader_num_workers)

    accumulation = accelerator.gradient_accumulation_steps
    updates_per_epoch = math.ceil(math.ceil(len(loader) / processes) / accumulation)  # checked after prepare
    max_steps = cfg.max_steps or cfg.num_epochs * updates_per_epoch
    num_epochs = math.ceil(max_steps / updates_per_epoch)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps * processes,
                                 num_training_steps=max_steps * processes)
    trained = [unet, text_encoder] if cfg.train_text_encoder else [unet]
    *trained, optimizer, loader, lr_scheduler = accelerator.prepare(*trained, optimizer, loader, lr_scheduler)
    unet = trained[0]
    text_encoder = trained[1] if cfg.train_text_encoder else text_encoder
    if recognition is not None:  # after the models, so that a checkpoint keeps their order; the head is saved with them
        recognition = accelerator.prepare(recognition)
        trained.append(recognition)
    if color_words is not None:  # likewise, after the recognition head
        color_words = accelerator.prepare(color_words)
        trained.append(color_words)
    updates_per_epoch = math.ceil(len(loader) / accumulation)  # len: this process's share of the batches

    def null_text_embedding():
        ids = tokenize(tokenizer, [""]).to(accelerator.device)
        return text_encoder(ids)[0]

    with torch.no_grad():
        null_text = null_text_embedding()

    step = 0
    losses_file = output / "logs" / "losses.jsonl"
    checkpoint = find_resume_checkpoint(output / "checkpoints", resume)
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint, averages=(ema, ema_text), log_file=losses_file)
        step = state["step"]
        if state.get("updates_per_epoch", updates_per_epoch) != updates_per_epoch:
            logger.warning("the data or batch size changed since %s: the data order will differ", checkpoint)
        accelerator.print(f"resumed from {checkpoint} at step {step}")
    elif resume:
        accelerator.print("no checkpoint to resume from yet: starting from step 0")

    if accelerator.is_main_process and cfg.report_to != "none":
        scalars = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in cfg.to_dict().items()}
        accelerator.init_trackers("icv-train", config=scalars)
    pictures = validation_indices(rows, cfg.validation_per_task)

    def validate():
        if not accelerator.is_main_process:
            return
        model, text_model = accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder)
        averaged = [(a, m) for a, m in ((ema, model), (ema_text, text_model)) if a is not None]
        for a, m in averaged:
            a.store(m.parameters())
            a.copy_to(m.parameters())
        model.eval()
        text_model.eval()
        if one_pass is None:
            pipe = build_pipeline(model, vae, text_model, tokenizer, models.folder)
            guidance = {k: cfg.runtime[k] for k in ("guidance_scale", "image_guidance_scale") if k in cfg.runtime}
            predict = sampled_predictor(pipe, cfg.validation_sampler_steps, cfg.seed, accelerator.device, **guidance)
        else:
            predict = one_pass_predictor(one_pass, model, vae, text_model, tokenizer, scheduler_config)
        grid = predict_grid(predict, rows, pictures, cfg.resolution)
        save_grid(grid, output / "validation", step, accelerator.trackers)
        model.train()
        text_model.train(cfg.train_text_encoder)
        for a, m in averaged:
            a.restore(m.parameters())

    state = {"updates_per_epoch": updates_per_epoch, "num_processes": processes, "total_batch_size": total}
    start_step, result = step, TrainResult(step=step, model_dir=None)
    progress = tqdm(total=max_steps, initial=step, desc="training", disable=not accelerator.is_local_main_process)
    first_epoch, skip_batches = divmod(step, updates_per_epoch)
    skip_batches *= accumulation
    running, running_terms, started = [], [], time.time()
    for epoch in range(first_epoch, num_epochs):
        if step >= max_steps:
            break
        examples.set_epoch(epoch)
        sampler.set_epoch(epoch)
        epoch_loader = loader
        if epoch == first_epoch and skip_batches:
            epoch_loader = accelerator.skip_first_batches(loader, skip_batches)
        epoch_loader.set_epoch(epoch)  # the sampler draws its permutation from (seed, epoch)
        for position, batch in enumerate(epoch_loader, start=skip_batches if epoch == first_epoch else 0):
            gen = batch_generator(cfg.seed, accelerator.process_index, epoch, position)
            with accelerator.accumulate(*trained):
                if one_pass is None:
                    null = null_text_embedding() if cfg.train_text_encoder else null_text
                    loss, terms = instruct_pix2pix_loss(batch, unet, vae, text_encoder, models.noise_scheduler, null,
                                                        cfg.conditioning_dropout_prob, gen, weight_dtype, decoded, weights,
                                                        grounding, recognition, color_words)
                else:
                    loss, terms = one_pass_loss(batch, unet, vae, text_encoder, one_pass, scheduler_config, decoded)
                running_terms.append(terms)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            running.append(accelerator.gather(loss.detach().reshape(1)).mean().item())
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(accelerator.unwrap_model(unet).parameters())
            if ema_text is not None:
                ema_text.step(accelerator.unwrap_model(text_encoder).parameters())
            step += 1
            mean_loss, running = float(np.mean(running)), []
            # the loss's terms (the one-pass latent MSE, the decoded terms), logged beside it; a term is missing from
            # the batches without its task, so each is averaged over the batches that had it
            names = sorted({k for t in running_terms for k in t})
            mean_terms = {k: round(float(np.mean([t[k] for t in running_terms if k in t])), 6) for k in names}
            running_terms = []
            result.losses[step] = mean_loss
            lr = lr_scheduler.get_last_lr()[0]
            progress.update(1)
            progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
            if step % cfg.log_every == 0:
                accelerator.log({"train/loss": mean_loss, "train/lr": lr}, step=step)
                if accelerator.is_main_process:
                    losses_file.parent.mkdir(parents=True, exist_ok=True)
                    with open(losses_file, "a") as fh:
                        fh.write(json.dumps({"step": step, "epoch": epoch, "loss": mean_loss, "lr": lr, **mean_terms,
                                             "processes": processes, "time": round(time.time() - started, 3)}) + "\n")
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save_checkpoint(accelerator, output / "checkpoints", step, state, cfg.checkpoints_keep, (ema, ema_text))
            if cfg.validation_every and step % cfg.validation_every == 0:
                validate()  # main process only; the others wait here
                accelerator.wait_for_everyone()
            if step >= max_steps:
                break
    progress.close()
    if step > start_step:  # this run trained: a last checkpoint and a last grid
        if cfg.checkpoint_every and step % cfg.checkpoint_every:
            save_checkpoint(accelerator, output / "checkpoints", step, state, cfg.checkpoints_keep, (ema, ema_text))
        if not cfg.validation_every or step % cfg.validation_every:
            validate()
    result.step = step
    result.model_dir = save_final_model(accelerator, cfg, models, unet, text_encoder, ema, step, ema_text, one_pass)
    accelerator.end_training()
    return result


def save_final_model(accelerator, cfg: TrainConfig, models, unet, text_encoder, ema, step: int, ema_text=None,
                     one_pass=None) -> Path:
    """The diffusers InstructPix2Pix folder `<output>/model` (EMA weights by default), written atomically; a
    one-pass model's icv_config.json records its mode (icv_deploy/one_pass.py)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    from icv_deploy.atomic import atomic_dir, write_json

    from .train_data import painted_settings
    from .train_validation import build_pipeline

    final = Path(cfg.output) / "model"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(unet).float()
        if ema is not None and cfg.save_ema_weights:
            ema.copy_to(unet.parameters())
        # The frozen modules come from the base model again (the autoencoder from where it was read: `base_vae` may
        # have swapped it): the mixed-precision copies lost bits.
        vae = AutoencoderKL.from_pretrained(models.vae_folder, use_safetensors=True)
        if cfg.train_text_encoder:
            text_encoder = accelerator.unwrap_model(text_encoder).float()
            if ema_text is not None and cfg.save_ema_weights:
                ema_text.copy_to(text_encoder.parameters())
        else:
            text_encoder = CLIPTextModel.from_pretrained(models.folder, subfolder="text_encoder", use_safetensors=True)
        pipe = build_pipeline(unet.cpu(), vae, text_encoder, models.tokenizer, models.folder)
        with atomic_dir(final) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            runtime, mode = cfg.runtime, {}
            if one_pass is not None:  # its mode instead of the sampling settings (pipeline.DEFAULTS) it would not use
                from icv_deploy.pipeline import DEFAULTS

                runtime = {k: v for k, v in runtime.items() if k == "resolution" or k not in DEFAULTS}
                mode = one_pass.to_json()
            write_json(tmp / "icv_config.json", {"resolution": cfg.resolution, **runtime, **mode,
                                                 **painted_settings(cfg.data), "trained_steps": step,
                                                 "base_model": cfg.base_model,
                                                 "ema_weights": bool(ema is not None and cfg.save_ema_weights)})
        accelerator.print(f"saved the model to {final}")
    accelerator.wait_for_everyone()
    return final


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--config", "config_name", help=f"YAML file or shipped config ({', '.join(shipped_configs())}); a file "
              "with `extends: OTHER` holds only what differs from OTHER.")
@click.option("--base-model", help="Start from this diffusers folder or hub id (4-channel SD or 8-channel InstructCV), or random:tiny.")
@click.option("--data", help="Training data: an `icv-data build` output folder.")
@click.option("--output", help="Output folder: checkpoints/, logs/, validation/ and the final model/.")
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps (overrides num_epochs).")
@click.option("--max-train-samples", type=int, help="Train on the first N examples only.")
@click.option("--resume", help="'latest' (newest checkpoint in OUTPUT/checkpoints, if any) or a checkpoint folder.")
@click.option("--seed", type=int, help="Seed of the data order, augmentation, noise and dropout.")
@click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), help="Overrides the config and accelerate.")
@click.option("--learning-rate", type=float, help="AdamW learning rate (paper: 1e-4, constant).")
@click.option("--train-batch-size", type=int, help="Examples per process per micro-batch.")
@click.option("--total-batch-size", type=int, help="Examples per optimizer step (gradient accumulation makes up the rest).")
@click.option("--checkpoint-every", type=int, help="Optimizer steps between checkpoints.")
@click.option("--validation-every", type=int, help="Optimizer steps between validation grids.")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None)
@click.option("--train-text-encoder/--freeze-text-encoder", default=None)
@click.option("--set", "set_items", multiple=True, metavar="KEY=VALUE", help="Override any config key (YAML value).")
@debug_option
@one_line_errors
def main(config_name, resume, set_items, **options):
    """Fine-tune Stable Diffusion into an 8-channel InstructCV model.

    Settings come from --config (a YAML file or a shipped config), then from the options below.
    Run it under `accelerate launch` for several GPUs or machines (tested with DDP):

    \b
      icv-train --config tiny --data data/demo --output runs/tiny
      accelerate launch --multi_gpu --num_processes 8 -m icv_deploy.training.train \\
          --config instructcv-rp --data data/rp --output runs/rp
      icv-train --config instructcv-rp --data data/rp --output runs/rp --resume latest

    \b
    OUTPUT/checkpoints/checkpoint-<step>   accelerate state (model, optimizer, EMA, lr schedule)
    OUTPUT/logs/                           tensorboard events and losses.jsonl
    OUTPUT/validation/step-<step>.png      rows of input | target | prediction
    OUTPUT/model/                          the final diffusers InstructPix2Pix folder + icv_config.json
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("accelerate", "diffusers", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    given = {key: value for key, value in options.items() if value is not None}  # unset options keep --set's
    cfg = load_config(config_name, {**parse_set(set_items), **given})
    result = train(cfg, resume=resume)
    from accelerate import PartialState

    if PartialState().is_main_process:
        click.echo(f"trained {result.step} steps; model: {result.model_dir}")


if __name__ == "__main__":
    main()
