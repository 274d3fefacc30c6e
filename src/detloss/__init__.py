"""detloss: loss functions for object detection and classification, built on PyTorch.

The public API is re-exported here; nothing is defined in this file. Reference and guides: the
documentation site built from ``docs/`` (``mkdocs serve``, see the README).
"""

from . import nn, profiling
from ._version import __version__ as __version__
from .boxes import box_area, box_convert
from .iou import bbox_iou, box_iou
from .kernels import compile_enabled, set_compile
from .losses import (
    distribution_focal_loss,
    ia_bce_loss,
    iou_loss,
    mal_loss,
    quality_focal_loss,
    rotated_iou_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
    smooth_labels,
    varifocal_loss,
)
from .rotated import box_convert_rotated, rotated_bbox_iou, rotated_box_iou

__all__ = [
    "bbox_iou",
    "box_area",
    "box_convert",
    "box_convert_rotated",
    "box_iou",
    "compile_enabled",
    "distribution_focal_loss",
    "ia_bce_loss",
    "iou_loss",
    "mal_loss",
    "nn",
    "profiling",
    "quality_focal_loss",
    "rotated_bbox_iou",
    "rotated_box_iou",
    "rotated_iou_loss",
    "set_compile",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "smooth_labels",
    "varifocal_loss",
]
