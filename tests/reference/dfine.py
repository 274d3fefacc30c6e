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
