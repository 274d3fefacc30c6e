"""D-FINE's two local terms: fine-grained localisation (FGL) and decoupled distillation focal (DDF).

D-FINE regresses each side of a box as a distribution over N + 1 bins of a non-uniform grid W(n)
around a reference box; FGL supervises that distribution with the target's side split between two
neighbouring bins, DDF distils the last decoder layer's distributions into the earlier ones. Written from
the formulas of transformers 5.24's ``loss/loss_d_fine.py`` (``weighting_function``, ``translate_gt``,
``bbox2distance``, ``DFineLoss.loss_local``), batched: no boolean-mask indexing, no host reads.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..boxes import convert


def dfine_bin_values(
    num_bins: int = 32, up: float | Tensor = 0.5, reg_scale: float = 4.0, device: torch.device | None = None
) -> Tensor:
    """W(n), n = 0 … N: D-FINE's non-uniform bin positions, ``(N + 1,)`` float32 (whatever the model's
    dtype, as D-FINE computes them from its float32 ``up`` parameter)::

        a = |up|·|reg_scale|,  s = (a + 1)^(2 / (N − 2))
        W = [−2a, −(s^(N/2−1) − 1), …, −(s − 1), 0, s − 1, …, s^(N/2−1) − 1, 2a]

    Args:
        num_bins: N (even, > 2; D-FINE's ``max_num_bins``, 32).
        up, reg_scale: D-FINE's ``up`` (0.5) and ``reg_scale`` (4.0).
    """
    if num_bins <= 2 or num_bins % 2:
        raise ValueError(f"num_bins must be even and > 2, got {num_bins}")
    up_t = torch.as_tensor(up, dtype=torch.float32, device=device).reshape(-1)[0]
    a = up_t.abs() * abs(reg_scale)
    step = (a + 1) ** (2 / (num_bins - 2))
    # each power as its own scalar pow, the same rounding as D-FINE's list of step ** i
    right = torch.stack([step**i - 1 for i in range(1, num_bins // 2)])
    return torch.cat((-(2 * a)[None], -right.flip(0), a.new_zeros(1), right, (2 * a)[None]))


def fgl_targets(
    reference: Tensor, target: Tensor, values: Tensor, reg_scale: float = 4.0
) -> tuple[Tensor, Tensor]:
    """Each side's target bin and its split: ``(left bin (..., 4) int64, right weight (..., 4))``.

    The side distances of the target box ``target`` (cxcywh) from the reference box ``reference``
    (cxcywh, detached) in units of the reference's size, r = |reg_scale|::

        d_left = (x_ref − x1) / (w_ref / r + 1e-16) − r/2     (top, right, bottom alike)

    fall between W(i) ≤ d < W(i + 1); the target is (1 − ω)·δ_i + ω·δ_(i+1), ω = (d − W(i)) / (W(i+1) −
    W(i)). Below W(0): all on bin 0; at or above W(N): all on bin N.
    """
    with torch.no_grad():
        r = abs(reg_scale)
        ref = reference.detach()
        x1, y1, x2, y2 = convert(target, "cxcywh", "xyxy").unbind(-1)
        cx, cy, w, h = ref.unbind(-1)
        sx, sy = w / r + 1e-16, h / r + 1e-16
        d = torch.stack(((cx - x1) / sx, (cy - y1) / sy, (x2 - cx) / sx, (y2 - cy) / sy), -1) - 0.5 * r
        num_bins = values.shape[0] - 1
        w_n = values.to(d.dtype)
        idx = (w_n <= d[..., None]).sum(-1) - 1  # in [−1, N]
        left = idx.clamp(0, num_bins - 1)
        lo, hi = w_n[left], w_n[left + 1]
        dl, dr = (d - lo).abs(), (hi - d).abs()
        inside = dl / (dl + dr)
        weight = torch.where(idx < 0, 0.0, torch.where(idx >= num_bins, 1.0, inside))
    return left, weight


def fgl_loss(
    corners: Tensor,
    reference: Tensor,
    target: Tensor,
    weight: Tensor,
    *,
    up: float | Tensor = 0.5,
    reg_scale: float = 4.0,
) -> Tensor:
    """Fine-grained localisation loss of matched boxes, per box ``(...)`` (sum and divide by the number
    of boxes for D-FINE's ``loss_fgl``)::

        FGL = u · Σ_sides [ (1 − ω)·CE(z, i) + ω·CE(z, i + 1) ]

    z the side's N + 1 logits, (i, ω) from :func:`fgl_targets`, u the pair's IoU (detached and rounded to
    float32, as D-FINE does).

    Args:
        corners: ``(..., 4·(N + 1))`` the distribution logits of the four sides (left, top, right, bottom).
        reference: ``(..., 4)`` the reference boxes, cxcywh (used detached).
        target: ``(..., 4)`` the matched target boxes, cxcywh.
        weight: ``(...)`` the pairs' IoU.
        up, reg_scale: the bins' parameters (:func:`dfine_bin_values`).
    """
    num_bins = corners.shape[-1] // 4 - 1
    values = dfine_bin_values(num_bins, up, reg_scale, corners.device)
    left, w_right = fgl_targets(reference, target, values, reg_scale)
    logp = corners.unflatten(-1, (4, num_bins + 1)).log_softmax(-1)
    ce_left = -logp.gather(-1, left[..., None]).squeeze(-1)
    ce_right = -logp.gather(-1, left[..., None] + 1).squeeze(-1)
    w_right = w_right.to(corners.dtype)
    sides = ce_left * (1 - w_right) + ce_right * w_right
    return sides.sum(-1) * weight.detach().float().to(corners.dtype)


def ddf_loss(
    corners: Tensor,
    teacher: Tensor,
    weight: Tensor,
    matched: Tensor,
    *,
    temperature: float = 5.0,
    reduction: str = "sum",
) -> Tensor:
    """Decoupled distillation focal loss of one entry's distributions towards the teacher's::

        k(q, s) = u_q · T² · KL(softmax(z_t/T) ‖ softmax(z/T))   per query q and side s
        DDF = (√(n₊/B)·mean₊ k + √(n₋/B)·mean₋ k) / (√(n₊/B) + √(n₋/B))

    the means over the matched (₊) and the other (₋) (query, side) pairs, n₊, n₋ their counts (4 per
    query), B the images; u the weight (D-FINE: the matched pair's IoU, else the teacher's max class
    probability), used detached. The KL is written from both log-softmaxes, so an entry equal to the
    teacher gives exactly 0 (and gradient 0).

    Args:
        corners, teacher: ``(..., B, Q, 4·(N + 1))`` the entry's and the teacher's (the last layer's)
            distribution logits; the teacher is used detached.
        weight: ``(..., B, Q)``; matched: ``(..., B, Q)`` bool.
        temperature: T (5).
        reduction: ``"sum"`` ``(...)``, or ``"none"``: each image's share ``(..., B)``, summing to it.
    """
    if reduction not in ("sum", "none"):
        raise ValueError(f"reduction must be 'sum' or 'none', got {reduction!r}")
    t = temperature
    sides = corners.shape[-1] // 4
    log_s = (corners / t).unflatten(-1, (4, sides)).log_softmax(-1)
    log_t = (teacher.detach() / t).unflatten(-1, (4, sides)).log_softmax(-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1) * (t * t)  # (..., B, Q, 4)
    k = (kl * weight.detach()[..., None]).sum(-1)  # (..., B, Q)
    m = matched.to(k.dtype)
    zero = k.new_zeros(())
    pos_b = torch.where(matched, k, zero).sum(-1)  # (..., B)
    neg_b = torch.where(matched, zero, k).sum(-1)
    batch = k.shape[-2]
    n_pos = 4 * m.sum((-2, -1))  # (...)
    n_neg = 4 * (1 - m).sum((-2, -1))
    a, b = (n_pos / max(batch, 1)).sqrt(), (n_neg / max(batch, 1)).sqrt()
    tiny = torch.finfo(k.dtype).tiny
    a_n, b_n = a / (a + b).clamp(min=tiny), b / (a + b).clamp(min=tiny)
    share = pos_b * (a_n / n_pos.clamp(min=1))[..., None] + neg_b * (b_n / n_neg.clamp(min=1))[..., None]
    return share if reduction == "none" else share.sum(-1)
