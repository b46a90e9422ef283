"""Tasks: instruction routing, the visual encodings v(y), their decoders and pictures (docs/DESIGN.md 6)."""

from .decoders import decode, decode_classification, decode_depth, decode_detection, decode_segmentation
from .encodings import (BOX_COLOR, COLORS, DEPTH_MAX_M, TASKS, box_line_width, encode_classification, encode_depth,
                        encode_detection, encode_segmentation)
from .painted import read_task, task_scores
from .routing import EXAMPLES, Route, route
from .visualize import classification_card, colorize_depth, depth_picture, draw_boxes, labelled_grid, overlay_mask

__all__ = [
    "TASKS", "COLORS", "BOX_COLOR", "DEPTH_MAX_M", "box_line_width",
    "encode_segmentation", "encode_detection", "encode_depth", "encode_classification",
    "decode", "decode_segmentation", "decode_detection", "decode_depth", "decode_classification",
    "route", "Route", "EXAMPLES", "read_task", "task_scores",
    "overlay_mask", "draw_boxes", "colorize_depth", "depth_picture", "classification_card", "labelled_grid",
]
