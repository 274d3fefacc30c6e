"""Naive per-image, per-box loop port of ultralytics' ``v8DetectionLoss`` (8.4.190), written from the
TOOD (task-aligned assigner) and GFL (distribution focal loss) papers and the original's decisions
listed in docs/yolov8.md ("Formulas"): candidates strictly inside the box widened to ``min_side``,
top-k by α/β alignment metric, contested anchors to the box of highest CIoU (first on ties), scores
normalised by each box's max CIoU / max metric, DFL targets clamped to ``reg_max − 1.01``. Loops over
images, boxes and positive anchors; nothing from detloss.

Also the one-to-one branch of ultralytics' end-to-end loss (``E2ELoss``, utils/loss.py and utils/tal.py
of 8.4.190): ``topk2`` (after the contests each box keeps its ``topk2`` positives of largest alignment,
when ``topk2 != topk``; the scores are normalised over those) and ``reg_max = 1`` (the box channels are
the raw ltrb distances in grid units; the regression term is the L1 of prediction and unclamped target
distances × stride, left/right over the input width and top/bottom over its height, averaged over the
sides and weighted by the target score, under the ``dfl`` gain, named l1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

D = torch.float64


def naive_ciou(b1, b2, eps=1e-7):
    """CIoU of xyxy boxes (..., 4): IoU − ρ²/c² − α·v, α without gradient (CIoU paper; YOLO eps).

    Same formula as yolov5.yolo_bbox_ciou (v7.0) but on xyxy boxes, widths and heights taken from the
    corners, so it rounds differently; kept apart on purpose."""
    x1, y1, x2, y2 = b1.unbind(-1)
    u1, v1, u2, v2 = b2.unbind(-1)
    w1, h1, w2, h2 = x2 - x1, y2 - y1, u2 - u1, v2 - v1
    inter = (torch.minimum(x2, u2) - torch.maximum(x1, u1)).clamp(0) * (
        torch.minimum(y2, v2) - torch.maximum(y1, v1)
    ).clamp(0)
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    c2 = (torch.maximum(x2, u2) - torch.minimum(x1, u1)) ** 2 + (
        torch.maximum(y2, v2) - torch.minimum(y1, v1)
    ) ** 2
    rho2 = ((u1 + u2 - x1 - x2) ** 2 + (v1 + v2 - y1 - y2) ** 2) / 4
    v = 4 / math.pi**2 * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + 1 + eps)
    return iou - rho2 / (c2 + eps) - alpha * v


def aligned_positives(
    u: torch.Tensor, metric: torch.Tensor, cand: torch.Tensor, k: int, topk: int, topk2: int | None
) -> tuple[list[int], torch.Tensor, dict[int, float]]:
    """The task-aligned assignment's last steps for one image, loop by loop, from the box × anchor
    similarity ``u``, alignment ``metric`` and candidate mask ``cand`` ``(M, A)``: the top-k anchors
    of each box (over all anchors; torch.topk's order on ties, as the original), kept when they are
    candidates; an anchor taken by several boxes goes to the box of highest u (first on ties); with
    ``topk2`` (≠ topk) each box keeps its topk2 positives of largest alignment; each positive's
    target score = t · max u / (max t + 1e-9) over its box's positives. Returns the positive
    anchors, each anchor's box (−1: background) and the scores."""
    m, n_anchor = u.shape
    selected = torch.zeros(m, n_anchor, dtype=torch.bool)
    for j in range(m):
        for a in metric[j].topk(k).indices.tolist():
            selected[j, a] = bool(cand[j, a])
    owner = torch.full((n_anchor,), -1)
    for a in range(n_anchor):
        boxes_of_a = selected[:, a].nonzero().flatten().tolist()
        if len(boxes_of_a) == 1:
            owner[a] = boxes_of_a[0]
        elif len(boxes_of_a) > 1:  # the box of highest u over all boxes, first on ties
            best = 0
            for j in range(m):
                if u[j, a] > u[best, a]:
                    best = j
            owner[a] = best
    positives = [a for a in range(n_anchor) if owner[a] >= 0]
    if topk2 is not None and topk2 != topk:
        kept = []
        for j in range(m):
            mine = [a for a in positives if owner[a] == j]
            mine.sort(key=lambda a: (-float(metric[j, a]), a))
            kept += mine[:topk2]
        positives = sorted(kept)
    max_u = {j: 0.0 for j in range(m)}
    max_t = {j: 0.0 for j in range(m)}
    for a in positives:
        j = int(owner[a])
        max_u[j] = max(max_u[j], float(u[j, a]))
        max_t[j] = max(max_t[j], float(metric[j, a]))
    scores = {a: float(metric[owner[a], a]) * max_u[int(owner[a])] / (max_t[int(owner[a])] + 1e-9)
              for a in positives}
    return positives, owner, scores


def naive_loss(
    preds,
    targets,
    nc,
    strides,
    reg_max,
    topk=10,
    alpha=0.5,
    beta=6.0,
    gains=(7.5, 0.5, 1.5),
    min_side=None,
    topk2=None,
):
    if min_side is None:
        min_side = strides[1] if len(strides) > 1 else strides[0]
    r = reg_max
    # anchors: cell centres, scale after scale, row-major
    pts, st = [], []
    for p, s in zip(preds, strides, strict=True):
        h, w = p.shape[2:]
        for y in range(h):
            for x in range(w):
                pts.append((x + 0.5, y + 0.5))
                st.append(s)
    pts, st = torch.tensor(pts, dtype=D), torch.tensor(st, dtype=D)[:, None]
    h_img, w_img = preds[0].shape[2] * strides[0], preds[0].shape[3] * strides[0]
    flat = torch.cat([p.flatten(2) for p in preds], 2).transpose(1, 2)  # (B, A, no)
    n_anchor = pts.shape[0]
    k = min(topk, n_anchor)
    box_sum = cls_sum = dfl_sum = score_sum = 0.0
    for b, t in enumerate(targets):
        dist_logits, cls_logits = flat[b, :, : 4 * r].reshape(-1, 4, r), flat[b, :, 4 * r :]
        if r == 1:  # the raw distances
            dist = dist_logits[..., 0]
        else:
            dist = dist_logits.softmax(-1) @ torch.arange(r, dtype=D)
        pred = torch.cat((pts - dist[:, :2], pts + dist[:, 2:]), 1)  # grid units
        pred_px = (pred * st).detach()
        prob = cls_logits.detach().sigmoid()
        boxes, labels = t["boxes"].to(D), t["labels"]
        m = len(boxes)
        u = torch.zeros(m, n_anchor, dtype=D)
        metric = torch.zeros(m, n_anchor, dtype=D)
        cand = torch.zeros(m, n_anchor, dtype=torch.bool)
        for j in range(m):
            x1, y1, x2, y2 = boxes[j].tolist()
            cx, cy, bw, bh = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, min_side), max(y2 - y1, min_side)
            lo_x, hi_x, lo_y, hi_y = cx - bw / 2, cx + bw / 2, cy - bh / 2, cy + bh / 2
            px, py = pts[:, 0] * st[:, 0], pts[:, 1] * st[:, 0]
            cand[j] = (px - lo_x > 1e-9) & (py - lo_y > 1e-9) & (hi_x - px > 1e-9) & (hi_y - py > 1e-9)
            c = naive_ciou(boxes[j].expand(n_anchor, 4), pred_px).clamp(min=0)
            u[j] = torch.where(cand[j], c, 0.0)
            metric[j] = torch.where(cand[j], prob[:, labels[j]] ** alpha * u[j] ** beta, 0.0)
        positives, owner, scores = aligned_positives(u, metric, cand, k, topk, topk2)
        target = torch.zeros(n_anchor, nc, dtype=D)
        for a in positives:
            j = int(owner[a])
            score = scores[a]
            target[a, labels[j]] = score
            score_sum += score
            gt = boxes[j] / st[a]
            box_sum = box_sum + (1 - naive_ciou(pred[a], gt)) * score
            ltrb = torch.cat((pts[a] - gt[:2], gt[2:] - pts[a]))
            side = 0.0
            if r == 1:
                size = (w_img, h_img, w_img, h_img)
                for s in range(4):
                    side = side + abs(dist[a, s] * st[a, 0] / size[s] - ltrb[s] * st[a, 0] / size[s])
            else:
                ltrb = ltrb.clamp(0, r - 1.01)
                logp = dist_logits[a].log_softmax(-1)
                for s in range(4):
                    i = int(math.floor(float(ltrb[s])))
                    side = side - ((i + 1 - ltrb[s]) * logp[s, i] + (ltrb[s] - i) * logp[s, i + 1])
            dfl_sum = dfl_sum + side / 4 * score
        cls_sum = cls_sum + F.binary_cross_entropy_with_logits(cls_logits, target, reduction="sum")
    norm = max(score_sum, 1.0)
    parts = {
        "box": box_sum / norm * gains[0],
        "cls": cls_sum / norm * gains[1],
        "l1" if r == 1 else "dfl": dfl_sum / norm * gains[2],
    }
    return sum(parts.values()) * len(targets), parts
