"""One-pass training (objective one_pass, training/one_pass_loss.py): what it learns, what it saves, and that the
runtime reads the saved model exactly as training used it.

The tiny random model at 16 px on the tiny dataset of test_train_run (8 examples, two per task).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from icv_deploy.errors import IcvError

from test_train_run import make_dataset, read_losses, run_in_process

pytestmark = pytest.mark.slow

ONE_PASS = dict(objective="one_pass", one_pass={"timestep": 999, "noise_input": "zeros", "prediction_type": "sample"},
                cache_latents=True, resize_max=16, random_flip=False, conditioning_dropout_prob=0.0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("one-pass-data") / "data")


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """60 steps of one-pass training with the decoded-pixel, mask and box losses on both examples of each batch of 2."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    output = tmp_path_factory.mktemp("one-pass") / "run"
    try:
        result = run_in_process(data=str(data_dir), output=str(output), max_steps=60, checkpoint_every=0,
                                validation_every=0, learning_rate=1e-3, ema_decay=0.5,
                                decoded_loss={"weight": 1.0, "examples": 2, "outline_weight": 10.0,
                                              "mask_weight": 1.0, "box_weight": 1.0}, **ONE_PASS)
    finally:
        torch.set_num_threads(before)
    return result, output


def test_one_pass_training_learns_and_logs_both_terms(trained):
    result, output = trained
    logged = read_losses(output)
    assert {"latent_mse", "pixel_l1"} <= set(logged[0])
    # on the batches that hold a segmentation / detection example
    assert any("mask_bce_dice" in row for row in logged) and any("box_bce_dice" in row for row in logged)
    # Per-epoch means (8 examples, batches of 2: 4 steps an epoch): single batches differ too much by task.
    latent = np.array([r["latent_mse"] for r in logged]).reshape(-1, 4).mean(axis=1)
    pixels = np.array([r["pixel_l1"] for r in logged]).reshape(-1, 4).mean(axis=1)
    assert latent[-1] < 0.5 * latent[0], latent
    # The tiny random decoder can paint little of the targets, but what it can, the UNet learns to ask of it.
    assert pixels[-1] < pixels[0], pixels
    grid = sorted((output / "validation").glob("step-*.png"))
    assert grid and grid[-1].name == "step-0000060.png"  # the last validation grid, made by one pass


