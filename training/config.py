"""Training configuration: a YAML file (or a shipped config by name) plus command-line overrides.

    cfg = load_config("tiny", overrides={"max_steps": 10}, output="runs/demo")

Shipped configs live in `training/configs/<name>.yaml`: `instructcv-fp` and `instructcv-rp` (the paper's recipe,
fixed or rephrased prompts) and `tiny` (CPU tests and the demo model). Every field below may appear in a YAML
file and be overridden on the command line (`--set key=value`, or the named options of `icv-train`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from icv_deploy.errors import IcvError

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class TrainConfig:
    # What to start from and what to train on.
    base_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # folder or hub id; "random:tiny" = random tiny model
    data: str | None = None  # an `icv-data build` folder (datasets.save_to_disk)
    output: str = "icv-train-output"  # checkpoints/, logs/, validation/ and the final model/ go here
    max_train_samples: int | None = None  # use only the first N examples (quick runs)
    # A model trained from scratch (base_model "random"): the UNet and text encoder configs to build it from
    # ({"unet": {...}, "text_encoder": {...}}, random weights drawn from `seed`) and a trained VAE folder
    # (`icv-train-vae`) that replaces the base model's VAE. `base_vae` beside a trained base model replaces its VAE too.
    architecture: dict | None = None
    base_vae: str | None = None

    # Pictures: resize the short side to a random size in [resize_min, resize_max], crop `resolution`, maybe flip.
    resolution: int = 256
    resize_min: int = 256
    resize_max: int = 288
    random_flip: bool = True

    # Optimisation (paper: AdamW, lr 1e-4 constant without warm-up, total batch 128, 20 epochs).
    train_batch_size: int = 16  # per process
    total_batch_size: int | None = None  # per_process * processes * accumulation; None = no accumulation
    num_epochs: int = 20
    max_steps: int | None = None  # optimizer steps; overrides num_epochs when set
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    conditioning_dropout_prob: float = 0.05  # text only, image only and both: each this share of the examples
    # Which timesteps the instruct_pix2pix objective draws (diffusers' SDXL training script's --timestep_bias_*):
    # "none" uniform; "later" / "earlier" the last / first `timestep_bias_portion` of them `timestep_bias_multiplier`
    # times as often. "later" spends more of training where few-step sampling decides what to paint (t near 999).
    timestep_bias_strategy: str = "none"
    timestep_bias_multiplier: float = 1.0
    timestep_bias_portion: float = 0.25
    use_ema: bool = True
    ema_decay: float = 0.9999
    train_text_encoder: bool = False  # with use_ema, the text encoder gets its own EMA copy
    # The text encoder's own learning rate when it is trained (None: learning_rate); the schedule scales both alike.
    text_encoder_learning_rate: float | None = None
    gradient_checkpointing: bool = False
    mixed_precision: str | None = None  # "no", "fp16", "bf16"; None = what `accelerate launch` says
    seed: int = 42
    dataloader_num_workers: int = 0
    # Encode every example once with the frozen VAE (input latent, target posterior; plain and flipped) instead
    # of at every step. Exact, but only flips survive as augmentation: needs resize_min == resize_max == resolution.
    cache_latents: bool = False

    # The objective: "instruct_pix2pix" (noise a target latent, predict eps or v, sample at inference) or
    # "one_pass" (training/one_pass_loss.py: a fixed timestep and input, the clean latent compared with the target,
    # plus a loss on the decoded pixels; needs cache_latents). `one_pass` is the mode written to the model's
    # icv_config.json (icv_deploy/one_pass.py: timestep, noise_input, prediction_type); `decoded_loss` the fields
    # of one_pass_loss.DecodedLoss (weight, examples, outline_weight, mask_weight, box_weight, ...). With objective
    # instruct_pix2pix a decoded_loss section adds the same terms on the clean latent each prediction implies at
    # its timestep (needs cache_latents).
    objective: str = "instruct_pix2pix"
    one_pass: dict = field(default_factory=dict)
    decoded_loss: dict = field(default_factory=dict)
    # A loss on the cross-attention maps that ties the category word to its object (training/attention_grounding.py:
    # token_weight, pixel_weight); instruct_pix2pix on cached latents, whose target masks it reads.
    attention_grounding: dict = field(default_factory=dict)
    # The share of segmentation examples asked instead about a category their picture lacks, with an empty mask as
    # the target (training/absent_negatives.py); cached latents only.
    segmentation_negatives: float = 0.0
    # A per-cell category loss on the UNet's features through a training-only head (training/scene_recognition.py:
    # scenes, weight, blocks, grid; word_weight, word_width for its word term, the named category's cells scored
    # through the text encoder's output at the word); cached latents of `icv-data synth` scenes only.
    scene_recognition: dict = field(default_factory=dict)
    # A colour head on the text encoder's output at every palette colour word, so that it tells the classification
    # colours apart (training/color_words.py: weight); needs train_text_encoder. Measured, not in the demo recipe.
    color_words: dict = field(default_factory=dict)
    # Tokens no training instruction holds, inserted into a share of the instructions so that a user's unknown words
    # do not derail the answer (training/unknown_tokens.py: share, max_tokens); cached latents only.
    unknown_tokens: dict = field(default_factory=dict)
    # A share of the instructions drawn instead from a phrasing grammar, category and colours kept, so that the text
    # encoder learns more than the pool's phrasings (training/phrasing_grammar.py: share, grammar); cached latents only.
    rephrase: dict = field(default_factory=dict)

    # Bookkeeping.
    checkpoint_every: int = 500  # optimizer steps between checkpoints (0 = none)
    checkpoints_keep: int = 3
    validation_every: int = 500  # optimizer steps between validation grids (0 = only at the end)
    validation_per_task: int = 1  # fixed examples of each task in the grid
    validation_sampler_steps: int = 20
    log_every: int = 1
    report_to: str = "tensorboard"  # an accelerate tracker name, or "none"
    save_ema_weights: bool = True  # the final model holds the EMA weights (when use_ema)

    # Runtime defaults written to the final model's icv_config.json (its resolution: `resolution` unless set here).
    runtime: dict = field(default_factory=lambda: {
        "sampler": "euler_a", "steps": 100,
        "guidance_scale": 7.5, "image_guidance_scale": 1.5, "box_color": [0, 0, 255],
    })

    def check(self) -> "TrainConfig":
        if self.resize_min < self.resolution or self.resize_max < self.resize_min:
            raise IcvError(f"need resolution <= resize_min <= resize_max, got {self.resolution}, "
                           f"{self.resize_min}, {self.resize_max}")
        if self.text_encoder_learning_rate is not None and self.text_encoder_learning_rate <= 0:
            raise IcvError(f"text_encoder_learning_rate must be positive, got {self.text_encoder_learning_rate}")
        if self.train_batch_size < 1:
            raise IcvError(f"train_batch_size must be at least 1, got {self.train_batch_size}")
        if not 0 <= self.conditioning_dropout_prob <= 1 / 3:
            raise IcvError(f"conditioning_dropout_prob must lie in [0, 1/3], got {self.conditioning_dropout_prob}")
        if self.cache_latents and not self.resize_min == self.resize_max == self.resolution:
            raise IcvError("cache_latents needs resize_min == resize_max == resolution (cached latents cannot be "
                           "resized or cropped; flips are cached)")
        if self.base_model == "random" and not (self.architecture and {"unet", "text_encoder"} <= set(self.architecture)):
            raise IcvError("base_model random needs architecture: {unet: {...}, text_encoder: {...}}")
        if self.mixed_precision not in (None, "no", "fp16", "bf16"):
            raise IcvError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.timestep_bias_strategy not in ("none", "later", "earlier"):
            raise IcvError(f"timestep_bias_strategy must be none, later or earlier, got {self.timestep_bias_strategy!r}")
        if not self.timestep_bias_multiplier > 0 or not 0 < self.timestep_bias_portion <= 1:
            raise IcvError(f"timestep_bias_multiplier must be > 0 and timestep_bias_portion in (0, 1], got "
                           f"{self.timestep_bias_multiplier} and {self.timestep_bias_portion}")
        if self.objective not in ("instruct_pix2pix", "one_pass"):
            raise IcvError(f"objective must be instruct_pix2pix or one_pass, got {self.objective!r}")
        if self.objective == "one_pass" and not self.cache_latents:
            raise IcvError("objective one_pass trains on cached latents: set cache_latents: true")
        if self.decoded_loss and not self.cache_latents:
            raise IcvError("decoded_loss trains on cached latents (they carry the target pictures and tasks): set "
                           "cache_latents: true")
        if self.attention_grounding and not (self.cache_latents and self.objective == "instruct_pix2pix"):
            raise IcvError("attention_grounding needs objective instruct_pix2pix and cache_latents: true (the cached "
                           "examples carry the target masks)")
        if not 0 <= self.segmentation_negatives <= 1:
            raise IcvError(f"segmentation_negatives must lie in [0, 1], got {self.segmentation_negatives}")
        if self.scene_recognition and not (self.cache_latents and self.objective == "instruct_pix2pix"):
            raise IcvError("scene_recognition needs objective instruct_pix2pix and cache_latents: true (its labels "
                           "are the cached pictures' scenes, which resizing or cropping would move)")
        if self.color_words and not (self.train_text_encoder and self.objective == "instruct_pix2pix"):
            raise IcvError("color_words needs objective instruct_pix2pix and train_text_encoder: true (it trains the "
                           "text encoder's outputs at the colour words)")
        if self.segmentation_negatives and not self.cache_latents:
            raise IcvError("segmentation_negatives trains on cached latents: set cache_latents: true")
        if self.unknown_tokens:
            from .unknown_tokens import UnknownTokens

            reject_unknown_keys("unknown_tokens", self.unknown_tokens, UnknownTokens.__dataclass_fields__)
            UnknownTokens(**self.unknown_tokens).check()
            if not self.cache_latents:
                raise IcvError("unknown_tokens trains on cached latents: set cache_latents: true")
        if self.rephrase:
            from .phrasing_grammar import Rephrase

            reject_unknown_keys("rephrase", self.rephrase, Rephrase.__dataclass_fields__)
            Rephrase(**self.rephrase).check()
            if not self.cache_latents:
                raise IcvError("rephrase trains on cached latents: set cache_latents: true")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def read_config_file(name_or_path: str | Path, seen: tuple[Path, ...] = ()) -> dict:
    """The mapping in a YAML file, or in the shipped config of that name. A file with `extends: OTHER` (a shipped
    name or a path) holds only what differs from OTHER: its keys replace OTHER's, sections (mappings) key by key."""
    path = config_path(name_or_path)
    if path.resolve() in seen:
        raise IcvError(f"config {path}: extends itself ({' -> '.join(p.stem for p in (*seen, path.resolve()))})")
    values = read_yaml_mapping(path)
    parent = values.pop("extends", None)
    if parent is None:
        return values
    beside = path.parent / str(parent)  # a path is read relative to the file that names it
    return merge_sections(read_config_file(beside if beside.is_file() else parent, (*seen, path.resolve())), values)


