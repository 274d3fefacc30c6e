"""Loop port of tensorflow-yolov3 (YunYang1994): the label builder of ``core/dataset.py``
(``preprocess_true_boxes``) and the loss of ``core/yolov3.py`` (``loss_layer`` / ``compute_loss``),
one box at a time in NumPy float64, written without detloss.

``ref_labels(..., clip_bug=True)`` follows the repository's last commit, which clips the fallback cell
with the last scale's grid size (``train_output_sizes[i]`` with ``i`` left at 2 by the loop); the
default is the behaviour before that commit. ``ref_loss`` returns the (GIoU, confidence, class) sums,
each averaged over the batch, as the original's ``compute_loss``.
"""

from __future__ import annotations

import numpy as np
import torch

from tests.reference.tf import iou_xywh as _ref_iou
from tests.reference.tf import sigmoid_cross_entropy_with_logits as _sce

# the original's COCO anchors in pixels, three per scale (strides 8, 16, 32)
COCO = np.array(
    [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90], [156, 198], [373, 326]],
    dtype=np.float64,
).reshape(3, 3, 2)


def _ref_iou_xywh(b1, b2, eps):
    # the label builder's NumPy IoU (core/dataset.py), with eps; the loss's ignore-mask IoU has none
    a1, a2 = b1[..., 2] * b1[..., 3], b2[..., 2] * b2[..., 3]
    lu = np.maximum(b1[..., :2] - b1[..., 2:] * 0.5, b2[..., :2] - b2[..., 2:] * 0.5)
    rd = np.minimum(b1[..., :2] + b1[..., 2:] * 0.5, b2[..., :2] + b2[..., 2:] * 0.5)
    inter = np.maximum(rd - lu, 0.0)
    inter = inter[..., 0] * inter[..., 1]
    return inter / (a1 + a2 - inter + eps)


def ref_labels(bboxes, classes, strides, sizes, num_classes, anchors_px, max_bbox=150, clip_bug=False):
    strides = np.asarray(strides, dtype=np.float64)
    anchors = anchors_px / strides[:, None, None]
    label = [np.zeros((sizes[i], sizes[i], 3, 5 + num_classes)) for i in range(3)]
    bboxes_xywh = [np.zeros((max_bbox, 4)) for _ in range(3)]
    bbox_count = np.zeros((3,))
    for bbox_coor, cls in zip(bboxes, classes, strict=True):
        onehot = np.zeros(num_classes)
        onehot[cls] = 1.0
        smooth = onehot * (1 - 0.01) + 0.01 * np.full(num_classes, 1.0 / num_classes)
        xywh = np.concatenate([(bbox_coor[2:] + bbox_coor[:2]) * 0.5, bbox_coor[2:] - bbox_coor[:2]])
        scaled = 1.0 * xywh[np.newaxis, :] / strides[:, np.newaxis]
        ious, exist = [], False
        for i in range(3):
            anc = np.zeros((3, 4))
            anc[:, 0:2] = np.floor(scaled[i, 0:2]).astype(np.int32) + 0.5
            anc[:, 2:4] = anchors[i]
            iou_scale = _ref_iou_xywh(scaled[i][np.newaxis, :], anc, 1e-6)
            ious.append(iou_scale)
            iou_mask = iou_scale > 0.3
            if np.any(iou_mask):
                xind, yind = np.floor(scaled[i, 0:2]).astype(np.int32)
                label[i][yind, xind, iou_mask, :] = 0
                label[i][yind, xind, iou_mask, 0:4] = xywh
                label[i][yind, xind, iou_mask, 4:5] = 1.0
                label[i][yind, xind, iou_mask, 5:] = smooth
                bboxes_xywh[i][int(bbox_count[i] % max_bbox), :4] = xywh
                bbox_count[i] += 1
                exist = True
        if not exist:
            best = int(np.argmax(np.array(ious).reshape(-1), axis=-1))
            det, anc_i = best // 3, best % 3
            xind, yind = np.floor(scaled[det, 0:2]).astype(np.int32)
            if clip_bug:  # the last commit clips with train_output_sizes[i], i = 2 after the loop
                xind, yind = np.clip(xind, 0, sizes[i] - 1), np.clip(yind, 0, sizes[i] - 1)
            label[det][yind, xind, anc_i, :] = 0
            label[det][yind, xind, anc_i, 0:4] = xywh
            label[det][yind, xind, anc_i, 4:5] = 1.0
            label[det][yind, xind, anc_i, 5:] = smooth
            bboxes_xywh[det][int(bbox_count[det] % max_bbox), :4] = xywh
            bbox_count[det] += 1
    return label, bboxes_xywh