def test_the_saved_model_is_one_pass_and_the_runtime_reads_it_as_training_did(trained, data_dir):
    """The loss training computes on an example equals the MSE of the runtime's one-pass latent against the target
    latent: inputs, timestep and the reading of the output agree between training and icv_deploy.load()."""
    import datasets
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    import icv_deploy
    from icv_deploy.one_pass import OnePass
    from icv_deploy.training.augment import to_tensor
    from icv_deploy.training.one_pass_loss import DecodedLoss, one_pass_loss
    from icv_deploy.training.train_data import tokenize

    _, output = trained
    model = output / "model"
    config = json.loads((model / "icv_config.json").read_text())
    assert {k: config[k] for k in ("mode", "timestep", "noise_input", "prediction_type")} == {
        "mode": "one_pass", "timestep": 999, "noise_input": "zeros", "prediction_type": "sample"}
    assert not {"sampler", "steps", "guidance_scale"} & set(config)  # settings a one-pass model would not use

    pipe = icv_deploy.load(model)
    assert pipe.one_pass == OnePass(999, "zeros", "sample")
    row = datasets.load_from_disk(str(data_dir))[0]
    image, target = to_tensor(row["input_image"])[None], to_tensor(row["edited_image"])[None]

    # The runtime's path: its own tokenizer, text encoder, VAE encoder (from the uint8 picture) and one UNet call.
    text_emb, _ = pipe.encode_instructions([row["edit_prompt"]])
    image_latents = pipe.encode_image(np.asarray(row["input_image"].convert("RGB")))
    runtime_latent = pipe.one_pass_sample(text_emb, image_latents)

    # Training's path, on the same saved weights.
    from diffusers import UNet2DConditionModel

    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    with torch.no_grad():
        batch = {"image_latents": vae.encode(image).latent_dist.mode(),
                 "target_mean": vae.encode(target).latent_dist.mean,
                 "input_ids": tokenize(tokenizer, [row["edit_prompt"]])}
        loss, _ = one_pass_loss(batch, unet, vae, text_encoder, pipe.one_pass, pipe.scheduler_config,
                                DecodedLoss(weight=0.0))
    expected = torch.mean((runtime_latent - batch["target_mean"] * vae.config.scaling_factor) ** 2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_the_decoded_loss_reaches_the_unet_through_the_decoder(data_dir, tmp_path):
    """With the latent term equal, the pixel term changes the UNet's gradient: it flows back through the VAE."""
    from icv_deploy.one_pass import OnePass
    from icv_deploy.training.model_init import load_training_models
    from icv_deploy.training.one_pass_loss import DecodedLoss, one_pass_loss

    models = load_training_models("random:tiny", random_dir=tmp_path / "base", seed=0)
    mode = OnePass(999, "zeros", "sample")
    gen = torch.Generator().manual_seed(0)
    batch = {"image_latents": torch.randn(2, 4, 4, 4, generator=gen), "target_mean": torch.randn(2, 4, 4, 4, generator=gen),
             "input_ids": torch.randint(0, 1000, (2, 77), generator=gen),
             "target_pixels": torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1, "task_id": torch.tensor([1, 2])}
    models.vae.requires_grad_(False)
    grads = []
    for decoded in (DecodedLoss(weight=0.0), DecodedLoss(weight=1.0, examples=1)):
        models.unet.zero_grad()
        loss, terms = one_pass_loss(batch, models.unet, models.vae, models.text_encoder, mode,
                                    dict(models.noise_scheduler.config), decoded)
        loss.backward()
        grads.append(models.unet.conv_out.weight.grad.clone())
    assert "pixel_l1" in terms and terms["pixel_l1"] > 0
    assert not torch.allclose(grads[0], grads[1])


def test_outline_pixels_and_their_sides_weigh_more():
    from icv_deploy.training.one_pass_loss import outline_weight_map

    pixels = torch.full((1, 3, 9, 9), -1.0)
    pixels[0, 2, 4, 1:8] = 1.0  # a pure blue horizontal line, 7 pixels long, on black
    weight = outline_weight_map(pixels, 10.0)[0, 0]
    heavy = weight > 1
    assert heavy.sum() == 3 * 9  # the line's rows 3-5, widened by one pixel at each end
    assert heavy[3:6, 0:9].all() and torch.all(weight[heavy] == 11.0) and torch.all(weight[~heavy] == 1.0)


def test_a_blue_answer_card_is_not_an_outline():
    """Only strokes weigh more: a classification answer painted pure blue (whole picture, or a filled block) has no
    outline pixels inside it, while a box outline drawn on a photo keeps all of its pixels."""
    from icv_deploy.tasks.encodings import encode_classification, encode_detection
    from icv_deploy.training.one_pass_loss import outline_strokes, outline_weight_map

    def as_pixels(picture):
        return torch.from_numpy(np.asarray(picture, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0

    card = as_pixels(encode_classification(True, (16, 16), "blue", "black"))
    assert torch.all(outline_weight_map(card, 50.0) == 1.0)
    photo = np.full((16, 16, 3), 128, np.uint8)
    boxes = as_pixels(encode_detection(photo, [(3, 3, 12, 10)]))
    drawn = (boxes[0, 2] > 0.9) & (boxes[0, 0] < -0.8)
    assert drawn.sum() > 20 and torch.equal(outline_strokes(boxes)[0, 0].bool(), drawn)


def test_outlines_weigh_more_in_detection_targets_only():
    """The same picture (a blue shape on black, as the yes/no curriculum paints it) decoded with the same error:
    as a detection target its edge pixels weigh 51x, as a classification target every pixel weighs 1."""
    from types import SimpleNamespace

    from icv_deploy.tasks import TASKS
    from icv_deploy.training.one_pass_loss import DecodedLoss, decoded_terms
    from icv_deploy.training.yes_no_curriculum import grown_answer

    mask = np.zeros((16, 16), bool)
    mask[5:9, 6:11] = True
    picture = torch.from_numpy(grown_answer(mask, 2, "blue", "black").astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
    error = 0.1
    vae = SimpleNamespace(config=SimpleNamespace(scaling_factor=1.0), dtype=torch.float32,
                          decode=lambda z: SimpleNamespace(sample=z[:, :3] + error))

    def pixel_l1(task):
        batch = {"task_id": torch.tensor([TASKS.index(task)]), "target_pixels": picture[None]}
        return decoded_terms(picture[None].clone(), batch, vae, DecodedLoss(examples=1, outline_weight=50.0))[1]["pixel_l1"]

    assert pixel_l1("classification") == pytest.approx(error, rel=1e-5)
    assert pixel_l1("detection") > 5 * error


def test_the_mask_term_rewards_committing_to_the_likelier_pixels():
    """An uncertain answer painted as a dim grey (which the runtime's threshold at 127 reads as no mask) costs more
    than the committed mask, and its gradient brightens the mask pixels and darkens the rest."""
    from icv_deploy.training.one_pass_loss import DecodedLoss, mask_loss

    target = torch.full((1, 3, 8, 8), -1.0)
    target[..., 2:6, 2:6] = 1.0  # a white square on black
    committed = target * 0.8
    dim = torch.where(target > 0, -0.2, -0.6).requires_grad_(True)  # brighter on the square, but under 127
    settings = DecodedLoss()
    assert mask_loss(committed, target, settings) < 0.1 < mask_loss(dim, target, settings)
    mask_loss(dim, target, settings).backward()
    inside = target[0, 0] > 0
    assert (dim.grad[0, :, inside] < 0).all() and (dim.grad[0, :, ~inside] > 0).all()
    # An empty target (the category is absent) asks for an empty mask.
    empty = torch.full((1, 3, 8, 8), -1.0)
    assert mask_loss(empty * 0.9, empty, settings) < 0.01 < mask_loss(committed, empty, settings)


def flat(rgb, size: int = 8) -> torch.Tensor:
    """A (1, 3, size, size) picture of one colour, given in 0..255, in [-1, 1]."""
    return (torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1).view(1, 3, 1, 1).expand(1, 3, size, size).clone()


def test_the_colour_term_rewards_the_nearer_named_colour():
    """For "cyan if present, pink if absent": an answer painted as a mixture of the two (what an MSE fit of an
    uncertain answer paints) costs log 2, the right colour almost nothing, the wrong one much; the gradient moves a
    mixture toward the right colour, and an absent category's answer is pushed to the other colour."""
    from icv_deploy.tasks.encodings import COLORS
    from icv_deploy.training.one_pass_loss import DecodedLoss, color_loss

    present, absent = flat(COLORS["cyan"]), flat(COLORS["pink"])
    colors = torch.stack([present[0, :, 0, 0], absent[0, :, 0, 0]])[None]
    settings = DecodedLoss(color_weight=1.0)
    mixture = ((present + absent) / 2).requires_grad_(True)
    assert color_loss(present, present, settings, colors) < 0.05
    assert color_loss(absent, present, settings, colors) > 2.0
    assert color_loss(mixture, present, settings, colors).item() == pytest.approx(np.log(2), abs=1e-4)
    color_loss(mixture, present, settings, colors).backward()
    step = -mixture.grad[0, :, 0, 0]
    assert torch.dot(step, present[0, :, 0, 0] - absent[0, :, 0, 0]) > 0
    assert color_loss(absent, absent, settings, colors) < 0.05 < 2.0 < color_loss(present, absent, settings, colors)


def test_the_colour_term_decides_as_the_runtime_does():
    """On flat answers of random colours the term reads "present" exactly when the runtime's decoder
    (decode_classification) does: its loss against a present truth is under log 2 then, over it otherwise."""
    from icv_deploy.tasks.decoders import decode_classification
    from icv_deploy.tasks.encodings import COLORS
    from icv_deploy.training.one_pass_loss import DecodedLoss, color_loss

    rng = np.random.default_rng(0)
    settings = DecodedLoss(color_weight=1.0)
    names = list({rgb: name for name, rgb in COLORS.items()}.values())  # one name per colour (grey and gray)
    agree = 0
    for _ in range(60):
        yes, no = rng.choice(names, 2, replace=False)
        colors = torch.stack([flat(COLORS[yes])[0, :, 0, 0], flat(COLORS[no])[0, :, 0, 0]])[None]
        rgb = rng.integers(0, 256, 3)
        answer = np.broadcast_to(rgb.astype(np.uint8), (8, 8, 3))
        term = color_loss(flat(rgb), flat(COLORS[yes]), settings, colors).item()
        agree += (term < np.log(2)) == decode_classification(answer, yes, no)[0]
    assert agree == 60


def test_the_colour_map_term_rewards_a_small_grown_answer_the_mean_colour_misses():
    """A curriculum answer (training/yes_no_curriculum.py): the category's grown mask in the "present" colour on the
    "absent" one. Painted all "absent", the picture's mean colour is still nearer "absent", so the colour term
    (which the target's mean also reads as "absent") is content; the per-pixel term is not, and its gradient moves
    the mask pixels toward "present" and keeps the rest at "absent"."""
    from icv_deploy.tasks.encodings import COLORS
    from icv_deploy.training.one_pass_loss import DecodedLoss, color_loss, color_map_loss

    present, absent = flat(COLORS["yellow"], 16), flat(COLORS["purple"], 16)
    colors = torch.stack([present[0, :, 0, 0], absent[0, :, 0, 0]])[None]
    grown = absent.clone()
    grown[..., 4:9, 5:10] = present[..., 4:9, 5:10]  # 25 of 256 pixels
    settings = DecodedLoss(color_map_weight=1.0)
    all_absent = absent.clone().requires_grad_(True)
    assert color_loss(all_absent, grown, settings, colors) < 0.05  # the mean colour term cannot see the mask
    assert color_map_loss(grown, grown, settings, colors) < 0.05 < 0.5 < color_map_loss(all_absent, grown, settings,
                                                                                         colors)
    color_map_loss(all_absent, grown, settings, colors).backward()
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[4:9, 5:10] = True
    toward_present = -(all_absent.grad[0] * (present - absent)[0]).sum(0)  # the gradient step along absent -> present
    assert (toward_present[inside] > 0).all() and (toward_present[~inside] <= 0).all()
    assert toward_present[inside].min() > 10 * toward_present[~inside].abs().max()
    # For the contract's solid card it is the colour term per pixel: the right card costs little, the wrong much.
    assert color_map_loss(present, present, settings, colors) < 0.05 < 2.0 < color_map_loss(absent, present, settings,
                                                                                            colors)


def test_classification_examples_carry_the_colours_the_router_reads():
    """CachedLatentExamples' answer colours: the instruction's present and absent colours for classification
    examples, zeros for the others; an instruction that names none gets the runtime's default, blue and black."""
    import datasets

    from icv_deploy.training.latent_cache import classification_color_names, classification_colors

    rows = datasets.Dataset.from_dict({
        "edit_prompt": ["Show blue if the picture has a cat, otherwise show black", "Segment the cat",
                        "Colour it cyan if the image has a cone, otherwise colour it pink."],
        "task": ["classification", "segmentation", "classification"]})
    colors = classification_colors(classification_color_names(rows))
    expected = torch.tensor([[[-1.0, -1, 1], [-1, -1, -1]], [[0, 0, 0], [0, 0, 0]],
                             [[-1, 1, 1], [1, 192 / 127.5 - 1, 203 / 127.5 - 1]]])
    torch.testing.assert_close(colors, expected)
    unnamed = datasets.Dataset.from_dict({"edit_prompt": ["Is there a cat?"], "task": ["classification"]})
    torch.testing.assert_close(classification_colors(classification_color_names(unnamed)), expected[:1])


def test_the_autoencoders_outline_term_leaves_blue_objects_away_from_outlines_alone():
    """outline_band_loss (icv-train-vae's box_weight) scores a faint outline above a pure one, like box_loss, but a
    blue object away from any outline costs nothing and gets no gradient (box_loss would push it off blue)."""
    from icv_deploy.training.one_pass_loss import DecodedLoss, box_loss, outline_band_loss

    target = torch.full((1, 3, 16, 16), 0.2)
    target[0, :, 2, 2:8] = torch.tensor([-1.0, -1.0, 1.0])[:, None]  # one outline stroke, pure blue
    target[0, :, 12:15, 10:14] = torch.tensor([-0.9, -0.8, 0.9])[:, None, None]  # a blue object, far from it
    faint = target.clone()
    faint[0, :, 2, 2:8] = torch.tensor([-0.2, -0.2, 0.3])[:, None]
    assert outline_band_loss(target, target, 10.0) < 0.15 < outline_band_loss(faint, target, 10.0)
    painted = target.clone().requires_grad_(True)
    outline_band_loss(painted, target, 10.0).backward()
    assert (painted.grad[0, :, 12:15, 10:14] == 0).all()
    object_pixels = painted.detach().clone().requires_grad_(True)
    box_loss(object_pixels, target, DecodedLoss(box_weight=1.0)).backward()
    assert (object_pixels.grad[0, 2, 12:15, 10:14] > 0).all()  # the detection term alone would dim the object


def test_the_box_term_rewards_pure_blue_outlines_and_nothing_blue_elsewhere():
    """A faint bluish outline (under the decoder's blue threshold) costs more than a pure blue one; its gradient
    makes the outline bluer (blue up, red and green down) and keeps the rest from turning blue."""
    from icv_deploy.training.one_pass_loss import DecodedLoss, box_loss

    target = torch.full((1, 3, 12, 12), -1.0)
    target[0, 2, 2, 2:10] = target[0, 2, 9, 2:10] = target[0, 2, 2:10, 2] = target[0, 2, 2:10, 9] = 1.0  # a box outline
    line = target[0, 2] > 0
    scene = torch.full((1, 3, 12, 12), 0.2)  # grey everywhere else
    committed = torch.where(line, target, scene)
    faint = torch.where(line, torch.tensor([-0.2, -0.2, 0.3])[:, None, None], scene).requires_grad_(True)
    settings = DecodedLoss(box_weight=1.0)
    assert box_loss(committed, target, settings) < 0.15 < box_loss(faint, target, settings)
    box_loss(faint, target, settings).backward()
    assert (faint.grad[0, 2][line] < 0).all() and (faint.grad[0, :2][:, line] > 0).all()
    assert (faint.grad[0, 2][~line] > 0).all()  # blue off the outline is pushed down


def test_examples_of_the_tasks_with_a_term_are_decoded_first():
    from icv_deploy.training.one_pass_loss import DecodedLoss, decoded_examples

    task_ids = torch.tensor([2, 0, 1, 0, 3, 2])  # segmentation is 0, detection 1
    assert decoded_examples(task_ids, DecodedLoss(examples=3)).tolist() == [0, 1, 2]
    assert decoded_examples(task_ids, DecodedLoss(examples=3, mask_weight=1.0)).tolist() == [1, 3, 0]
    assert decoded_examples(task_ids, DecodedLoss(examples=4, mask_weight=1.0, box_weight=1.0)).tolist() == [1, 2, 3, 0]
    assert decoded_examples(task_ids, DecodedLoss(examples=2, box_weight=1.0)).tolist() == [2, 0]
    # classification is 3
    assert decoded_examples(task_ids, DecodedLoss(examples=3, mask_weight=1.0, color_weight=1.0)).tolist() == [1, 3, 4]
    assert decoded_examples(task_ids, DecodedLoss(examples=2, color_map_weight=1.0)).tolist() == [4, 0]


def test_a_batch_whose_conditioning_was_all_dropped_adds_no_decoded_term():
    """The sampled objective decodes only examples that kept both conditions; with none left the term is 0, not a
    NaN mean over nothing."""
    from icv_deploy.training.one_pass_loss import DecodedLoss, decoded_terms

    batch = {"task_id": torch.tensor([0, 1]), "target_pixels": torch.zeros(2, 3, 8, 8)}
    loss, terms = decoded_terms(torch.zeros(2, 4, 2, 2), batch, None, DecodedLoss(mask_weight=1.0),
                                candidates=torch.tensor([], dtype=torch.long))
    assert loss == 0.0 and terms == {}


def test_the_clean_latent_of_an_exact_prediction_is_the_target():
    """predicted_clean_latents inverts diffusers' own forward process: the prediction diffusers' scheduler calls
    right (its velocity, or the noise) gives back the latent that was noised, at every timestep."""
    from diffusers import DDPMScheduler

    from icv_deploy.training.objectives import predicted_clean_latents

    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 4, 8, 8, generator=gen), torch.randn(4, 4, 8, 8, generator=gen)
    t = torch.tensor([0, 250, 700, 999])
    for kind in ("v_prediction", "epsilon"):
        scheduler = DDPMScheduler(prediction_type=kind, rescale_betas_zero_snr=kind == "v_prediction")
        noisy = scheduler.add_noise(x0, noise, t)
        exact = scheduler.get_velocity(x0, noise, t) if kind == "v_prediction" else noise
        clean = predicted_clean_latents(exact, noisy, t, scheduler)
        checked = slice(None) if kind == "v_prediction" else slice(0, 3)  # epsilon at zero SNR carries no x0
        torch.testing.assert_close(clean[checked], x0[checked], atol=1e-3, rtol=1e-3)


def test_the_sampled_objective_takes_the_decoded_terms_too(data_dir, tmp_path):
    """objective instruct_pix2pix with a decoded_loss section: the mask and colour terms are computed on the clean
    latent the v-prediction implies, logged beside the prediction MSE, and change what is learnt."""
    common = dict(data=str(data_dir), max_steps=8, checkpoint_every=0, validation_every=0, learning_rate=1e-3,
                  cache_latents=True, resize_max=16, random_flip=False, conditioning_dropout_prob=0.0, use_ema=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with_mask = run_in_process(output=str(tmp_path / "mask"), decoded_loss={"weight": 0.0, "mask_weight": 1.0,
                                                                                 "color_weight": 1.0, "examples": 2},
                                   **common)
        plain = run_in_process(output=str(tmp_path / "plain"), **common)
    finally:
        torch.set_num_threads(before)
    logged = read_losses(tmp_path / "mask")
    assert all("prediction_mse" in row for row in logged) and any("mask_bce_dice" in row for row in logged)
    assert any("color_bce" in row for row in logged)
    assert not any("mask_bce_dice" in row for row in read_losses(tmp_path / "plain"))
    assert with_mask.losses != plain.losses


@pytest.mark.parametrize("settings, message", [
    ({"objective": "one_pass", "cache_latents": False}, "objective one_pass trains on cached latents"),
    ({**ONE_PASS, "one_pass": {"steps": 1}}, "unknown one_pass key(s) steps"),
    ({**ONE_PASS, "decoded_loss": {"weigth": 1.0}}, "unknown decoded_loss key(s) weigth"),
    ({"decoded_loss": {"mask_weight": 1.0}}, "decoded_loss trains on cached latents"),
    ({**ONE_PASS, "one_pass": {"noise_input": "noise"}}, "unknown noise_input 'noise'"),
    ({"objective": "consistency"}, "objective must be instruct_pix2pix or one_pass"),
    ({**ONE_PASS, "objective": "instruct_pix2pix", "decoded_loss": {"mask_weight": 1.0, "min_timestep": 1000}},
     "decoded_loss min_timestep must be from 0 to 999, got 1000"),
    ({**ONE_PASS, "decoded_loss": {"min_timestep": 900}}, "decoded_loss min_timestep is for the sampled objective"),
])
def test_bad_one_pass_settings_are_named(data_dir, tmp_path, settings, message):
    with pytest.raises(IcvError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_in_process(data=str(data_dir), output=str(tmp_path / "run"), max_steps=1, **settings)


def test_decoded_examples_are_noised_from_min_timestep_the_others_as_before():
    """decoded_loss.min_timestep: the examples decoded_terms will decode (segmentation and classification first, kept
    conditioning only) are drawn from [min_timestep, 1000); every other example keeps the timestep it had without."""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    from icv_deploy.training.objectives import instruct_pix2pix_loss
    from icv_deploy.training.one_pass_loss import CLASSIFICATION, SEGMENTATION, DecodedLoss

    n = 64
    task_id = torch.tensor([SEGMENTATION, 1, CLASSIFICATION, 2] * (n // 4))
    batch = {"image_latents": torch.zeros(n, 4, 2, 2), "target_mean": torch.zeros(n, 4, 2, 2),
             "target_std": torch.ones(n, 4, 2, 2), "input_ids": torch.zeros(n, 1, dtype=torch.long),
             "task_id": task_id, "target_pixels": torch.zeros(n, 3, 2, 2),
             "answer_colors": torch.zeros(n, 2, 3).index_fill_(1, torch.tensor([0]), 1.0)}
    vae = SimpleNamespace(config=SimpleNamespace(scaling_factor=1.0), dtype=torch.float32,
                          decode=lambda z: SimpleNamespace(sample=z[:, :3]))

    def draw(decoded):
        seen = []

        def unet(sample, timesteps, encoder_hidden_states, return_dict):
            seen.append(timesteps.clone())
            return (sample[:, :4],)

        instruct_pix2pix_loss(batch, unet, vae, lambda ids: (torch.zeros(len(ids), 1, 8),), DDPMScheduler(),
                              torch.zeros(1, 1, 8), 0.0, torch.Generator().manual_seed(0), torch.float32,
                              decoded=decoded)
        return seen[0]

    plain = draw(DecodedLoss(weight=0.0, examples=24, mask_weight=1.0, color_weight=1.0))
    late = draw(DecodedLoss(weight=0.0, examples=24, mask_weight=1.0, color_weight=1.0, min_timestep=900))
    decoded = torch.isin(task_id, torch.tensor([SEGMENTATION, CLASSIFICATION])).nonzero().flatten()[:24]
    others = torch.ones(n, dtype=torch.bool).index_fill_(0, decoded, False)
    assert int(late[decoded].min()) >= 900 and int(plain[decoded].min()) < 900
    assert torch.equal(late[others], plain[others])
