"""Plain per-layer, per-image, per-query loop port of the three DETR presets.

Written from the preset table of docs/detr.md (costs, class losses, normalisations, defaults of
facebookresearch/detr, fundamentalvision/Deformable-DETR and lyuwenyu/RT-DETR, as transformers' losses
compute them) with scalar formulas and scipy's solver on each image's cost block; it shares no code with
detloss. scipy is imported on the first call (the tests skip without it: detloss[detr]).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# preset → (class, bbox, giou) costs, (cls, bbox, giou) gains, focal alpha: the defaults of the original
# repositories (facebookresearch/detr, fundamentalvision/Deformable-DETR, lyuwenyu/RT-DETR), written
# here from docs/detr.md's preset table, not read from detloss
TABLE = {
    "detr": ((1.0, 5.0, 2.0), (1.0, 5.0, 2.0), None),
    "deformable": ((2.0, 5.0, 2.0), (2.0, 5.0, 2.0), 0.25),
    "rtdetr": ((2.0, 5.0, 2.0), (1.0, 5.0, 2.0), 0.75),
    "lwdetr": ((2.0, 5.0, 2.0), (1.0, 5.0, 2.0), 0.25),  # Atten4Vis/LW-DETR
    "deimv2": ((2.0, 5.0, 2.0), (1.0, 5.0, 2.0), 1.0),  # MAL's α: transformers' mal_alpha None
}


def corners(b):
    cx, cy, w, h = b
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def iou_and_giou(a, b):
    ax1, ay1, ax2, ay2 = corners(a)
    bx1, by1, bx2, by2 = corners(b)
    iw = max(min(ax2, bx2) - max(ax1, bx1), 0.0)
    ih = max(min(ay2, by2) - max(ay1, by1), 0.0)
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    enclose = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    iou = inter / union
    return iou, iou - (enclose - union) / enclose


def bce(x, t):
    """−(t·log σ(x) + (1 − t)·log(1 − σ(x))), written stably: tf.sigmoid_cross_entropy_with_logits'
    formula on Python floats (math), kept apart from that tensor version."""
    return max(x, 0.0) - x * t + math.log1p(math.exp(-abs(x)))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def entry_terms(
    preset,
    x_entry,
    p_entry,
    tgt,
    num_classes,
    n_norm,
    fixed=None,
    eos_coef=0.1,
    cost_alpha=0.25,
    cost_gamma=2.0,
    focal_gamma=2.0,
    group_detr=1,
    focal_alpha=None,
    matches=None,
    box_matches=None,
    box_norm=None,
):
    """One entry (a decoder layer, the encoder proposals or a denoising layer): ([cls, bbox, giou] with
    gains, per-image shares) as plain floats. ``fixed``: per image a dict query → target (denoising:
    no matching); else scipy's matching of each image's cost block. ``n_norm``: the box count
    normaliser of this entry (N, or N·G for denoising). ``group_detr`` G ("lwdetr"): queries
    [g·S, (g + 1)·S), S = Q // G, are matched to all of the image's targets for each g on its own, the
    box costs from the boxes rounded to float32 and summed in float32. ``box_matches``/``box_norm``
    (DEIMv2's union): per image a dict query → target and the normaliser of the box terms, in place
    of the entry's own matching and ``n_norm``."""
    from scipy.optimize import linear_sum_assignment  # detloss[detr]

    (cc, bc, gc), (cw, bw, gw), alpha = TABLE[preset]
    alpha = alpha if focal_alpha is None else focal_alpha
    batch, num_queries = len(x_entry), len(x_entry[0])
    cls_sum = ce_weight = l1_sum = giou_sum = 0.0
    cls_img, box_img = [0.0] * batch, [0.0] * batch  # box_img: bw·L1 + gw·(1 − GIoU), summed
    for image in range(batch):
        x, p = x_entry[image], p_entry[image]
        tb, lab = tgt[image]
        match = {}  # query → target
        if fixed is not None:
            match = fixed[image]
        elif lab and preset == "lwdetr":
            size = num_queries // group_detr
            for g in range(group_detr):
                cost = torch.zeros(size, len(lab), dtype=torch.float64)
                for r in range(size):
                    q = g * size + r
                    pf = [np.float32(v) for v in p[q]]
                    for j, c in enumerate(lab):
                        s = sigmoid(x[q][c])
                        pos = cost_alpha * (1 - s) ** cost_gamma * -math.log(s + 1e-8)
                        neg = (1 - cost_alpha) * s**cost_gamma * -math.log(1 - s + 1e-8)
                        tf = [np.float32(v) for v in tb[j]]
                        l1 = np.float32(0.0)
                        for k in range(4):
                            l1 = np.float32(l1 + abs(pf[k] - tf[k]))
                        cost[r, j] = bc * float(l1) + cc * (pos - neg) - gc * float(iou_and_giou(pf, tf)[1])
                rows, cols = linear_sum_assignment(cost.numpy())
                match.update({g * size + int(r): int(c) for r, c in zip(rows, cols, strict=True)})
        elif lab:
            cost = torch.zeros(num_queries, len(lab), dtype=torch.float64)
            for q in range(num_queries):
                if preset == "detr":
                    e = [math.exp(v - max(x[q])) for v in x[q]]
                    prob = [v / sum(e) for v in e]
                for j, c in enumerate(lab):
                    if preset == "detr":
                        c_cls = -prob[c]
                    else:
                        s = sigmoid(x[q][c])
                        pos = cost_alpha * (1 - s) ** cost_gamma * -math.log(s + 1e-8)
                        neg = (1 - cost_alpha) * s**cost_gamma * -math.log(1 - s + 1e-8)
                        c_cls = pos - neg
                    l1 = sum(abs(p[q][k] - tb[j][k]) for k in range(4))
                    cost[q, j] = bc * l1 + cc * c_cls - gc * iou_and_giou(p[q], tb[j])[1]
            rows, cols = linear_sum_assignment(cost.numpy())
            match = {int(r): int(c) for r, c in zip(rows, cols, strict=True)}
        if matches is not None:  # the caller reads each image's matching (D-FINE's local terms)
            matches.append(match)
        for q, j in (match if box_matches is None else box_matches[image]).items():
            l1 = sum(abs(p[q][k] - tb[j][k]) for k in range(4))
            g = 1 - iou_and_giou(p[q], tb[j])[1]
            l1_sum, giou_sum = l1_sum + l1, giou_sum + g
            box_img[image] += bw * l1 + gw * g
        for q in range(num_queries):
            j = match.get(q)
            if preset == "detr":
                t = lab[j] if j is not None else num_classes  # no-object last
                w = 1.0 if j is not None else eos_coef
                log_z = max(x[q]) + math.log(sum(math.exp(v - max(x[q])) for v in x[q]))
                cls_sum += w * (log_z - x[q][t])
                cls_img[image] += w * (log_z - x[q][t])
                ce_weight += w
                continue
            iou = iou_and_giou(p[q], tb[j])[0] if j is not None else 0.0
            for c in range(num_classes):
                t = 1.0 if (j is not None and lab[j] == c) else 0.0
                s = sigmoid(x[q][c])
                if preset == "deimv2":  # MAL: target IoU^γ, negatives weighted α·p^γ
                    term = bce(x[q][c], iou**focal_gamma) if t else alpha * s**focal_gamma * bce(x[q][c], 0.0)
                elif preset == "lwdetr":  # IA-BCE
                    if t:
                        quality = max(s**alpha * iou ** (1 - alpha), 0.01)
                        term = bce(x[q][c], quality)
                    else:
                        term = s**focal_gamma * bce(x[q][c], 0.0)
                elif preset == "deformable":
                    p_t = s * t + (1 - s) * (1 - t)
                    a_t = alpha * t + (1 - alpha) * (1 - t)
                    term = bce(x[q][c], t) * a_t * (1 - p_t) ** focal_gamma
                else:  # rtdetr: varifocal with the IoU as the positive's target
                    score = t * iou
                    weight = alpha * s**focal_gamma * (1 - t) + score
                    term = weight * bce(x[q][c], score)
                cls_sum += term
                cls_img[image] += term
    cls_norm = ce_weight if preset == "detr" else n_norm
    b_norm = n_norm if box_norm is None else box_norm
    terms = [cw * cls_sum / cls_norm, bw * l1_sum / b_norm, gw * giou_sum / b_norm]
    shares = [cw * cls_img[b] / cls_norm + box_img[b] / b_norm for b in range(batch)]
    return terms, shares


def loop_port(preset, logits, boxes, targets, num_classes, **kw):
    """(total, per-layer [cls, bbox, giou] with gains, per-image shares summed over the layers) as plain
    floats; the matching by scipy per block. An image's share: its queries' class loss and its targets'
    box losses, over the batch's normalisers."""
    total, entries, per_image = loop_port_entries(preset, logits, boxes, targets, num_classes, **kw)
    return total, list(entries.values()), per_image


def loop_port_entries(
    preset, logits, boxes, targets, num_classes, enc=None, dn=None, dn_positive_idx=None, dn_groups=1, **kw
):
    """The whole loss of a DETR-family training step: (total, {entry name: [cls, bbox, giou]}, per-image
    shares). Entries: decoder layers ``layer_i`` (``logits`` ``(L, B, Q, C′)``), ``enc`` (``enc`` =
    (logits ``(B, Q_e, C′)``, boxes), matched like a layer), ``dn_i`` (``dn`` = (logits
    ``(L_dn, B, Q_dn, C′)``, boxes)): contrastive denoising, no matching — element k of
    ``dn_positive_idx[b]`` is the query of target k mod n_b (group k // n_b), as transformers'
    ``get_cdn_matched_indices`` pairs ``dn_positive_idx[b]`` with ``arange(n_b).tile(G)`` — and the
    normaliser N·G with G = ``dn_groups``. ``group_detr`` (in ``kw``): LW-DETR's query groups, the
    matched entries' normaliser max(G·Σn, 1)."""
    tgt = [(t["boxes"].tolist(), t["labels"].tolist()) for t in targets]
    n_boxes = max(sum(len(lab) for _, lab in tgt), 1)
    groups = kw.get("group_detr", 1)
    n_match = max(sum(len(lab) for _, lab in tgt) * groups, 1)  # "lwdetr": G·Σn
    batch = len(tgt)
    stacks = [
        (f"layer_{i}", lg, bx, n_match, None)
        for i, (lg, bx) in enumerate(zip(logits.tolist(), boxes.tolist(), strict=True))
    ]
    if enc is not None:
        stacks.append(("enc", enc[0].tolist(), enc[1].tolist(), n_match, None))
    if dn is not None:
        fixed = []
        for b in range(batch):
            n = len(tgt[b][1])
            fixed.append({int(q): k % n for k, q in enumerate(dn_positive_idx[b].tolist())})
        for i, (lg, bx) in enumerate(zip(dn[0].tolist(), dn[1].tolist(), strict=True)):
            stacks.append((f"dn_{i}", lg, bx, n_boxes * dn_groups, fixed))
    entries, per_image = {}, [0.0] * batch
    for name, lg, bx, norm, fixed in stacks:
        terms, shares = entry_terms(preset, lg, bx, tgt, num_classes, norm, fixed, **kw)
        entries[name] = terms
        per_image = [a + b for a, b in zip(per_image, shares, strict=True)]
    return sum(map(sum, entries.values())), entries, per_image