def _ref_giou(b1, b2):
    b1 = torch.cat([b1[..., :2] - b1[..., 2:] * 0.5, b1[..., :2] + b1[..., 2:] * 0.5], -1)
    b2 = torch.cat([b2[..., :2] - b2[..., 2:] * 0.5, b2[..., :2] + b2[..., 2:] * 0.5], -1)
    b1 = torch.cat([torch.minimum(b1[..., :2], b1[..., 2:]), torch.maximum(b1[..., :2], b1[..., 2:])], -1)
    b2 = torch.cat([torch.minimum(b2[..., :2], b2[..., 2:]), torch.maximum(b2[..., :2], b2[..., 2:])], -1)
    a1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    a2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    inter = torch.clamp(
        torch.minimum(b1[..., 2:], b2[..., 2:]) - torch.maximum(b1[..., :2], b2[..., :2]), min=0
    )
    inter = inter[..., 0] * inter[..., 1]
    union = a1 + a2 - inter
    iou = inter / (union + 1e-6)
    enc = torch.clamp(
        torch.maximum(b1[..., 2:], b2[..., 2:]) - torch.minimum(b1[..., :2], b2[..., :2]), min=0
    )
    enc = enc[..., 0] * enc[..., 1]
    return iou - (enc - union) / (enc + 1e-6)


def ref_loss(preds, targets, num_classes, strides=(8, 16, 32), anchors_px=COCO, thresh=0.5, **kw):
    """The TF loss_layer over the three scales, labels from ref_labels (per image)."""
    b = preds[0].shape[0]
    sizes = [p.shape[2] for p in preds]
    per_image = [
        ref_labels(t["boxes"].numpy(), t["labels"].numpy(), strides, sizes, num_classes, anchors_px, **kw)
        for t in targets
    ]
    giou_l = conf_l = prob_l = 0.0
    for i, (conv, stride) in enumerate(zip(preds, strides, strict=True)):
        n = conv.shape[2]
        conv = conv.permute(0, 2, 3, 1).reshape(b, n, n, 3, 5 + num_classes)
        label = torch.as_tensor(np.stack([p[0][i] for p in per_image]))
        bboxes = torch.as_tensor(np.stack([p[1][i] for p in per_image]))
        y, x = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        grid = torch.stack([x, y], -1)[None, :, :, None, :].double()
        anchors = torch.as_tensor(anchors_px[i] / stride)
        pred_xy = (torch.sigmoid(conv[..., 0:2]) + grid) * stride
        pred_wh = (torch.exp(conv[..., 2:4]) * anchors) * stride
        pred_xywh = torch.cat([pred_xy, pred_wh], -1)
        pred_conf = torch.sigmoid(conv[..., 4:5])
        raw_conf, raw_prob = conv[..., 4:5], conv[..., 5:]
        label_xywh, respond, label_prob = label[..., 0:4], label[..., 4:5], label[..., 5:]
        input_size = stride * n
        giou = _ref_giou(pred_xywh, label_xywh)[..., None]
        scale = 2.0 - 1.0 * label_xywh[..., 2:3] * label_xywh[..., 3:4] / (input_size**2)
        giou_loss = respond * scale * (1 - giou)
        iou = _ref_iou(pred_xywh[:, :, :, :, None, :], bboxes[:, None, None, None, :, :])
        max_iou = iou.max(-1, keepdim=True).values
        bgd = (1.0 - respond) * (max_iou < thresh).double()
        focal = torch.abs(respond - pred_conf) ** 2
        conf_loss = focal * (respond * _sce(raw_conf, respond) + bgd * _sce(raw_conf, respond))
        prob_loss = respond * _sce(raw_prob, label_prob)
        giou_l = giou_l + giou_loss.sum((1, 2, 3, 4)).mean()
        conf_l = conf_l + conf_loss.sum((1, 2, 3, 4)).mean()
        prob_l = prob_l + prob_loss.sum((1, 2, 3, 4)).mean()
    return giou_l, conf_l, prob_l
