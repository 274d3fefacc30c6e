"""Detector criteria: one file per detector, each reproducing its original implementation."""

from .detr import DETRLoss, SetLossResult
from .dfine import ddf_loss, dfine_bin_values, fgl_loss, fgl_targets
from .end_to_end import E2EResult, EndToEndLoss, yolo26_loss, yolov10_loss
from .result import LossResult
from .ssd import SSDLoss, l2_weight_decay
from .yolov3 import YOLOv3Loss
from .yolov4 import YOLOv4Loss
from .yolov5 import YOLOV5_ANCHORS, YOLOV5_STRIDES, YOLOv5Loss, yolov5_scaled_gains
from .yolov8 import YOLOv8Loss
from .yolov8_obb import YOLOv8OBBLoss

__all__ = [
    "YOLOV5_ANCHORS",
    "YOLOV5_STRIDES",
    "DETRLoss",
    "E2EResult",
    "EndToEndLoss",
    "LossResult",
    "SSDLoss",
    "SetLossResult",
    "YOLOv3Loss",
    "YOLOv4Loss",
    "YOLOv5Loss",
    "YOLOv8Loss",
    "YOLOv8OBBLoss",
    "ddf_loss",
    "dfine_bin_values",
    "fgl_loss",
    "fgl_targets",
    "l2_weight_decay",
    "yolo26_loss",
    "yolov10_loss",
    "yolov5_scaled_gains",
]
