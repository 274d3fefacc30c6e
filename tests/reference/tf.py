"""TensorFlow / Keras formulas shared by the loop ports of the TF originals (tensorflow-yolov3 and
yolov4-tiny-tf2), written without detloss."""

from __future__ import annotations

import torch


def sigmoid_cross_entropy_with_logits(logits, labels):
    """``tf.nn.sigmoid_cross_entropy_with_logits``: max(x, 0) − x·z + log(1 + e^−|x|)."""
    return torch.clamp(logits, min=0) - logits * labels + torch.log1p(torch.exp(-logits.abs()))


def iou_xywh(b1, b2):
    """Elementwise (broadcast) IoU of cxcywh boxes without eps: the ignore-mask IoU of both
    tensorflow-yolov3 (``bbox_iou``) and yolov4-tiny-tf2 (``box_iou``, on ``b1[..., None, :]``); the two
    ports computed the same numbers (w·0.5 and w / 2 round alike), so they share this copy."""
    a1, a2 = b1[..., 2] * b1[..., 3], b2[..., 2] * b2[..., 3]
    lu = torch.maximum(b1[..., :2] - b1[..., 2:] * 0.5, b2[..., :2] - b2[..., 2:] * 0.5)
    rd = torch.minimum(b1[..., :2] + b1[..., 2:] * 0.5, b2[..., :2] + b2[..., 2:] * 0.5)
    inter = torch.clamp(rd - lu, min=0)
    inter = inter[..., 0] * inter[..., 1]
    return inter / (a1 + a2 - inter)
