"""Detector criteria: one file per detector, each reproducing its original implementation."""

from .detr import DETRLoss, SetLossResult
from .result import LossResult
from .ssd import SSDLoss, l2_weight_decay
from .yolov3 import YOLOv3Loss
from .yolov4 import YOLOv4Loss
from .yolov5 import YOLOV5_ANCHORS, YOLOV5_STRIDES, YOLOv5Loss, yolov5_scaled_gains
from .yolov8 import YOLOv8Loss

__all__ = [
    "YOLOV5_ANCHORS",
    "YOLOV5_STRIDES",
    "DETRLoss",
    "LossResult",
    "SSDLoss",
    "SetLossResult",
    "YOLOv3Loss",
    "YOLOv4Loss",
    "YOLOv5Loss",
    "YOLOv8Loss",
    "l2_weight_decay",
    "yolov5_scaled_gains",
]
