"""Pictures: overlays change what they should and nothing else; the depth colour map is monotonic."""

import numpy as np
import pytest
from matplotlib import colormaps

from icv_deploy.tasks.visualize import (CONFIDENT_COLOR, UNSURE_COLOR, classification_card, colorize_depth,
                                        draw_boxes, overlay_mask)


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)


def test_overlay_changes_exactly_the_masked_pixels(image):
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[20:70, 30:90] = True
    out = overlay_mask(image, mask, color=(255, 0, 0), alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.array_equal(out[~mask], image[~mask])
    expected = np.round(0.5 * image[mask].astype(float) + 0.5 * np.array([255, 0, 0]))
    assert np.abs(out[mask].astype(float) - expected).max() <= 0.5
    assert np.array_equal(overlay_mask(image, mask, alpha=0.0), image)
    assert np.all(overlay_mask(image, mask, color=(1, 2, 3), alpha=1.0)[mask] == (1, 2, 3))
    with pytest.raises(ValueError):
        overlay_mask(image, mask[:10])


def test_boxes_are_drawn_where_asked(image):
    image = np.full_like(image, 128)
    boxes = np.array([[20, 40, 80, 100], [100, 10, 150, 60]], dtype=np.float32)
    out = draw_boxes(image, boxes, np.array([0.9, 0.2], dtype=np.float32), label="cat")
    assert out.shape == image.shape and out.dtype == np.uint8
    # Each box's outline pixels carry its colour: green for a confident box, red for an unsure one.
    assert np.all(out[70, 20] == CONFIDENT_COLOR) and np.all(out[70, 79] == CONFIDENT_COLOR)
    assert np.all(out[99, 50] == CONFIDENT_COLOR)
    assert np.all(out[59, 125] == UNSURE_COLOR) and np.all(out[30, 149] == UNSURE_COLOR)
    # Inside and well away from the boxes (and their tags) the image is unchanged.
    assert np.array_equal(out[50:95, 25:75], image[50:95, 25:75])
    assert np.array_equal(out[105:, :], image[105:, :])


def test_colorize_depth_is_the_magma_map_on_a_fixed_scale():
    depth = np.tile(np.linspace(0.0, 10.0, 256, dtype=np.float32), (4, 1))
    rgb = colorize_depth(depth)
    assert rgb.shape == (4, 256, 3) and rgb.dtype == np.uint8
    expected = np.round(colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255)
    assert np.abs(rgb[0].astype(float) - expected).max() <= 1
    # Monotonic: perceived lightness (Rec. 709 luma) never falls as depth grows, and near != far.
    luma = rgb[0].astype(float) @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(luma) >= -1.0) and luma[-1] - luma[0] > 150
    # Fixed scale: beyond max_depth clips, NaN is painted as 0 m.
    assert np.array_equal(colorize_depth(np.array([[12.0, np.nan]]))[0], rgb[0, [-1, 0]])
    assert np.array_equal(colorize_depth(np.array([[5.0]]), max_depth=20.0), colorize_depth(np.array([[2.5]])))


@pytest.mark.parametrize("present", [True, False])
def test_classification_card(image, present):
    card = classification_card(image, present, 0.83 if present else -0.4, "cat")
    banner = card.shape[0] - image.shape[0]
    assert card.dtype == np.uint8 and card.shape[1:] == image.shape[1:] and 10 < banner < 60
    assert np.array_equal(card[banner:], image)
    # The banner is the verdict's colour with white text on it.
    colour = CONFIDENT_COLOR if present else UNSURE_COLOR
    assert np.all(card[0, -1] == colour)
    assert (card[:banner] == 255).all(axis=2).any()


# ---- pictures that explain themselves ------------------------------------------------------------------------------
def _text_pixels(region: np.ndarray, background) -> int:
    """How many pixels differ from a flat background: text drawn there."""
    return int((np.abs(region.astype(int) - np.array(background)).sum(axis=2) > 60).sum())


