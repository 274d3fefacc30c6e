"""Plain per-box, per-side loop port of D-FINE's FGL and DDF terms (docs/detr.md's formulas), in
float64 Python scalars; it shares no code with detloss. The bin positions W(n) are rounded to float32
step by step (numpy float32), as D-FINE computes them."""

from __future__ import annotations

import math

import numpy as np


def bin_values(num_bins=32, up=0.5, reg_scale=4.0):
    f = np.float32
    a = f(abs(up)) * f(abs(reg_scale))
    step = f(a + f(1)) ** f(2 / (num_bins - 2))
    right = [float(step ** f(i) - f(1)) for i in range(1, num_bins // 2)]
    return [-2 * float(a)] + [-v for v in reversed(right)] + [0.0] + right + [2 * float(a)]


def log_softmax(z):
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def fgl_box(corners, ref, tgt, iou, up=0.5, reg_scale=4.0):
    """One matched box: IoU(float32) · Σ_sides (1 − ω)·CE(i) + ω·CE(i + 1)."""
    w = bin_values(len(corners) // 4 - 1, up, reg_scale)
    n = len(w) - 1
    r = abs(reg_scale)
    cx, cy, bw, bh = ref
    x1, y1, x2, y2 = tgt[0] - tgt[2] / 2, tgt[1] - tgt[3] / 2, tgt[0] + tgt[2] / 2, tgt[1] + tgt[3] / 2
    sx, sy = bw / r + 1e-16, bh / r + 1e-16
    dists = [(cx - x1) / sx - r / 2, (cy - y1) / sy - r / 2, (x2 - cx) / sx - r / 2, (y2 - cy) / sy - r / 2]
    total = 0.0
    for s, d in enumerate(dists):
        logp = log_softmax(corners[s * (n + 1) : (s + 1) * (n + 1)])
        i = sum(1 for v in w if v <= d) - 1
        if i < 0:
            i, om = 0, 0.0
        elif i >= n:
            i, om = n - 1, 1.0
        else:
            om = abs(d - w[i]) / (abs(d - w[i]) + abs(w[i + 1] - d))
        total += -(1 - om) * logp[i] - om * logp[i + 1]
    return float(np.float32(iou)) * total


def ddf(corners, teacher, weight, matched, temperature=5.0):
    """corners, teacher: [B][Q][4·(N+1)]; weight, matched: [B][Q]. (DDF, per-image shares)."""
    t = temperature
    batch = len(corners)
    pos, neg = [0.0] * batch, [0.0] * batch
    n_pos = n_neg = 0
    for b in range(batch):
        for q in range(len(corners[b])):
            size = len(corners[b][q]) // 4
            k = 0.0
            for s in range(4):
                ls = log_softmax([v / t for v in corners[b][q][s * size : (s + 1) * size]])
                lt = log_softmax([v / t for v in teacher[b][q][s * size : (s + 1) * size]])
                k += weight[b][q] * t * t * sum(math.exp(x) * (x - y) for x, y in zip(lt, ls, strict=True))
            if matched[b][q]:
                pos[b] += k
                n_pos += 4
            else:
                neg[b] += k
                n_neg += 4
    a, c = math.sqrt(n_pos / batch), math.sqrt(n_neg / batch)
    shares = [
        (a * (pos[b] / n_pos if n_pos else 0.0) + c * (neg[b] / n_neg if n_neg else 0.0)) / (a + c)
        for b in range(batch)
    ]
    return sum(shares), shares


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def union_of_matchings(per_entry):
    """DEIMv2's dense one-to-one union of one image's matchings (``per_entry``: dicts query → target,
    the main output's first): every pair counted, the distinct pairs in (query, target) order sorted by
    count, most frequent first (a stable sort), then each query keeps its first pair."""
    counts = {}
    for match in per_entry:
        for pair in match.items():
            counts[pair] = counts.get(pair, 0) + 1
    union = {}
    for (q, j), _ in sorted(sorted(counts.items()), key=lambda item: -item[1]):
        union.setdefault(q, j)
    return union


def loop_port_dfine(
    logits,
    boxes,
    corners,
    refs,
    targets,
    num_classes,
    enc=None,
    dn=None,
    dn_positive_idx=None,
    dn_groups=1,
    preset="dfine",
):
    """transformers 5.24's D-FINE loss as loops: (total, {entry: [vfl, bbox, giou, fgl, ddf] with gains},
    per-image shares). ``logits``/``boxes`` ``(L + 1, B, Q, ·)`` (the pre-head output first), ``corners``
    /``refs`` ``(L, B, Q, ·)``; auxiliary entry k < L − 1 takes logits/boxes k with corners/refs k, the
    main entry (``layer_{L−1}``) logits/boxes L without FGL/DDF; the teacher: corners L − 1 with the
    main logits. ``dn`` = (logits ``(L + 1, …)``, boxes, corners ``(L, …)``, refs): dn entry k takes
    logits/boxes/corners k, its teacher dn corners L − 1 with dn logits L. Gains 1/5/2/0.15/1.5.

    ``preset="deimv2"``: the class term is MAL, and the box and local terms of the matched entries
    (main, auxiliary, encoder) use the union of their matchings (:func:`union_of_matchings`) with the
    normaliser max(union size, 1); denoising keeps its fixed matches."""
    from tests.reference.detr import entry_terms, iou_and_giou

    tgt = [(t["boxes"].tolist(), t["labels"].tolist()) for t in targets]
    n_boxes = max(sum(len(lab) for _, lab in tgt), 1)
    batch = len(tgt)
    lg, bx = logits.tolist(), boxes.clamp(0, 1).tolist()
    num_layers = len(corners)
    stacks = [
        (f"layer_{k}", lg[k], bx[k], corners[k].tolist(), refs[k].tolist()) for k in range(num_layers - 1)
    ]
    stacks.append((f"layer_{num_layers - 1}", lg[num_layers], bx[num_layers], None, None))
    teacher, teacher_logits = corners[-1].tolist(), lg[num_layers]
    jobs = [(name, a, b, c, r, n_boxes, None, teacher, teacher_logits) for name, a, b, c, r in stacks]
    if enc is not None:
        jobs.append(
            ("enc", enc[0].tolist(), enc[1].clamp(0, 1).tolist(), None, None, n_boxes, None, None, None)
        )
    if dn is not None:
        fixed = []
        for b in range(batch):
            n = len(tgt[b][1])
            fixed.append({int(q): k % n for k, q in enumerate(dn_positive_idx[b].tolist())})
        dl, db, dc, dr = dn[0].tolist(), dn[1].clamp(0, 1).tolist(), dn[2].tolist(), dn[3].tolist()
        for k in range(len(dc)):
            jobs.append((f"dn_{k}", dl[k], db[k], dc[k], dr[k], n_boxes * dn_groups, fixed, dc[-1], dl[-1]))
    kind = "rtdetr" if preset == "dfine" else "deimv2"
    union, union_norm = None, None
    if preset == "deimv2":  # every matched entry's matching first, main output first
        found = {}
        for name, a, b, *_, dn_fixed, _, _ in jobs:
            if dn_fixed is None:
                found[name] = []
                entry_terms(kind, a, b, tgt, num_classes, 1.0, matches=found[name])
        order = [f"layer_{num_layers - 1}"] + [n for n in found if n != f"layer_{num_layers - 1}"]
        union = [union_of_matchings([found[n][i] for n in order]) for i in range(batch)]
        union_norm = max(sum(len(u) for u in union), 1)
    entries, per_image = {}, [0.0] * batch
    for name, a, b, c, r, norm, fixed, tch, tch_logits in jobs:
        matches = []
        box_matches, box_norm = (union, union_norm) if fixed is None else (None, None)
        terms, shares = entry_terms(
            kind, a, b, tgt, num_classes, norm, fixed, matches=matches, box_matches=box_matches,
            box_norm=box_norm,
        )  # fmt: skip
        if box_matches is not None:  # the local terms too
            matches, norm = box_matches, box_norm
        fgl = ddf_value = 0.0
        if c is not None:
            fgl_img = [0.0] * batch
            weight = [
                [max(_sigmoid(v) for v in tch_logits[i][q]) for q in range(len(a[i]))] for i in range(batch)
            ]
            matched = [[False] * len(a[i]) for i in range(batch)]
            for i in range(batch):
                for q, j in matches[i].items():
                    iou = iou_and_giou(b[i][q], tgt[i][0][j])[0]
                    fgl_img[i] += fgl_box(c[i][q], r[i][q], tgt[i][0][j], iou) / norm
                    weight[i][q], matched[i][q] = iou, True
            fgl = 0.15 * sum(fgl_img)
            ddf_value, ddf_img = ddf(c, tch, weight, matched)
            ddf_value *= 1.5
            shares = [s + 0.15 * f + 1.5 * d for s, f, d in zip(shares, fgl_img, ddf_img, strict=True)]
        entries[name] = terms + [fgl, ddf_value]
        per_image = [x + y for x, y in zip(per_image, shares, strict=True)]
    return sum(map(sum, entries.values())), entries, per_image
