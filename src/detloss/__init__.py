"""detloss: loss functions for object detection and classification, built on PyTorch.

The public API (contract: ``shared/API.md``) is re-exported here; nothing is defined in this file.
"""

from . import nn
from .boxes import box_area, box_convert
from .iou import bbox_iou, box_iou
from .kernels import compile_enabled, set_compile
from .losses import (
    iou_loss,
    quality_focal_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
    smooth_labels,
    varifocal_loss,
)

__version__ = "0.1.0"

__all__ = [
    "bbox_iou",
    "box_area",
    "box_convert",
    "box_iou",
    "compile_enabled",
    "iou_loss",
    "nn",
    "quality_focal_loss",
    "set_compile",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "smooth_labels",
    "varifocal_loss",
]
