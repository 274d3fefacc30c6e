"""Loop port of ultralytics/yolov5 ``utils/loss.py`` ``ComputeLoss`` (v7.0, ``autobalance=False``):
``build_targets`` and ``__call__`` one match at a time, with ``FocalLoss`` and ``utils/metrics.py``
``bbox_iou(xywh=True, CIoU=True)`` (v7.0, and the v6.x form with ``v6=True``), written independently
of detloss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def yolo_bbox_ciou(box1, box2, eps=1e-7, v6=False):
    """utils/metrics.py bbox_iou(xywh=True, CIoU=True); ``v6``: the v6.x form (h + eps).

    Not yolov8.naive_ciou: the same v7.0 formula (+ eps on the union and c², α without gradient) on
    cxcywh input with the given w, h (naive_ciou takes xyxy and recomputes them), so the two round
    differently; nor yolov4.ref_box_ciou (max(·, eps) clamps)."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
    b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    if v6:
        w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
        w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    inter = (torch.minimum(b1_x2, b2_x2) - torch.maximum(b1_x1, b2_x1)).clamp(0) * (
        torch.minimum(b1_y2, b2_y2) - torch.maximum(b1_y1, b2_y1)
    ).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.maximum(b1_x2, b2_x2) - torch.minimum(b1_x1, b2_x1)
    ch = torch.maximum(b1_y2, b2_y2) - torch.minimum(b1_y1, b2_y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return (iou - (rho2 / c2 + v * alpha)).squeeze(-1)


def focal(loss_fcn_none, pred, true, gamma, alpha=0.25):
    """utils/loss.py FocalLoss with reduction 'mean'."""
    loss = loss_fcn_none(pred, true)
    p = torch.sigmoid(pred)
    p_t = true * p + (1 - true) * (1 - p)
    alpha_factor = true * alpha + (1 - true) * (1 - alpha)
    return (loss * alpha_factor * (1.0 - p_t) ** gamma).mean()


def reference_loss(preds, targets, nc, anchors_px, strides, hyp, balance=None):
    """Loop port of ComputeLoss.__call__ + build_targets: matches produced in the original's order
    (offset group → anchor → target in batch order), objectness written one by one (last wins)."""
    na = len(anchors_px[0])
    nl = len(strides)
    balance = balance or ([4.0, 1.0, 0.4] if nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02][:nl])
    g = 0.5
    offsets = [(0, 0), (1, 0), (0, 1), (-1, 0), (0, -1)]
    flat = []  # (image, class, cx, cy, w, h) in pixels, batch order
    for i, t in enumerate(targets):
        for box, lab in zip(t["boxes"].tolist(), t["labels"].tolist(), strict=True):
            x1, y1, x2, y2 = box
            flat.append((i, lab, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1))

    def bce(x, y, pw):
        def none(a, b):
            return F.binary_cross_entropy_with_logits(
                a, b, pos_weight=torch.tensor([pw], dtype=a.dtype), reduction="none"
            )

        if hyp["fl_gamma"] > 0:
            return focal(none, x, y, hyp["fl_gamma"])
        return none(x, y).mean()

    cp, cn = 1.0 - 0.5 * hyp["label_smoothing"], 0.5 * hyp["label_smoothing"]
    lbox = lobj = lcls = torch.zeros((), dtype=preds[0].dtype)
    bs = len(targets)
    for i, (p, s) in enumerate(zip(preds, strides, strict=True)):
        _, _, h, w = p.shape
        pi = p.view(bs, na, 5 + nc, h, w).permute(0, 1, 3, 4, 2)
        matches = []
        for o, (ox, oy) in enumerate(offsets):
            for a in range(na):
                aw, ah = anchors_px[i][a][0] / s, anchors_px[i][a][1] / s
                for b, c, cx, cy, bw, bh in flat:
                    gx, gy, gw, gh = cx / s, cy / s, bw / s, bh / s
                    rw, rh = gw / aw, gh / ah
                    if not max(rw, 1 / rw, rh, 1 / rh) < hyp["anchor_t"]:
                        continue
                    gxi, gyi = w - gx, h - gy
                    cond = [
                        True,
                        gx % 1 < g and gx > 1,
                        gy % 1 < g and gy > 1,
                        gxi % 1 < g and gxi > 1,
                        gyi % 1 < g and gyi > 1,
                    ][o]
                    if not cond:
                        continue
                    ci, cj = int(gx - ox * g), int(gy - oy * g)  # int() truncates like .long()
                    matches.append(
                        (
                            b,
                            a,
                            min(max(cj, 0), h - 1),
                            min(max(ci, 0), w - 1),
                            (gx - ci, gy - cj, gw, gh),
                            (aw, ah),
                            c,
                        )
                    )
        tobj = torch.zeros(pi.shape[:4], dtype=p.dtype)
        if matches:
            ps = torch.stack([pi[b, a, j, k] for b, a, j, k, *_ in matches])
            pxy = ps[:, :2].sigmoid() * 2 - 0.5
            pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * torch.tensor([m[5] for m in matches], dtype=p.dtype)
            tbox = torch.tensor([m[4] for m in matches], dtype=p.dtype)
            iou = yolo_bbox_ciou(torch.cat((pxy, pwh), 1), tbox)
            lbox = lbox + (1.0 - iou).mean()
            score = iou.detach().clamp(0)
            score = (1.0 - hyp["gr"]) + hyp["gr"] * score
            for (b, a, j, k, *_), sc in zip(matches, score, strict=True):
                tobj[b, a, j, k] = sc
            if nc > 1:
                t = torch.full_like(ps[:, 5:], cn)
                for r, m in enumerate(matches):
                    t[r, m[6]] = cp
                lcls = lcls + bce(ps[:, 5:], t, hyp["cls_pw"])
        lobj = lobj + bce(pi[..., 4], tobj, hyp["obj_pw"]) * balance[i]
    lbox, lobj, lcls = lbox * hyp["box"], lobj * hyp["obj"], lcls * hyp["cls"]
    return (lbox + lobj + lcls) * bs, (lbox, lobj, lcls)


# the hyperparameters reference_loss reads (ComputeLoss's hyp keys and the model's gr) at the
# values the tests and benchmarks start from
HYP = dict(
    box=0.05,
    obj=1.0,
    cls=0.5,
    cls_pw=1.0,
    obj_pw=1.0,
    anchor_t=4.0,
    fl_gamma=0.0,
    label_smoothing=0.0,
    gr=1.0,
)
