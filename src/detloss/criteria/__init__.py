"""Detector criteria: one file per detector, each reproducing its original implementation."""

from .common import LossResult
from .yolov3 import YOLOv3Loss
from .yolov4 import YOLOv4Loss

__all__ = ["LossResult", "YOLOv3Loss", "YOLOv4Loss"]