def merge_sections(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied: mappings merged key by key (recursively), anything else replaced."""
    merged = dict(base)
    for key, value in changes.items():
        both_mappings = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge_sections(merged[key], value) if both_mappings else value
    return merged


def config_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise IcvError(f"config {name_or_path}: no such file and no shipped config of that name "
                           f"(shipped: {', '.join(shipped_configs())})")
    return path


def read_yaml_mapping(path: Path) -> dict:
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise IcvError(f"config {path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(values, dict):
        raise IcvError(f"config {path}: expected a mapping of settings, got {type(values).__name__}")
    return values


def parse_set(items: list[str] | tuple[str, ...]) -> dict:
    """`["key=value", ...]` with YAML values (numbers, booleans, null, lists) into a dict."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise IcvError(f"--set {item}: expected key=value")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def reject_unknown_keys(what: str, given, known) -> None:
    """One line naming the keys of `given` that `known` lacks (a config, a section of one)."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise IcvError(f"unknown {what} key(s) {', '.join(unknown)} (known: {', '.join(known)})")


def load_config(name_or_path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults, then the config file, then the overrides (keys with value None are ignored)."""
    values = read_config_file(name_or_path) if name_or_path else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    reject_unknown_keys("config", values, FIELDS)
    for key, value in values.items():  # YAML reads "1e-4" as a string: numbers where the default is a float
        if isinstance(FIELDS[key].default, float) and isinstance(value, (str, int)) and not isinstance(value, bool):
            try:
                values[key] = float(value)
            except ValueError:
                raise IcvError(f"config key {key}: expected a number, got {value!r}") from None
    if "runtime" in values:
        values["runtime"] = {**TrainConfig().runtime, **(values["runtime"] or {})}
    return TrainConfig(**values).check()
