"""DETR-family set criterion: Hungarian matching per decoder layer, then class and box losses.

Reproduces transformers 5.24's ``ForObjectDetectionLoss`` (DETR), ``DeformableDetrForObjectDetectionLoss``
(Deformable DETR, DINO) and ``RTDetrForObjectDetectionLoss`` (RT-DETR: decoder layers, encoder proposals
and contrastive denoising groups) on the same inputs. Unlike the references, which build the cost between
every query and every target of the batch and copy it to the host once per layer, the cost here is built
for each image's own targets only, ``(L, B, Q, M_max)``, and every entry (layers, encoder) reaches the
host in one transfer (:func:`detloss.assign.hungarian_match_all`); denoising entries have fixed matches;
everything else is one graph over entries and images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..assign.dense import dense_one_to_one
from ..assign.hungarian import hungarian_match_all, require_scipy
from ..assign.targets import PaddedTargets, pad_targets, raise_bad_target, targets_ok
from ..boxes import convert
from ..checks import (
    check_dfine_local,
    check_dn_meta,
    check_finite,
    check_gain,
    check_group_size,
    check_num_classes,
    check_padded_targets,
    check_query_groups,
    check_set_predictions,
)
from ..distributed import global_count
from ..iou import compute_dtype, iou_xyxy
from ..kernels import iou_forward
from ..losses import ia_bce_loss, mal_loss, sigmoid_focal_loss
from .dfine import ddf_loss, fgl_loss
from .set_result import SetLossResult

Preset = Literal["detr", "deformable", "rtdetr", "lwdetr", "dfine", "deimv2"]

# preset → (class, bbox, giou) match costs, (cls, bbox, giou) loss gains, focal_alpha: the defaults
# of the original repositories (facebookresearch/detr, fundamentalvision/Deformable-DETR, lyuwenyu/RT-DETR,
# Atten4Vis/LW-DETR; transformers' LwDetrConfig has the same); DEIMv2's α is MAL's (``mal_alpha``, whose
# default None means no α: 1)
PRESETS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], float | None]] = {
    "detr": ((1.0, 5.0, 2.0), (1.0, 5.0, 2.0), None),
    "deformable": ((2.0, 5.0, 2.0), (2.0, 5.0, 2.0), 0.25),
    "rtdetr": ((2.0, 5.0, 2.0), (1.0, 5.0, 2.0), 0.75),
    "lwdetr": ((2.0, 5.0, 2.0), (1.0, 5.0, 2.0), 0.25),
    "dfine": ((2.0, 5.0, 2.0), (1.0, 5.0, 2.0), 0.75),
    "deimv2": ((2.0, 5.0, 2.0), (1.0, 5.0, 2.0), 1.0),
}
# D-FINE's (and DEIMv2's) FGL and DDF gains (transformers' weight_loss_fgl, weight_loss_ddf)
_DFINE_GAINS = (0.15, 1.5)
# LW-DETR's query groups (transformers' LwDetrConfig.group_detr)
_LWDETR_GROUPS = 13

# The references' GIoU and IoU have no eps; float32's smallest normal keeps degenerate boxes finite
# (0/tiny = 0) and changes no other value: it is below any union or enclosing area that rounds to > 0.
_TINY = torch.finfo(torch.float32).tiny


# the presets with D-FINE's local terms (FGL, DDF) and its inputs (corners, reference points)
_LOCAL = ("dfine", "deimv2")
_TERMS = ("cls", "bbox", "giou")
_DFINE_TERMS = _TERMS + ("fgl", "ddf")


class DETRLoss(nn.Module):
    """Set-prediction loss of the DETR family, every decoder layer matched and weighted alike.

    Per layer l, with the Hungarian matching σ_l of queries to each image's targets::

        cost(q, j) = class_cost·C_cls(q, j) + bbox_cost·‖b_q − b_j‖₁ − giou_cost·GIoU(b_q, b_j)
        L_l = cls·L_cls + bbox·Σ_j ‖b_σ(j) − b_j‖₁ / N + giou·Σ_j (1 − GIoU) / N

    with N = max(number of target boxes in the batch, 1) (averaged over the ranks with
    ``reduce_across_ranks``). Presets (``None`` arguments take the preset's value):

    - ``"detr"`` (C′ = C + 1, no-object last): C_cls = −softmax(x)[class]; L_cls = cross-entropy over
      all B·Q queries (unmatched ones → no-object, weighted ``eos_coef``), PyTorch's weighted mean.
      Costs 1/5/2, gains 1/5/2.
    - ``"deformable"`` (C′ = C): C_cls = α_c(1−p)^γ_c·(−log(p + 1e-8)) − (1−α_c)p^γ_c·(−log(1 − p + 1e-8)),
      p = σ(x) of the target's class; L_cls = sigmoid focal loss (``focal_alpha`` 0.25, ``focal_gamma``)
      on the one-hot of the matched classes, summed over B·Q·C, / N. Costs 2/5/2, gains 2/5/2.
    - ``"rtdetr"`` (C′ = C): the focal cost; L_cls = varifocal: BCE-with-logits(x, t·IoU) weighted by
      α·p^γ·(1 − t) + t·IoU, t the one-hot, IoU of the matched pair and p detached (``focal_alpha``
      0.75), summed over B·Q·C, / N. Costs 2/5/2, gains 1/5/2.
    - ``"lwdetr"`` (LW-DETR, RF-DETR; C′ = C): the Q queries form G = ``group_detr`` groups of
      S = ⌊Q/G⌋ consecutive queries (a remainder is never matched), each group matched to all targets
      on its own (each target matched G times, every group's cost in the one round trip), N = G·Σn;
      the focal cost with the L1 and GIoU costs of the boxes rounded to float32 (as transformers);
      L_cls = IA-BCE (:func:`detloss.ia_bce_loss`, α = ``focal_alpha`` 0.25, γ = ``focal_gamma``)
      summed over B·Q·C, / N. Costs 2/5/2, gains 1/5/2.
    - ``"dfine"`` (D-FINE; C′ = C): ``"rtdetr"``'s terms plus FGL (gain ``fgl`` 0.15) and DDF (gain
      ``ddf`` 1.5) (:func:`detloss.criteria.fgl_loss`, :func:`detloss.criteria.ddf_loss`), as
      transformers' ``DFineForObjectDetectionLoss``: ``logits``/``boxes`` hold the model's L + 1
      outputs (the pre-head one first), ``corners``/``reference_points`` its L layers; auxiliary
      entry k < L − 1 takes outputs k with corners k, the main (last) output has no FGL/DDF, output
      L − 1 takes no part; the teacher is corners L − 1 with the main logits; boxes clamped to [0, 1].
      Denoising alike (``dn_logits`` L + 1 entries, ``dn_corners`` L; entry k < L with corners k).
    - ``"deimv2"`` (DEIMv2; C′ = C): ``"dfine"``'s entries and terms with the class term
      L_cls = MAL (:func:`detloss.mal_loss`: BCE(p, IoU^γ) at the matched class, −α·p̄^γ·log(1 − p)
      elsewhere; α = ``focal_alpha``, default 1 as transformers' ``mal_alpha=None``), over N; and,
      with ``dense_one_to_one`` (default), the dense one-to-one union
      (:func:`detloss.assign.dense_one_to_one`): the box and local terms (L1, GIoU, FGL, DDF) of every
      Hungarian entry use the union of the main output's, the auxiliary entries' and the encoder's
      matchings, each query with the target it was matched to most often (the lowest target among
      equal counts; transformers' unstable sort breaks such ties arbitrarily), over N_u = max(union
      size, 1); the class term keeps each entry's own matching. Denoising keeps its fixed matches.

    Args:
        num_classes: C, the object classes (without no-object).
        preset: ``"detr" | "deformable" | "rtdetr" | "lwdetr" | "dfine" | "deimv2"``.
        class_cost, bbox_cost, giou_cost: matching cost weights (transformers' names).
        cls, bbox, giou: loss gains, the keys of ``components`` (transformers' ``weight_dict`` of
            ``loss_ce``, ``loss_bbox``, ``loss_giou``).
        eos_coef: the no-object class weight of ``"detr"``'s cross-entropy.
        cost_alpha, cost_gamma: α_c, γ_c of the focal matching cost.
        focal_alpha, focal_gamma: α, γ of the focal / varifocal class loss.
        validate: check shapes always; with True also finite predictions, targets (finite, positive
            width and height, class ids in [0, C)) in one host synchronisation, and finite costs.
        reduce_across_ranks: N summed over the ranks of a process group and divided by the world
            size (:func:`detloss.distributed.global_count`, at least 1 before dividing).
        group_detr: G, the query groups of ``"lwdetr"`` (13, transformers' default; the criterion is
            always in transformers' training mode, G groups whatever the model's mode); 1 otherwise.
        fgl, ddf: ``"dfine"``'s and ``"deimv2"``'s FGL and DDF gains (``weight_loss_fgl``,
            ``weight_loss_ddf``).
        up, reg_scale: their bin parameters (D-FINE's ``up`` 0.5, ``reg_scale`` 4.0).
        dense_one_to_one: ``"deimv2"``'s union of matchings for the box and local terms (True,
            transformers' ``use_dense_one_to_one``); False matches each entry on its own (D-FINE's
            rule with MAL). Only for ``"deimv2"``.

    Call:
        logits: ``(L, B, Q, C′)`` (or ``(B, Q, C′)`` for one layer), the last layer the final one.
        boxes: ``(L, B, Q, 4)`` predicted boxes, cxcywh normalised to [0, 1].
        targets: B dicts ``{"boxes": (n, 4) cxcywh normalised to [0, 1], "labels": (n,) int64}``; n may
            be 0. Or a :class:`detloss.assign.PaddedTargets` of such boxes already on the device (skips
            the padding and the targets' value checks; its shapes are checked, and its mask travels to
            the host with the matching cost).
        enc_logits, enc_boxes: ``(B, Q_e, C′)``, ``(B, Q_e, 4)``, optional: encoder proposals (RT-DETR's
            ``enc_topk_logits`` / ``enc_topk_bboxes``), matched and weighted like one more layer.
        dn_logits, dn_boxes: ``(L_dn, B, Q_dn, C′)``, ``(L_dn, B, Q_dn, 4)``, optional: the decoder's
            contrastive denoising queries (split from the matching ones), with
        dn_meta: transformers' ``denoising_meta_values``: ``dn_positive_idx`` (B tensors, image b's
            ``n_b·G`` positive queries group-major, element k the query of target k mod n_b),
            ``dn_num_group`` G, optionally ``dn_num_split`` ``[Q_dn, Q]`` (checked). No matching:
            each positive takes its target, every other query is a negative; the box count is N·G::

                L_dn,l = cls·L_cls(σ_dn) + bbox·Σ_{g,j} ‖b_σ(g,j) − b_j‖₁ / (N·G)
                         + giou·Σ_{g,j} (1 − GIoU(b_σ(g,j), b_j)) / (N·G)

        corners, reference_points: ``(L, B, Q, 4·(N + 1))``, ``(L, B, Q, 4)``: ``"dfine"`` and
            ``"deimv2"`` only (required there); dn_corners, dn_reference_points: the same of the
            denoising queries.

    Returns:
        :class:`SetLossResult`: ``total``, ``components`` ``{"cls", "bbox", "giou"}`` summed over the
        layers and entries, ``layers`` the per-layer dicts, ``entries`` ``{"enc", "dn_0", …}`` those
        given, ``per_image`` ``(B,)`` each image's share summed over them: its queries' class loss and
        its targets' box losses over the batch's normalisers (N, N·G; ``"detr"``: Σ w of the entry's
        queries), so ``per_image.sum() == total``; ``loss_dict()`` transformers' dictionary.
        float32 for half-precision inputs.

    A call is one graph with one host round trip (the matching of every layer and the encoder) with
    ``validate=False``; ``validate=True`` adds one synchronisation for the input checks.
    """

    def __init__(
        self,
        num_classes: int,
        preset: Preset = "detr",
        *,
        class_cost: float | None = None,
        bbox_cost: float | None = None,
        giou_cost: float | None = None,
        cls: float | None = None,
        bbox: float | None = None,
        giou: float | None = None,
        eos_coef: float = 0.1,
        cost_alpha: float = 0.25,
        cost_gamma: float = 2.0,
        focal_alpha: float | None = None,
        focal_gamma: float = 2.0,
        validate: bool = True,
        reduce_across_ranks: bool = False,
        group_detr: int | None = None,
        fgl: float | None = None,
        ddf: float | None = None,
        up: float = 0.5,
        reg_scale: float = 4.0,
        dense_one_to_one: bool | None = None,
    ) -> None:
        super().__init__()
        require_scipy()
        check_num_classes(num_classes)
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
        costs, gains, alpha = PRESETS[preset]
        self.num_classes, self.preset = num_classes, preset
        given = (class_cost, bbox_cost, giou_cost, cls, bbox, giou)
        names = ("class_cost", "bbox_cost", "giou_cost", "cls", "bbox", "giou")
        value = [  # None takes the preset's value
            check_gain(n, d if v is None else v) for n, v, d in zip(names, given, costs + gains, strict=True)
        ]
        self.class_cost, self.bbox_cost, self.giou_cost = value[:3]
        self.gains = dict(zip(names[3:], value[3:], strict=True))
        if self.class_cost == self.bbox_cost == self.giou_cost == 0:
            raise ValueError("class_cost, bbox_cost and giou_cost cannot all be 0")
        if not 0 <= eos_coef:
            raise ValueError(f"eos_coef must be >= 0, got {eos_coef}")
        if not (0 <= cost_alpha <= 1 and cost_gamma >= 0 and focal_gamma >= 0):
            raise ValueError("cost_alpha must lie in [0, 1]; cost_gamma and focal_gamma must be >= 0")
        self.eos_coef, self.cost_alpha, self.cost_gamma = (
            float(eos_coef),
            float(cost_alpha),
            float(cost_gamma),
        )
        if focal_alpha is None:
            focal_alpha = 0.25 if alpha is None else alpha
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        if not 0 <= self.focal_alpha <= 1:
            raise ValueError(f"focal_alpha must lie in [0, 1], got {self.focal_alpha}")
        self.validate, self.reduce_across_ranks = bool(validate), bool(reduce_across_ranks)
        self.group_detr = check_query_groups(group_detr, preset, _LWDETR_GROUPS)
        if preset in _LOCAL:
            self.gains["fgl"] = check_gain("fgl", _DFINE_GAINS[0] if fgl is None else fgl)
            self.gains["ddf"] = check_gain("ddf", _DFINE_GAINS[1] if ddf is None else ddf)
        elif fgl is not None or ddf is not None:
            raise ValueError("fgl and ddf are the gains of presets 'dfine' and 'deimv2'")
        if dense_one_to_one is not None and preset != "deimv2":
            raise ValueError("dense_one_to_one is an option of preset 'deimv2'")
        self.dense_one_to_one = preset == "deimv2" and dense_one_to_one is not False
        self.up, self.reg_scale = float(up), float(reg_scale)
        self.terms = _DFINE_TERMS if preset in _LOCAL else _TERMS
        # float64, cast per call: eos_coef stays exact for float64 logits
        class_weight = torch.ones(num_classes + 1, dtype=torch.float64)
        class_weight[-1] = self.eos_coef
        self.register_buffer("class_weight", class_weight, persistent=False)

    # ------------------------------------------------------------------------------------------ call
    def forward(
        self,
        logits: Tensor,
        boxes: Tensor,
        targets: Sequence[Mapping[str, Tensor]] | PaddedTargets,
        *,
        enc_logits: Tensor | None = None,
        enc_boxes: Tensor | None = None,
        dn_logits: Tensor | None = None,
        dn_boxes: Tensor | None = None,
        dn_meta: Mapping[str, object] | None = None,
        corners: Tensor | None = None,
        reference_points: Tensor | None = None,
        dn_corners: Tensor | None = None,
        dn_reference_points: Tensor | None = None,
    ) -> SetLossResult:
        logits, boxes = self._check_preds(logits, boxes, targets)
        dfine = self.preset in _LOCAL
        if not dfine and not all(
            t is None for t in (corners, reference_points, dn_corners, dn_reference_points)
        ):
            raise ValueError("corners and reference_points are inputs of presets 'dfine' and 'deimv2' only")
        if dfine:
            local = check_dfine_local(("corners", "reference_points"), corners, reference_points, logits, "")
        num_layers, batch, num_queries, _ = logits.shape
        listed = not isinstance(targets, PaddedTargets)
        host_counts = [int(t["boxes"].shape[0]) for t in targets] if listed else None  # from the shapes
        enc = self._check_entry(("enc_logits", "enc_boxes"), enc_logits, enc_boxes, "B, Q_e", batch)
        dn = self._check_entry(("dn_logits", "dn_boxes"), dn_logits, dn_boxes, "L_dn, B, Q_dn", batch)
        if (dn is None) != (dn_meta is None):
            raise ValueError("dn_logits, dn_boxes and dn_meta go together: pass all three or none")
        if dfine and dn is not None:
            dn_local = check_dfine_local(
                ("dn_corners", "dn_reference_points"), dn_corners, dn_reference_points, dn[0], "dn_"
            )
        if dn is not None:
            dn_idx, groups = check_dn_meta(dn_meta, host_counts, dn[0].shape[2], num_queries)
            if len(dn_idx) != batch:
                raise ValueError(
                    f"dn_meta['dn_positive_idx'] has {len(dn_idx)} images but logits has {batch}"
                )
        dtype = compute_dtype(logits)  # fp16/bf16 heads: computed in float32
        x, pred = logits.to(dtype), boxes.to(dtype)
        if dfine:
            # transformers' D-FINE clamps every box to [0, 1] before matching; of the L + 1 outputs,
            # auxiliary entry k (k < L − 1) pairs with layer k's corners (entry L − 1 takes no part)
            # and the last is the main output (no corners); the teacher is the last layer's corners
            # with the main output's logits
            pred = pred.clamp(0, 1)
            last = x.shape[0] - 1
            teacher_logits = x[last]
            x, pred = torch.cat((x[: last - 1], x[last:])), torch.cat((pred[: last - 1], pred[last:]))
            num_layers = last
            if enc is not None:
                enc = (enc[0], enc[1].clamp(0, 1))
            if dn is not None:
                dn_teacher_logits = dn[0][-1].to(dtype)
                dn = (dn[0][:-1], dn[1][:-1].clamp(0, 1))
        if listed:
            padded = pad_targets(
                targets, self.num_classes, fmt="cxcywh", dtype=dtype, device=x.device, validate=False
            )
            counts: Tensor | list[int] = host_counts
        else:
            padded = PaddedTargets(targets.boxes.to(dtype), targets.labels.long(), targets.mask)
            counts = padded.mask  # read with the matching cost, in its transfer
        tgt_boxes, labels, valid_tgt = padded.boxes, padded.labels, padded.mask  # (B, M, 4), (B, M)
        if dn is not None:
            dn_query, dn_flat = self._dn_queries(dn_idx, groups, valid_tgt)  # (B, G·M)
        if self.validate:
            entries = ((("enc_logits", "enc_boxes"), enc, 1), (("dn_logits", "dn_boxes"), dn, 0))
            # the encoder's tensors as given, (B, Q_e, ·), so a bad value is named by the input's index
            extra = [
                (n, t[0] if e else t)
                for ns, pair, e in entries
                if pair is not None
                for n, t in zip(ns, pair, strict=True)
            ]
            if dfine:
                extra += [("corners", local[0]), ("reference_points", local[1])]
                if dn is not None:
                    extra += [("dn_corners", dn_local[0]), ("dn_reference_points", dn_local[1])]
            dn_check = (
                None if dn is None else (dn_flat, dn[0].shape[2], groups, [int(t.shape[0]) for t in dn_idx])
            )
            self._check_values(x, pred, targets, padded, extra, dn_check)

        # 1. the Hungarian entries: decoder layers and encoder proposals, stacked where their query
        # counts agree (one pass over both), every cost block to the host in one round trip
        stacks = [(x, pred)]
        if enc is not None:
            ex, eb = enc[0].to(dtype), enc[1].to(dtype)
            if ex.shape[2] == num_queries:
                stacks = [(torch.cat((x, ex)), torch.cat((pred, eb)))]
            elif self.dense_one_to_one:  # the union indexes one set of queries
                raise ValueError(
                    f"preset 'deimv2' with dense_one_to_one needs enc_logits with the decoder's "
                    f"{num_queries} queries, got {ex.shape[2]}"
                )
            else:
                stacks.append((ex, eb))
        for name, (sx, _) in zip(("logits", "enc_logits"), stacks, strict=False):
            check_group_size(name if len(stacks) > 1 else "logits", sx.shape[2], self.group_detr)
        # with G query groups each group is a block of its own, (E_k, G, B, S, M), and each target has
        # G slots, group-major (slot g·M + r: group g's match of target row r)
        groups_q = self.group_detr
        with torch.no_grad():
            costs = [self._group_cost(self._cost(sx, sp, tgt_boxes, labels)) for sx, sp in stacks]
        matches = hungarian_match_all(costs, counts, validate=self.validate)  # (E_k, G, B, M) query, −1
        matches = [self._ungroup(m, sx.shape[2]) for m, (sx, _) in zip(matches, stacks, strict=True)]
        count = valid_tgt.sum().to(dtype)
        num_boxes = global_count(count, self.reduce_across_ranks, 1.0)
        if groups_q > 1:  # N = G·Σn, clamped at 1 as a whole (not G·max(Σn, 1))
            match_boxes = global_count(count * groups_q, self.reduce_across_ranks, 1.0)
            slot_boxes, slot_labels = tgt_boxes.repeat(1, groups_q, 1), labels.repeat(1, groups_q)
        else:
            match_boxes, slot_boxes, slot_labels = num_boxes, tgt_boxes, labels
        # DEIMv2: the box and local terms of every Hungarian entry on the union of their matchings,
        # in query-slot form (slot q: query q and its most frequent target), normalised by its size
        union = self._union(matches, tgt_boxes, num_queries) if self.dense_one_to_one else None
        terms = [
            self._terms(sx, sp, m, slot_boxes, slot_labels, match_boxes, union)
            for (sx, sp), m in zip(stacks, matches, strict=True)
        ]
        if dfine:  # FGL and DDF of the auxiliary entries; zeros for the main output and the encoder
            aux = num_layers - 1
            lc, lr = local[0].to(dtype), local[1].to(dtype)
            match, match_tgt, match_n = (
                (matches[0][:aux], tgt_boxes, num_boxes)
                if union is None
                else (union[0].expand(aux, -1, -1), union[1], union[2])
            )
            loc = self._local(
                pred[:aux], lc[:aux], lr[:aux], match, match_tgt, lc[-1], teacher_logits, match_n
            )
            rest = sum(t.shape[0] for t in terms) - aux
            loc = torch.cat((loc, loc.new_zeros(rest, batch, 2)))
            terms = [torch.cat((torch.cat(terms) if len(terms) > 1 else terms[0], loc), 2)]

        # 2. denoising: fixed matches (group g's positive query of each target), normaliser N·G
        if dn is not None:
            dx, dp = dn[0].to(dtype), dn[1].to(dtype)
            query = dn_query.expand(dx.shape[0], -1, -1)  # (L_dn, B, G·M)
            rep_boxes, rep_labels = tgt_boxes.repeat(1, groups, 1), labels.repeat(1, groups)
            dn_terms = self._terms(dx, dp, query, rep_boxes, rep_labels, num_boxes * groups)
            if dfine:
                dc, dr = dn_local[0].to(dtype), dn_local[1].to(dtype)
                loc = self._local(dp, dc, dr, query, rep_boxes, dc[-1], dn_teacher_logits, num_boxes * groups)
                dn_terms = torch.cat((dn_terms, loc), 2)
            terms.append(dn_terms)

        # 3. gains; each image's share over the batch's normalisers, summed per entry and over entries
        raw = torch.cat(terms) if len(terms) > 1 else terms[0]  # (E, B, T) unweighted
        g = self.gains
        shares = torch.stack([g[t] * raw[..., i] for i, t in enumerate(self.terms)], 2)
        per_entry = shares.sum(1)  # (E, T)
        sums = per_entry.sum(0)
        rows = [dict(zip(self.terms, row.unbind(), strict=True)) for row in per_entry.unbind()]
        names = (["enc"] if enc is not None else []) + (
            [f"dn_{i}" for i in range(dn[0].shape[0])] if dn is not None else []
        )
        cardinality = None
        if self.preset in ("detr", "deformable", "lwdetr"):  # transformers' log value, per matched entry
            cardinality = torch.cat([self._cardinality(sx, valid_tgt) for sx, _ in stacks])
        return SetLossResult(
            sums.sum(),
            dict(zip(self.terms, sums.unbind(), strict=True)),
            per_image=shares.sum((0, 2)),
            layers=rows[:num_layers],
            entries=dict(zip(names, rows[num_layers:], strict=True)),
            preset=self.preset,
            unweighted=raw.sum(1),
            cardinality=cardinality,
        )

    def _terms(
        self,
        x: Tensor,
        pred: Tensor,
        match: Tensor,
        tgt_boxes: Tensor,
        labels: Tensor,
        num_boxes: Tensor,
        union: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> Tensor:
        """``(E, B, 3)``: each entry's and image's class, L1 and GIoU terms (no gains) over the batch's
        normalisers, given the matches.

        Args:
            x, pred: ``(E, B, Q, C′)`` logits and ``(E, B, Q, 4)`` cxcywh boxes of E entries.
            match: ``(E, B, K)`` the query matched to each target slot, −1 for none (padding, left over).
            tgt_boxes, labels: ``(B, K, 4)`` and ``(B, K)``, the target of each slot (a denoising
                entry's slots are the targets repeated once per group).
            num_boxes: the normaliser of the box terms and of the focal class terms (N, or N·G).
            union: DEIMv2's ``(match (B, Q), target boxes (B, Q, 4), normaliser)`` of the box terms,
                when they do not use ``match``.
        """
        num_entries, batch, num_queries, _ = x.shape
        dtype = x.dtype
        pairs = self._pairs(pred, match, tgt_boxes)
        matched, _, pred_xyxy, tgt_xyxy = pairs
        box_tgt, box_n = (tgt_boxes, num_boxes) if union is None else union[1:]
        if union is not None:
            pairs = self._pairs(pred, union[0].expand(num_entries, -1, -1), box_tgt)
        zero = x.new_zeros(())
        b_matched, pred_m, b_pred, b_tgt = pairs
        l1 = torch.where(b_matched, (pred_m - box_tgt).abs().sum(-1), zero).sum(2) / box_n  # (E, B)
        giou = iou_xyxy(b_pred, b_tgt, "giou", _TINY)
        giou = torch.where(b_matched, 1.0 - giou, zero).sum(2) / box_n

        # the class target of every query: the matched target's class, else C (no-object);
        # unmatched slots scatter into a spare slot Q that is dropped (order-free, no collisions)
        slot = torch.where(matched, match, num_queries)  # (E, B, K)
        cls_target = x.new_full((num_entries, batch, num_queries + 1), self.num_classes, dtype=torch.long)
        cls_target = cls_target.scatter(2, slot, labels.expand_as(slot))[..., :num_queries]  # (E, B, Q)
        if self.preset == "detr":
            cls = self._cross_entropy(x, cls_target)
        else:
            # (E, B, Q, C); no-object (C) is all zeros. A comparison, not F.one_hot: that reads the
            # class range back from the device
            onehot = (cls_target[..., None] == torch.arange(self.num_classes, device=x.device)).to(dtype)
            if self.preset == "deformable":
                cls = sigmoid_focal_loss(
                    x, onehot, self.focal_alpha, self.focal_gamma, reduction="none", validate=False
                )
            else:
                with torch.no_grad():
                    iou = iou_xyxy(pred_xyxy, tgt_xyxy, "iou", _TINY)  # (E, B, K)
                    score = x.new_zeros(slot.shape[:2] + (num_queries + 1,)).scatter(2, slot, iou)
                score = score[..., :num_queries, None]  # (E, B, Q, 1): each query's matched IoU
                quality = {"lwdetr": ia_bce_loss, "deimv2": mal_loss}.get(self.preset)
                if quality is not None:
                    alpha, gamma = self.focal_alpha, self.focal_gamma
                    cls = quality(x, onehot > 0, score, alpha, gamma, reduction="none", validate=False)
                else:  # IoU at the matched class
                    cls = _rtdetr_varifocal(x, onehot, score * onehot, self.focal_alpha, self.focal_gamma)
            cls = cls.sum((2, 3)) / num_boxes
        return torch.stack((cls, l1, giou), 2)

    @staticmethod
    def _pairs(pred: Tensor, match: Tensor, tgt_boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The matched pairs, gathered by the match index (masks instead of ragged lists): whether each
        slot is matched ``(E, B, K)``, its predicted box ``(E, B, K, 4)`` (query 0's when not), that
        box and the target box as xyxy."""
        matched = match >= 0
        pred_m = pred.gather(2, match.clamp(min=0)[..., None].expand(-1, -1, -1, 4))
        pred_xyxy, tgt_xyxy = convert(pred_m, "cxcywh", "xyxy"), convert(tgt_boxes, "cxcywh", "xyxy")
        return matched, pred_m, pred_xyxy, tgt_xyxy

    def _union(
        self, matches: list[Tensor], tgt_boxes: Tensor, num_queries: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """DEIMv2's dense one-to-one union of every Hungarian entry's matching in query-slot form:
        ``(B, Q)`` query q or −1, ``(B, Q, 4)`` its target box, the normaliser max(union size, 1)."""
        member, row = dense_one_to_one(torch.cat(matches) if len(matches) > 1 else matches[0], num_queries)
        query = torch.arange(num_queries, device=member.device)
        if tgt_boxes.shape[1]:
            boxes = tgt_boxes.gather(1, row[..., None].expand(-1, -1, 4))
        else:  # no targets in the batch: nothing to gather, every query outside the union
            boxes = tgt_boxes.new_zeros(row.shape + (4,))
        size = member.sum().to(tgt_boxes.dtype)
        return torch.where(member, query, -1), boxes, global_count(size, self.reduce_across_ranks, 1.0)

    def _local(
        self,
        pred: Tensor,
        corners: Tensor,
        refs: Tensor,
        match: Tensor,
        tgt_boxes: Tensor,
        teacher: Tensor,
        teacher_logits: Tensor,
        num_boxes: Tensor,
    ) -> Tensor:
        """``(E, B, 2)``: D-FINE's FGL (over the normaliser) and DDF shares of each entry and image.

        Args:
            pred, corners, refs: ``(E, B, Q, ·)`` boxes (clamped), corner logits, reference boxes.
            match: ``(E, B, K)`` the query of each target slot, −1 for none; tgt_boxes ``(B, K, 4)``.
            teacher, teacher_logits: ``(B, Q, ·)`` the last layer's corners and the main logits.
        """
        num_entries, batch, num_queries, width = corners.shape
        matched = match >= 0
        query = match.clamp(min=0)
        c_m = corners.gather(2, query[..., None].expand(-1, -1, -1, width))
        r_m = refs.gather(2, query[..., None].expand(-1, -1, -1, 4))
        p_m = pred.gather(2, query[..., None].expand(-1, -1, -1, 4))
        tgt = tgt_boxes.expand(num_entries, -1, -1, -1)
        with torch.no_grad():
            iou = iou_xyxy(convert(p_m, "cxcywh", "xyxy"), convert(tgt, "cxcywh", "xyxy"), "iou", _TINY)
        fgl = fgl_loss(c_m, r_m, tgt, iou, up=self.up, reg_scale=self.reg_scale)
        fgl = torch.where(matched, fgl, fgl.new_zeros(())).sum(2) / num_boxes
        # DDF weights: the matched pair's IoU, every other query the teacher's max class probability;
        # unmatched slots scatter into a spare column Q that is dropped
        slot = torch.where(matched, query, num_queries)
        with torch.no_grad():
            conf = teacher_logits.sigmoid().amax(-1)  # (B, Q)
            conf = torch.cat((conf, conf.new_zeros(batch, 1)), 1).expand(num_entries, -1, -1)
            weight = conf.scatter(2, slot, iou)[..., :num_queries]
            hit = torch.zeros_like(conf, dtype=torch.bool).scatter(2, slot, True)[..., :num_queries]
        ddf = ddf_loss(corners, teacher.expand_as(corners), weight, hit, reduction="none")
        return torch.stack((fgl, ddf), 2)

    def _dn_queries(self, positive_idx: list[Tensor], groups: int, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, G·M)`` the denoising query of each (group, target) slot, −1 for padding, slot
        g·M + r for padded row r; and the concatenated indices ``(Σ_b G·n_b,)`` (for the checks).

        ``positive_idx[b]`` lists image b's positive queries group-major: element k is group
        k // n_b's query for image b's target k mod n_b (transformers' ``get_cdn_matched_indices``
        pairs it with ``arange(n_b).tile(G)``). Its position in the padded ``(B, G, M)`` is known from
        the shapes alone, so the host computes it (no device read); the targets' rank among the real
        rows of ``mask`` then maps target k mod n_b to its padded row (rows of a list of targets are
        in order; a :class:`PaddedTargets` may hold them anywhere).
        """
        import numpy as np  # a detloss requirement

        batch, width = mask.shape
        lengths = np.array([int(t.shape[0]) for t in positive_idx], dtype=np.int64)
        n = lengths // groups
        if batch and n.max() > width:
            raise ValueError(
                f"dn_meta['dn_positive_idx'][{int(n.argmax())}] has {int(lengths.max())} queries: "
                f"more than dn_num_group × the {width} target slots"
            )
        image = np.repeat(np.arange(batch), lengths)
        k = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        n_k = np.maximum(np.repeat(n, lengths), 1)
        dest = torch.from_numpy(image * groups * width + (k // n_k) * width + k % n_k).to(mask.device)
        flat = torch.cat([t.reshape(-1) for t in positive_idx]).to(device=mask.device, dtype=torch.long)
        by_rank = (
            flat.new_full((batch * groups * width,), -1).scatter(0, dest, flat).view(batch, groups, width)
        )
        rank = (mask.cumsum(1) - 1).clamp(min=0)  # (B, M): the rank of each real row among its image's
        by_row = by_rank.gather(2, rank[:, None].expand(-1, groups, -1))
        return torch.where(mask[:, None], by_row, -1).flatten(1), flat

    def _cost(self, x: Tensor, pred: Tensor, tgt_boxes: Tensor, labels: Tensor) -> Tensor:
        """``(L, B, Q, M)`` matching cost of every query with its own image's targets (no gradient)."""
        num_layers, batch, num_queries, num_logits = x.shape
        m = labels.shape[1]
        index = labels[None, :, None, :].expand(num_layers, batch, num_queries, m)
        if self.preset == "detr":
            class_cost = -x.softmax(-1).gather(3, index)
        else:
            # gather the logits first when there are fewer targets than classes (the same elementwise cost)
            p = (x.gather(3, index) if m < num_logits else x).sigmoid()
            a, g = self.cost_alpha, self.cost_gamma
            neg = (1 - a) * p**g * -(1 - p + 1e-8).log()
            pos = a * (1 - p) ** g * -(p + 1e-8).log()
            class_cost = pos - neg if m < num_logits else (pos - neg).gather(3, index)
        if self.preset == "lwdetr":
            # transformers' LW-DETR matcher rounds the boxes to float32 for both box costs (cdist once
            # took float32 only); the class cost keeps the logits' dtype
            pred, tgt_boxes = pred.float(), tgt_boxes.float()
        tgt = tgt_boxes.expand(num_layers, -1, -1, -1)
        l1 = torch.cdist(pred, tgt, p=1).to(x.dtype)  # (L, B, Q, M): L1 over the 4 coordinates
        cost = l1.mul_(self.bbox_cost).add_(class_cost, alpha=self.class_cost)
        # the plain GIoU formula (no autograd needed here; broadcasting avoids materialising box pairs)
        giou = iou_forward(
            convert(pred, "cxcywh", "xyxy")[:, :, :, None],
            convert(tgt_boxes, "cxcywh", "xyxy")[None, :, None],
            "giou",
            _TINY,
            False,
            False,
        )
        return cost.sub_(giou.to(x.dtype), alpha=self.giou_cost)

    def _group_cost(self, cost: Tensor) -> Tensor:
        """``(E, B, Q, M)`` → ``(E, G, B, S, M)``: the first G·S queries, S = ⌊Q/G⌋, as G blocks
        (G = 1: unchanged)."""
        groups = self.group_detr
        if groups == 1:
            return cost
        size = cost.shape[2] // groups
        return cost[:, :, : groups * size].unflatten(2, (groups, size)).transpose(1, 2)

    def _ungroup(self, match: Tensor, num_queries: int) -> Tensor:
        """``(E, G, B, M)`` group-local matches → ``(E, B, G·M)`` query indices, slot g·M + r."""
        groups = self.group_detr
        if groups == 1:
            return match
        offset = torch.arange(groups, device=match.device)[:, None, None] * (num_queries // groups)
        return torch.where(match >= 0, match + offset, -1).transpose(1, 2).flatten(2)

    @torch.no_grad()
    def _cardinality(self, x: Tensor, mask: Tensor) -> Tensor:
        """``(E,)`` float32: per entry the batch mean of |non-empty queries − real targets| per image, a
        query non-empty when its argmax is not no-object (``"detr"``) or its highest σ is above 0.5
        (σ of the maximum, as transformers rounds it)."""
        if self.preset == "detr":
            found = x.argmax(-1) != x.shape[-1] - 1
        else:
            found = x.amax(-1).sigmoid() > 0.5
        return (found.sum(2).float() - mask.sum(1).float()).abs().mean(1)

    def _cross_entropy(self, x: Tensor, cls_target: Tensor) -> Tensor:
        """``(L, B)``: per layer and image, Σ_q w_t·CE over the image's queries / Σ w_t over the layer's
        B·Q queries; summed over the images, ``F.cross_entropy``'s weighted mean of the layer."""
        weight = self.class_weight.to(device=x.device, dtype=x.dtype)  # a criterion left on the CPU works too
        ce = F.cross_entropy(x.flatten(0, 2), cls_target.flatten(), weight=weight, reduction="none")
        # the floor only matters without queries (B = 0) or with eos_coef = 0 and nothing matched:
        # 0 there, where F.cross_entropy gives 0/0
        norm = weight[cls_target].sum((1, 2)).clamp(min=_TINY)  # (L,)
        return ce.view(cls_target.shape).sum(2) / norm[:, None]

    # ------------------------------------------------------------------------------------------ checks
    def _width(self) -> tuple[int, str]:
        if self.preset == "detr":
            return self.num_classes + 1, "C + 1 (no-object last)"
        return self.num_classes, "C"

    def _check_preds(
        self, logits: Tensor, boxes: Tensor, targets: Sequence[Mapping[str, Tensor]] | PaddedTargets
    ) -> tuple[Tensor, Tensor]:
        listed = isinstance(targets, Sequence) and not isinstance(targets, Mapping)
        if not (listed or isinstance(targets, PaddedTargets)):
            raise TypeError(f"targets must be a list of dicts or PaddedTargets, got {type(targets).__name__}")
        if isinstance(logits, Tensor) and isinstance(boxes, Tensor) and logits.dim() == 3 == boxes.dim():
            logits, boxes = logits[None], boxes[None]  # one layer
        width, what = self._width()
        logits, boxes = check_set_predictions(("logits", "boxes"), logits, boxes, "L, B, Q", width, what)
        if isinstance(targets, PaddedTargets):
            check_padded_targets(targets, logits.shape[1])
        elif logits.shape[1] != len(targets):
            raise ValueError(f"logits has batch size {logits.shape[1]} but targets has {len(targets)} images")
        return logits, boxes

    def _check_entry(
        self, names: tuple[str, str], logits: Tensor | None, boxes: Tensor | None, dims: str, batch: int
    ) -> tuple[Tensor, Tensor] | None:
        """An optional entry's logits and boxes: both or neither, its batch the decoder's; ``enc``'s
        ``(B, Q_e, ·)`` returned as one entry ``(1, B, Q_e, ·)``."""
        if logits is None and boxes is None:
            return None
        if logits is None or boxes is None:
            raise ValueError(f"{names[0]} and {names[1]} go together: pass both or neither")
        width, what = self._width()
        logits, boxes = check_set_predictions(names, logits, boxes, dims, width, what)
        if logits.dim() == 3:
            logits, boxes = logits[None], boxes[None]
        if logits.shape[1] != batch:
            raise ValueError(f"{names[0]} has batch size {logits.shape[1]} but logits has {batch}")
        return logits, boxes

    def _check_values(
        self,
        x: Tensor,
        pred: Tensor,
        targets: Sequence[Mapping[str, Tensor]] | PaddedTargets,
        padded: PaddedTargets,
        extra: Sequence[tuple[str, Tensor]] = (),
        dn: tuple[Tensor, int, int, list[int]] | None = None,
    ) -> None:
        """One combined check and one sync: finite predictions (``extra``: the encoder's and denoising
        logits and boxes), the padded targets' values when given as a list
        (:func:`detloss.assign.targets.targets_ok`: finite, w > 0, h > 0, class ids in [0, C)), and
        the denoising indices (``dn``: concatenated indices, Q_dn, G, lengths) in [0, Q_dn) with, for
        padded targets, n_b·G of them per image; the offending index is searched only on failure."""
        ok = torch.isfinite(x).all() & torch.isfinite(pred).all()
        for _, t in extra:
            ok = ok & torch.isfinite(t).all()
        if not isinstance(targets, PaddedTargets):
            tgt_ok = targets_ok(padded.boxes, padded.labels, self.num_classes, "cxcywh") | ~padded.mask
            ok = ok & tgt_ok.all()
        if dn is not None:
            flat, num_dn, groups, lengths = dn
            ok = ok & ((flat >= 0) & (flat < num_dn)).all()
            if isinstance(targets, PaddedTargets):
                want = torch.tensor(lengths, device=flat.device)
                ok = ok & (padded.mask.sum(1) * groups == want).all()
        if bool(ok):
            return
        check_finite("logits", x)
        check_finite("boxes", pred)
        for name, t in extra:
            check_finite(name, t)
        if dn is not None:
            flat, num_dn, groups, lengths = dn
            bad = ((flat < 0) | (flat >= num_dn)).nonzero()
            if bad.numel():
                k = int(bad[0, 0])
                b = int(torch.searchsorted(torch.tensor(lengths).cumsum(0), k, right=True))
                raise ValueError(
                    f"dn_meta['dn_positive_idx'][{b}] holds query {int(flat[k])}, "
                    f"outside [0, Q_dn = {num_dn})"
                )
            if isinstance(targets, PaddedTargets):
                raise ValueError(
                    f"dn_meta['dn_positive_idx'] has {lengths} queries per image, but targets.mask counts "
                    f"{(padded.mask.sum(1) * groups).tolist()} = targets × dn_num_group"
                )
        boxes, labels = [t["boxes"] for t in targets], [t["labels"] for t in targets]
        raise_bad_target(boxes, labels, self.num_classes, padded.boxes.dtype, "cxcywh")


def _rtdetr_varifocal(x: Tensor, onehot: Tensor, score: Tensor, alpha: float, gamma: float) -> Tensor:
    """RT-DETR's varifocal loss, elementwise: BCE-with-logits(x, score) · (α·p^γ·(1 − t) + score),
    t the one-hot of the matched class, score = t·IoU, p = σ(x) detached.

    Not :func:`detloss.varifocal_loss` (VarifocalNet's form): here a matched class with IoU 0 has
    weight 0 (VFL gives it the negative term −α·p^γ·log(1 − p)), and p is detached in the weight.
    """
    p = x.detach().sigmoid()
    weight = alpha * p**gamma * (1 - onehot) + score
    return F.binary_cross_entropy_with_logits(x, score, weight=weight, reduction="none")
