"""Naive per-image, per-box loop port of ultralytics' ``v8OBBLoss`` (8.4.190), written from the
documented behaviour (docs/obb.md "Formulas"): targets with a side below 2 px dropped; the rotated
task-aligned assigner (u = max(ProbIoU, 0) with floor 0 in pixels, candidates inside the rotated
rectangle after widening sides below ``min_side``, inclusive, by the projections on two edges; top-k,
contests to the box of highest u, with ``topk2`` each box's ``topk2`` positives of largest alignment
kept (the one-to-one branch of ``E2ELoss``), scores normalised per box); box loss 1 − ProbIoU with
floor 0.01 in grid units; DFL (or L1 with ``reg_max = 1``) on ltrb targets in the target's rotated
frame; the angle loss. ProbIoU here is the matrix form of Llerena et al. (covariances summed,
determinant D = A·B − C²), not detloss's frame-relative one. Loops over images, boxes and positive
anchors; nothing from detloss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tests.reference.yolov8 import aligned_positives

D = torch.float64


def naive_probiou(b1, b2, floor=0.0, eps=1e-7):
    """ProbIoU of xywhr boxes (..., 5), the matrix form: Σ = R·diag(w²/12 + floor, h²/12 + floor)·Rᵀ,
    Bhattacharyya distance from the summed covariances, 1 − Hellinger."""

    def cov(b):
        a, bb = b[..., 2] ** 2 / 12 + floor, b[..., 3] ** 2 / 12 + floor
        c, s = torch.cos(b[..., 4]), torch.sin(b[..., 4])
        return a * c * c + bb * s * s, a * s * s + bb * c * c, (a - bb) * c * s

    a1, b1_, c1 = cov(b1)
    a2, b2_, c2 = cov(b2)
    x1, y1, x2, y2 = b1[..., 0], b1[..., 1], b2[..., 0], b2[..., 1]
    sa, sb, sc = a1 + a2, b1_ + b2_, c1 + c2
    det = sa * sb - sc * sc
    t1 = (sa * (y1 - y2) ** 2 + sb * (x1 - x2) ** 2) / (det + eps) * 0.25
    t2 = (sc * (x2 - x1) * (y1 - y2)) / (det + eps) * 0.5
    det1 = (a1 * b1_ - c1 * c1).clamp(min=0)
    det2 = (a2 * b2_ - c2 * c2).clamp(min=0)
    t3 = torch.log(det / (4 * torch.sqrt(det1 * det2) + eps) + eps) * 0.5
    bd = (t1 + t2 + t3).clamp(eps, 100.0)
    return 1 - torch.sqrt(1 - torch.exp(-bd) + eps)


def naive_inside(points, box, min_side):
    """Anchors (A, 2) inside the rotated box (5,), sides below ``min_side`` widened, edges included:
    the anchor's offset from the centre, in the box's frame, within ± half the sides."""
    cx, cy, w, h, t = box.tolist()
    w, h = max(w, min_side), max(h, min_side)
    dx, dy = points[:, 0] - cx, points[:, 1] - cy
    along = dx * math.cos(t) + dy * math.sin(t)
    across = -dx * math.sin(t) + dy * math.cos(t)
    return (along.abs() <= w / 2) & (across.abs() <= h / 2)


def naive_obb_loss(
    preds,
    targets,
    nc,
    strides,
    reg_max,
    topk=10,
    alpha=0.5,
    beta=6.0,
    gains=(7.5, 0.5, 1.5, 1.0),
    min_side=None,
    min_size=2.0,
    topk2=None,
):
    if min_side is None:
        min_side = strides[1] if len(strides) > 1 else strides[0]
    r = reg_max
    pts, st = [], []
    for p, s in zip(preds, strides, strict=True):
        h, w = p.shape[2:]
        for y in range(h):
            for x in range(w):
                pts.append((x + 0.5, y + 0.5))
                st.append(s)
    pts, st = torch.tensor(pts, dtype=D), torch.tensor(st, dtype=D)[:, None]
    h_img, w_img = preds[0].shape[2] * strides[0], preds[0].shape[3] * strides[0]
    flat = torch.cat([p.flatten(2) for p in preds], 2).transpose(1, 2)  # (B, A, 4r + C + 1)
    n_anchor = pts.shape[0]
    k = min(topk, n_anchor)
    box_sum = cls_sum = reg_sum = ang_sum = score_sum = 0.0
    for b, t in enumerate(targets):
        dist_logits = flat[b, :, : 4 * r].reshape(-1, 4, r)
        cls_logits, theta = flat[b, :, 4 * r : 4 * r + nc], flat[b, :, 4 * r + nc]
        dist = dist_logits[..., 0] if r == 1 else dist_logits.softmax(-1) @ torch.arange(r, dtype=D)
        pred = []
        for a in range(n_anchor):  # the box in the anchor's rotated frame
            lft, top, rgt, bot = dist[a]
            xf, yf = (rgt - lft) / 2, (bot - top) / 2
            c, s = torch.cos(theta[a]), torch.sin(theta[a])
            cx, cy = pts[a, 0] + xf * c - yf * s, pts[a, 1] + xf * s + yf * c
            pred.append(torch.stack((cx, cy, lft + rgt, top + bot, theta[a])))
        pred = torch.stack(pred)  # (A, 5) grid units
        pred_px = torch.cat((pred[:, :4] * st, pred[:, 4:]), 1).detach()
        prob = cls_logits.detach().sigmoid()
        keep = [j for j in range(len(t["boxes"])) if min(t["boxes"][j, 2:4].tolist()) >= min_size]
        boxes, labels = t["boxes"].to(D)[keep], t["labels"][keep]
        m = len(boxes)
        u = torch.zeros(m, n_anchor, dtype=D)
        metric = torch.zeros(m, n_anchor, dtype=D)
        cand = torch.zeros(m, n_anchor, dtype=torch.bool)
        for j in range(m):
            cand[j] = naive_inside(pts * st, boxes[j], min_side)
            c = naive_probiou(boxes[j].expand(n_anchor, 5), pred_px).clamp(min=0)
            u[j] = torch.where(cand[j], c, 0.0)
            metric[j] = torch.where(cand[j], prob[:, labels[j]] ** alpha * u[j] ** beta, 0.0)
        positives, owner, scores = aligned_positives(u, metric, cand, k, topk, topk2)
        target = torch.zeros(n_anchor, nc, dtype=D)
        for a in positives:
            j = int(owner[a])
            score = scores[a]
            target[a, labels[j]] = score
            score_sum += score
            gt = torch.cat((boxes[j, :4] / st[a], boxes[j, 4:]))
            box_sum = box_sum + (1 - naive_probiou(pred[a], gt, floor=0.01)) * score
            # ltrb in the target's frame
            ox, oy = gt[0] - pts[a, 0], gt[1] - pts[a, 1]
            c, s = math.cos(float(gt[4])), math.sin(float(gt[4]))
            dx, dy = ox * c + oy * s, -ox * s + oy * c
            ltrb = torch.stack((gt[2] / 2 - dx, gt[3] / 2 - dy, gt[2] / 2 + dx, gt[3] / 2 + dy))
            side = 0.0
            if r == 1:
                size = (w_img, h_img, w_img, h_img)
                for q in range(4):
                    side = side + abs(dist[a, q] * st[a, 0] / size[q] - ltrb[q] * st[a, 0] / size[q])
            else:
                ltrb = ltrb.clamp(0, r - 1.01)
                logp = dist_logits[a].log_softmax(-1)
                for q in range(4):
                    i = int(math.floor(float(ltrb[q])))
                    side = side - ((i + 1 - ltrb[q]) * logp[q, i] + (ltrb[q] - i) * logp[q, i + 1])
            reg_sum = reg_sum + side / 4 * score
            delta = theta[a] - gt[4]
            delta = delta - round(float(delta) / math.pi) * math.pi
            ratio = math.log((float(gt[2]) + 1e-9) / (float(gt[3]) + 1e-9))
            ang_sum = ang_sum + torch.sin(2 * delta) ** 2 * math.exp(-(ratio**2) / 9) * score
        cls_sum = cls_sum + F.binary_cross_entropy_with_logits(cls_logits, target, reduction="sum")
    norm = max(score_sum, 1.0)
    parts = {
        "box": box_sum / norm * gains[0],
        "cls": cls_sum / norm * gains[1],
        "l1" if r == 1 else "dfl": reg_sum / norm * gains[2],
        "angle": ang_sum / norm * gains[3],
    }
    return sum(parts.values()) * len(targets), parts
