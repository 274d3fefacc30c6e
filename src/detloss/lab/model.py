"""A tiny YOLO-style detector and the inference half: batched greedy NMS in plain torch.

The network is the same for every criterion: a strided conv backbone, a top-down feature path,
and one 1×1 head per scale with ``A·(5 + C)`` channels. YOLO criteria read the channels as
(tx, ty, tw, th, obj, cls…) per anchor; SSD reads the same ``A·(4 + (C + 1))`` channels as
(loc×4, conf×(C + 1)) per prior, so only the interpretation differs. The anchor-free YOLOv8 head
asks for ``4·reg_max + C`` channels per scale instead (``head_channels``). End-to-end YOLO (YOLO26) adds
a second, one-to-one copy of the heads (``one2one``) whose detections need no NMS
(:func:`select_topk`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..iou import iou_xyxy
from ..rotated import rotated_bbox_iou


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class TinyDetector(nn.Module):
    """Input ``(B, 3, S, S)`` → one raw head output ``(B, A·(5+C), S/s, S/s)`` per stride s in (8, 16, 32)
    (``head_channels`` channels instead of ``A·(5+C)`` when given).

    With ``one2one`` the forward returns ``{"one2many": outputs, "one2one": outputs}``: the second set
    comes from a copy of the heads applied to detached features, as ultralytics' end-to-end head does,
    so the one-to-one loss trains its own heads without pulling the shared features away from the
    one-to-many assignment.
    """

    def __init__(
        self,
        num_classes: int,
        num_anchors: int = 3,
        width: int = 32,
        head_channels: int | None = None,
        one2one: bool = False,
    ) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(_conv(3, w // 2, 2), _conv(w // 2, w, 2), _conv(w, w))  # stride 4
        self.down3 = nn.Sequential(_conv(w, 2 * w, 2), _conv(2 * w, 2 * w))  # stride 8
        self.down4 = nn.Sequential(_conv(2 * w, 3 * w, 2), _conv(3 * w, 3 * w))  # stride 16
        self.down5 = nn.Sequential(_conv(3 * w, 4 * w, 2), _conv(4 * w, 4 * w))  # stride 32
        self.lat4 = nn.Conv2d(4 * w, 3 * w, 1)
        self.lat3 = nn.Conv2d(3 * w, 2 * w, 1)
        self.smooth4 = _conv(3 * w, 3 * w)
        self.smooth3 = _conv(2 * w, 2 * w)
        out = num_anchors * (5 + num_classes) if head_channels is None else head_channels
        self.heads = nn.ModuleList(nn.Conv2d(c, out, 1) for c in (2 * w, 3 * w, 4 * w))
        self.heads_o2o = copy.deepcopy(self.heads) if one2one else None

    @torch.no_grad()
    def init_box_bias(self, value: float, channels: int = 4) -> None:
        """Set the bias of the first ``channels`` output channels of every head (the one-to-one copy
        too) to ``value``: the raw box distances of a ``reg_max = 1`` head then start at ``value``
        cells (ultralytics' ``Detect.bias_init`` uses 2)."""
        for heads in (self.heads, self.heads_o2o):
            for conv in heads or ():
                conv.bias[:channels] = value

    def forward(self, x: Tensor) -> list[Tensor] | dict[str, list[Tensor]]:
        c3 = self.down3(self.stem(x))
        c4 = self.down4(c3)
        p5 = self.down5(c4)
        p4 = self.smooth4(c4 + F.interpolate(self.lat4(p5), size=c4.shape[-2:], mode="nearest"))
        p3 = self.smooth3(c3 + F.interpolate(self.lat3(p4), size=c3.shape[-2:], mode="nearest"))
        feats = (p3, p4, p5)
        many = [head(p) for head, p in zip(self.heads, feats, strict=True)]
        if self.heads_o2o is None:
            return many
        one = [head(p.detach()) for head, p in zip(self.heads_o2o, feats, strict=True)]
        return {"one2many": many, "one2one": one}


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Greedy per-class NMS for a batch of candidate lists, as a keep mask.

    Args:
        boxes: ``(B, K, 4)`` xyxy; scores ``(B, K)``, sorted descending per image (invalid slots may
            carry score −inf); labels ``(B, K)`` int64.
        iou_threshold: a box is dropped when a kept, higher-scored box of its class overlaps it more.

    Returns:
        ``(B, K)`` bool keep mask.

    Greedy NMS is the fixed point of ``keep[j] = not any(keep[i] and iou[i, j] > t for i < j)``.
    Iterating that map from all-True settles one more leading position per round (position j only
    reads positions before it), so at most K rounds give the exact greedy answer, usually a handful;
    each round is one batched matrix product instead of a Python loop over boxes.
    """
    iou = iou_xyxy(boxes[:, :, None, :], boxes[:, None, :, :], "iou")  # (B, K, K)
    return nms_from_iou(iou, scores, labels, iou_threshold)


def nms_from_iou(iou: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """:func:`batched_nms` on a given pairwise IoU ``(B, K, K)`` (any box kind): the ``(B, K)`` keep mask."""
    k = iou.shape[1]
    earlier = torch.ones(k, k, dtype=torch.bool, device=iou.device).triu(1)  # i < j
    same = labels[:, :, None] == labels[:, None, :]
    suppressor = ((iou > iou_threshold) & same & earlier).to(iou.dtype)  # (B, i, j)
    valid = torch.isfinite(scores)
    keep = valid.clone()
    for _ in range(k):
        hit = torch.einsum("bi,bij->bj", keep.to(iou.dtype), suppressor) > 0
        new = valid & ~hit
        if torch.equal(new, keep):
            break
        keep = new
    return keep


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    conf_threshold: float = 0.001,
    iou_threshold: float = 0.5,
    pre_nms: int = 300,
    max_det: int = 100,
) -> list[dict[str, Tensor]]:
    """Per image: best class per box, confidence filter, top ``pre_nms``, class-wise NMS, top ``max_det``.

    Args:
        boxes: ``(B, N, 4)`` xyxy pixels; scores ``(B, N, C)`` per-class probabilities.
    Returns:
        B dicts ``{"boxes": (n, 4), "scores": (n,), "labels": (n,)}``, n ≤ max_det.
    """
    best, labels = scores.max(-1)  # (B, N)
    best = torch.where(best >= conf_threshold, best, torch.full_like(best, -torch.inf))
    top = best.topk(min(pre_nms, best.shape[1]), dim=1)  # sorted descending
    cand_boxes = boxes.gather(1, top.indices[..., None].expand(-1, -1, 4))
    cand_labels = labels.gather(1, top.indices)
    keep = batched_nms(cand_boxes, top.values, cand_labels, iou_threshold)
    out = []
    for b in range(boxes.shape[0]):  # ragged results: one small slice per image
        m = keep[b]
        out.append(
            {
                "boxes": cand_boxes[b][m][:max_det],
                "scores": top.values[b][m][:max_det],
                "labels": cand_labels[b][m][:max_det],
            }
        )
    return out


def select_topk(boxes: Tensor, scores: Tensor, max_det: int = 100) -> list[dict[str, Tensor]]:
    """NMS-free selection for one-to-one heads: per image the ``max_det`` best (box, class) pairs.

    Every (anchor, class) score competes, as in ultralytics' end-to-end post-processing, so one box may
    appear with two classes; nothing is suppressed, since a one-to-one head is trained to give each
    object a single confident anchor.

    Args:
        boxes: ``(B, N, 4)`` xyxy pixels; scores ``(B, N, C)`` per-class probabilities.
    Returns:
        B dicts ``{"boxes": (k, 4), "scores": (k,), "labels": (k,)}``, k = min(max_det, N·C), scores
        descending.
    """
    b, n, c = scores.shape
    top = scores.reshape(b, n * c).topk(min(max_det, n * c), dim=1)  # sorted descending
    anchor, labels = top.indices // c, top.indices % c
    picked = boxes.gather(1, anchor[..., None].expand(-1, -1, 4))
    return [{"boxes": picked[i], "scores": top.values[i], "labels": labels[i]} for i in range(b)]


def select_rotated(
    boxes: Tensor,
    scores: Tensor,
    conf_threshold: float = 0.001,
    iou_threshold: float = 0.5,
    pre_nms: int = 100,
    max_det: int = 100,
    chunk: int = 8,
) -> list[dict[str, Tensor]]:
    """:func:`select_detections` for oriented boxes: ``boxes (B, N, 5)`` xywhr, NMS on the exact rotated
    IoU (:func:`detloss.rotated_bbox_iou` ``kind="iou"``).

    The exact IoU holds 24 candidate vertices per pair (about 0.5 KB in float32), so the ``K × K``
    matrices are built ``chunk`` images at a time, and ``pre_nms`` is 100 rather than 300.
    """
    best, labels = scores.max(-1)
    best = torch.where(best >= conf_threshold, best, torch.full_like(best, -torch.inf))
    top = best.topk(min(pre_nms, best.shape[1]), dim=1)
    cand = boxes.gather(1, top.indices[..., None].expand(-1, -1, 5))
    cand_labels = labels.gather(1, top.indices)
    iou = torch.cat(
        [
            rotated_bbox_iou(c[:, :, None, :], c[:, None, :, :], kind="iou", validate=False)
            for c in cand.split(chunk)
        ]
    )
    keep = nms_from_iou(iou, top.values, cand_labels, iou_threshold)
    return [
        {
            "boxes": cand[b][keep[b]][:max_det],
            "scores": top.values[b][keep[b]][:max_det],
            "labels": cand_labels[b][keep[b]][:max_det],
        }
        for b in range(boxes.shape[0])  # ragged results: one small slice per image
    ]
