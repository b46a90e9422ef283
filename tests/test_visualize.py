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
    assert np.array_equal(draw_boxes(image, np.zeros((0, 4)), np.zeros(0)), image)


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
