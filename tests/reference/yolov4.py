"""Loop port of yolov4-tiny-tf2 (bubbliiiing): ``preprocess_true_boxes`` (the targets),
``nets/loss.py`` ``yolo_loss`` (with ``normalize``) and ``nets/ious.py`` ``box_ciou``, written without
detloss. ``TINY`` / ``TINY_MASKS`` are the repository's YOLOv4-tiny anchors and masks, ``FULL`` /
``FULL_MASKS`` the three-scale YOLOv4 configuration of the same code.

``ref_loss(..., alpha_grad=False)`` holds CIoU's α constant in the gradient (as the CIoU paper and
detloss do); the TensorFlow original differentiates it (the default).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tests.reference.tf import iou_xywh
from tests.reference.tf import sigmoid_cross_entropy_with_logits as _sce

EPS = 1e-7  # K.epsilon()
TINY = np.array([[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]], dtype=np.float64)
TINY_MASKS = [[3, 4, 5], [1, 2, 3]]
FULL = np.array(
    [[12, 16], [19, 36], [40, 28], [36, 75], [76, 55], [72, 146], [142, 110], [192, 243], [459, 401]],
    dtype=np.float64,
)
FULL_MASKS = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]


def ref_y_true(targets, input_shape, anchors, masks, grid_shapes, num_classes, floor_centre=False):
    m = len(targets)
    y_true = [
        np.zeros((m, h, w, len(mk), 5 + num_classes)) for (h, w), mk in zip(grid_shapes, masks, strict=True)
    ]
    shape_wh = np.array(input_shape[::-1], dtype=np.float64)
    for b, t in enumerate(targets):
        boxes, labels = t["boxes"].numpy(), t["labels"].numpy()
        if len(boxes) == 0:
            continue
        xy = (boxes[:, 0:2] + boxes[:, 2:4]) // 2 if floor_centre else (boxes[:, 0:2] + boxes[:, 2:4]) / 2
        wh = boxes[:, 2:4] - boxes[:, 0:2]
        nxy, nwh = xy / shape_wh, wh / shape_wh
        box_max, anc_max = wh[:, None, :] / 2.0, anchors[None] / 2.0
        inter_wh = np.maximum(np.minimum(box_max, anc_max) - np.maximum(-box_max, -anc_max), 0.0)
        inter = inter_wh[..., 0] * inter_wh[..., 1]
        iou = inter / (wh[:, None, 0] * wh[:, None, 1] + anchors[None, :, 0] * anchors[None, :, 1] - inter)
        for k_box, n in enumerate(np.argmax(iou, axis=-1)):
            for layer, mk in enumerate(masks):
                if n in mk:
                    i = np.floor(nxy[k_box, 0] * grid_shapes[layer][1]).astype("int32")
                    j = np.floor(nxy[k_box, 1] * grid_shapes[layer][0]).astype("int32")
                    k = mk.index(n)
                    y_true[layer][b, j, i, k, 0:2] = nxy[k_box]
                    y_true[layer][b, j, i, k, 2:4] = nwh[k_box]
                    y_true[layer][b, j, i, k, 4] = 1
                    y_true[layer][b, j, i, k, 5 + labels[k_box]] = 1
    return [torch.as_tensor(y) for y in y_true]


def _corners(b):
    return b[..., :2] - b[..., 2:4] / 2.0, b[..., :2] + b[..., 2:4] / 2.0


def ref_box_ciou(b1, b2, alpha_grad=True):
    # nets/ious.py: cxcywh, eps as max(·, K.epsilon()) on the union, the enclosing diagonal, h and
    # 1 − IoU + v, and atan2; not yolov5.yolo_bbox_ciou (eps added) nor yolov8.naive_ciou (xyxy)
    b1_mins, b1_maxes = _corners(b1)
    b2_mins, b2_maxes = _corners(b2)
    inter_wh = torch.clamp(torch.minimum(b1_maxes, b2_maxes) - torch.maximum(b1_mins, b2_mins), min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = b1[..., 2] * b1[..., 3] + b2[..., 2] * b2[..., 3] - inter
    iou = inter / torch.clamp(union, min=EPS)
    center_distance = ((b1[..., :2] - b2[..., :2]) ** 2).sum(-1)
    enclose_wh = torch.clamp(torch.maximum(b1_maxes, b2_maxes) - torch.minimum(b1_mins, b2_mins), min=0)
    enclose_diagonal = (enclose_wh**2).sum(-1)
    ciou = iou - 1.0 * center_distance / torch.clamp(enclose_diagonal, min=EPS)
    v = (
        4
        * (
            torch.atan2(b1[..., 2], torch.clamp(b1[..., 3], min=EPS))
            - torch.atan2(b2[..., 2], torch.clamp(b2[..., 3], min=EPS))
        )
        ** 2
        / (math.pi * math.pi)
    )
    alpha = v / torch.clamp(1.0 - iou + v, min=EPS)
    if not alpha_grad:
        alpha = alpha.detach()
    return (ciou - alpha * v)[..., None]


def ref_box_iou(b1, b2):  # (..., 4) × (n, 4) → (..., n), no eps
    return iou_xywh(b1[..., None, :], b2)


def ref_loss(preds, targets, num_classes, anchors=TINY, masks=TINY_MASKS, strides=(32, 16), **kw):
    ignore_thresh = kw.pop("ignore_thresh", 0.5)
    label_smoothing = kw.pop("label_smoothing", 0.0)
    normalize = kw.pop("normalize", True)
    alpha_grad = kw.pop("alpha_grad", True)
    m = preds[0].shape[0]
    input_shape = (preds[0].shape[2] * 32, preds[0].shape[3] * 32)  # (h, w), as the original
    grid_shapes = [(p.shape[2], p.shape[3]) for p in preds]
    y_true = ref_y_true(targets, input_shape, anchors, masks, grid_shapes, num_classes, **kw)
    loss, num_pos = 0.0, 0.0
    for layer, p in enumerate(preds):
        h, w = grid_shapes[layer]
        a = len(masks[layer])
        feats = p.permute(0, 2, 3, 1).reshape(m, h, w, a, 5 + num_classes)
        gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        grid = torch.stack([gx, gy], -1)[:, :, None, :].double()
        box_xy = (torch.sigmoid(feats[..., :2]) + grid) / torch.tensor([w, h], dtype=torch.float64)
        box_wh = (
            torch.exp(feats[..., 2:4])
            * torch.as_tensor(anchors[masks[layer]])
            / torch.tensor(input_shape[::-1], dtype=torch.float64)
        )
        pred_box = torch.cat([box_xy, box_wh], -1)
        object_mask = y_true[layer][..., 4:5]
        true_class_probs = y_true[layer][..., 5:]
        if label_smoothing:
            true_class_probs = true_class_probs * (1.0 - label_smoothing) + label_smoothing / num_classes
        ignore = []
        for b in range(m):
            true_box = y_true[layer][b][object_mask[b, ..., 0].bool()][:, 0:4]
            if len(true_box) == 0:  # K.max over nothing is -inf < thresh
                ignore.append(torch.ones(h, w, a, dtype=torch.float64))
            else:
                best = ref_box_iou(pred_box[b], true_box).max(-1).values
                ignore.append((best < ignore_thresh).double())
        ignore_mask = torch.stack(ignore)[..., None]
        box_loss_scale = 2 - y_true[layer][..., 2:3] * y_true[layer][..., 3:4]
        ciou = ref_box_ciou(pred_box, y_true[layer][..., 0:4], alpha_grad)
        ciou_loss = object_mask * box_loss_scale * (1 - ciou)
        conf = (
            object_mask * _sce(feats[..., 4:5], object_mask)
            + (1 - object_mask) * _sce(feats[..., 4:5], object_mask) * ignore_mask
        )
        cls = object_mask * _sce(feats[..., 5:], true_class_probs)
        num_pos = num_pos + torch.clamp(object_mask.sum(), min=1)
        loss = loss + ciou_loss.sum() + conf.sum() + cls.sum()
    return loss / num_pos if normalize else loss / m