def test_no_boxes_gets_a_caption_and_nothing_else_changes(image):
    image = np.full_like(image, 128)
    out = draw_boxes(image, np.zeros((0, 4)), np.zeros(0), label="cat")
    assert out.shape == image.shape
    changed = np.argwhere((out != image).any(axis=2))
    assert len(changed) > 100  # the caption is there ...
    # ... as a red tag in the top-left corner, with white text on it, and the rest of the picture untouched.
    bottom, right = changed.max(axis=0)
    assert bottom < image.shape[0] // 2 and np.all(out[0, 0] == UNSURE_COLOR)
    assert (out[: bottom + 1, : right + 1, 1] > 150).sum() > 20  # light text on the red tag (red has no green)
    assert np.array_equal(out[bottom + 1:], image[bottom + 1:])


def test_depth_picture_adds_a_labelled_colour_bar():
    from icv_deploy.tasks.visualize import depth_picture

    depth = np.tile(np.linspace(0.5, 9.5, 200, dtype=np.float32), (150, 1))
    picture = depth_picture(depth)
    coloured = colorize_depth(depth)
    # The depth map itself is unchanged; the bar adds columns on the right.
    assert picture.shape[0] == 150 and picture.shape[1] > 200 + 20
    assert np.array_equal(picture[:, :200], coloured)
    panel = picture[:, 200:]
    lut = np.round(colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255)
    # Some column of the panel is the whole colour map, far (bright, 10 m) at the top down to near (dark, 0 m).
    bar_columns = []
    for x in range(panel.shape[1]):
        column = panel[:, x].astype(float)
        coloured_rows = np.nonzero(np.abs(column - 255).sum(axis=1) > 0)[0]
        if len(coloured_rows) < 100:
            continue
        top, bottom = column[coloured_rows[0]], column[coloured_rows[-1]]
        luma = column[coloured_rows] @ np.array([0.2126, 0.7152, 0.0722])
        if np.abs(top - lut[-1]).max() <= 1 and np.abs(bottom - lut[0]).max() <= 1 and np.all(np.diff(luma) <= 1.0):
            bar_columns.append(x)
    assert len(bar_columns) >= 8, "no colour bar found"
    # Right of the bar: dark text (the tick labels in metres) on white.
    labels = panel[:, max(bar_columns) + 2:]
    assert _text_pixels(labels, (255, 255, 255)) > 50
    # The same labels at another maximum depth are different text.
    assert not np.array_equal(depth_picture(depth, max_depth=20.0)[:, 200:], panel)


def test_classification_card_names_the_category_and_the_verdict(image):
    yes = classification_card(image, True, 0.8, "cat")
    banner = yes.shape[0] - image.shape[0]
    # Another category or verdict writes other text into the banner.
    assert not np.array_equal(classification_card(image, True, 0.8, "dog")[:banner], yes[:banner])
    no = classification_card(image, False, 0.8, "cat")
    assert not np.array_equal(np.where(no[:banner] == UNSURE_COLOR, 0, no[:banner]),
                              np.where(yes[:banner] == CONFIDENT_COLOR, 0, yes[:banner]))


def test_labelled_grid_layout_labels_and_frames():
    from icv_deploy.tasks.visualize import FRAME_COLOR, labelled_grid

    white = np.full((128, 128, 3), 255, np.uint8)
    black = np.zeros((128, 96, 3), np.uint8)
    rows = [[black, white], [black, white]]
    plain = labelled_grid(rows, tile_height=256, gap=10)
    # Tiles enlarged to 256 px high (aspect kept: 96 -> 192 wide), columns as wide as their widest tile.
    assert plain.shape == (10 + 2 * (256 + 10), 10 + 192 + 10 + 256 + 10, 3)
    assert np.all(plain[10:266, 10:202] == 0)
    # The white tile is framed in grey on the white page, so it stays visible.
    assert np.all(plain[9, 212:468] == FRAME_COLOR) and np.all(plain[266, 212:468] == FRAME_COLOR)
    assert np.all(plain[10:266, 211] == FRAME_COLOR) and np.all(plain[10:266, 468] == FRAME_COLOR)
    # Labels add a header, a label column and captions, all with readable text (not just whitespace).
    labelled = labelled_grid(rows, column_labels=["input", "target"], row_labels=["a.png", "b.png"],
                             row_captions=["Segment the cat", "Detect the dog"], tile_height=256, gap=10)
    assert labelled.shape[0] > plain.shape[0] + 3 * 16 and labelled.shape[1] > plain.shape[1] + 100
    header = labelled[:labelled.shape[0] - plain.shape[0] - 40]
    assert _text_pixels(header[:, 160:], (255, 255, 255)) > 50
