"""Per-image, per-prior, per-box loop port of SSD.TensorFlow: ``train_ssd.py`` ``ssd_model_fn`` (hard
negative mining, smooth L1, the normalisations) and ``utility/anchor_manipulator.py``
(``AnchorEncoder``, ``do_dual_max_match`` with ``gt_max_first=True``), written without detloss.
``normalize="positives"`` is the SSD paper's 1/N.
"""

from __future__ import annotations

import math

import torch


def ref_iou(a, b):
    # xyxy lists, 0 for an empty union
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return 0.0 if union == 0 else inter / union


def argmax_first(values):
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def ref_match(boxes, priors_xyxy, thr, ignore):
    """do_dual_max_match(gt_max_first=True) for one image: list of box index / −1 / −2."""
    m, p = len(boxes), len(priors_xyxy)
    if m == 0:
        return [-1] * p
    iou = [[ref_iou(boxes[j], priors_xyxy[q]) for q in range(p)] for j in range(m)]
    low = thr if ignore is None else ignore
    matched = []
    for q in range(p):
        col = [iou[j][q] for j in range(m)]
        best = argmax_first(col)
        matched.append(best if col[best] >= thr else (-2 if col[best] >= low else -1))
    forcers = {}
    for j in range(m):
        forcers.setdefault(argmax_first(iou[j]), []).append(j)
    for q, js in forcers.items():
        matched[q] = argmax_first([iou[j][q] if j in js else 0.0 for j in range(m)])
    return matched


def ref_loss(
    loc,
    conf,
    targets,
    priors,
    thr=0.5,
    ratio=3,
    sigma=1.0,
    ignore=None,
    var=(0.1, 0.1, 0.2, 0.2),
    normalize="mean",
    count_ignored_as_positive=False,
):
    """(conf, loc, per-image shares of conf + loc): each image's sums over the batch's counts."""
    pri = priors.tolist()
    pri_xyxy = [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2] for cx, cy, w, h in pri]
    ce_sum, n_kept, sl1_sum, n_pos = 0.0, 0, 0.0, 0
    ce_img, sl1_img = [0.0] * len(targets), [0.0] * len(targets)
    for i, t in enumerate(targets):
        boxes, labels = t["boxes"].tolist(), t["labels"].tolist()
        matched = ref_match(boxes, pri_xyxy, thr, ignore)
        pos = [q for q, j in enumerate(matched) if j >= 0]
        neg = [q for q, j in enumerate(matched) if j == -1]
        bg = torch.softmax(conf[i].detach(), -1)[:, 0].tolist()
        counted = len(pos) + (matched.count(-2) if count_ignored_as_positive else 0)
        k = min(int(ratio * counted), len(neg))
        kept_neg = sorted(neg, key=lambda q: (bg[q], q))[:k]
        for q in pos + kept_neg:
            c = labels[matched[q]] + 1 if matched[q] >= 0 else 0
            ce = torch.logsumexp(conf[i, q], 0) - conf[i, q, c]
            ce_sum, ce_img[i] = ce_sum + ce, ce_img[i] + ce
            n_kept += 1
        for q in pos:
            x1, y1, x2, y2 = boxes[matched[q]]
            gcx, gcy, gw, gh = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
            pcx, pcy, pw, ph = pri[q]
            tgt = [
                (gcx - pcx) / pw / var[0],
                (gcy - pcy) / ph / var[1],
                math.log(gw / pw) / var[2],
                math.log(gh / ph) / var[3],
            ]
            for c in range(4):
                d = loc[i, q, c] - tgt[c]
                s2 = sigma * sigma
                sl1 = 0.5 * s2 * d * d if abs(d.item()) < 1 / s2 else d.abs() - 0.5 / s2
                sl1_sum, sl1_img[i] = sl1_sum + sl1, sl1_img[i] + sl1
            n_pos += 1
    zero = loc.sum() * 0
    if normalize == "positives":
        n = max(n_pos, 1)
        shares = [zero + (c + s) / n for c, s in zip(ce_img, sl1_img, strict=True)]
        return zero + ce_sum / n, zero + sl1_sum / n, shares
    conf_loss = zero + (ce_sum / n_kept * (ratio + 1) if n_kept else 0.0)
    loc_loss = zero + (sl1_sum / n_pos if n_pos else 0.0)
    shares = [
        zero + (c / n_kept * (ratio + 1) if n_kept else 0.0) + (s / n_pos if n_pos else 0.0)
        for c, s in zip(ce_img, sl1_img, strict=True)
    ]
    return conf_loss, loc_loss, shares
