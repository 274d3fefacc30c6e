"""DETRLoss against transformers' DETR, Deformable DETR and RT-DETR losses: values, gradients, speed.

    PYTHONPATH=src <side-venv>/bin/python benchmarks/compare_detr.py [--repeats 9] [--skip-speed]

transformers (Apache-2.0) is a peer here, never a dependency: this script runs only where it is
installed (the side venv). References called, on the same inputs:

- ``"detr"``: ``transformers.loss.loss_for_object_detection.ForObjectDetectionLoss`` (DetrConfig
  defaults, ``auxiliary_loss=True``);
- ``"deformable"``: ``DeformableDetrForObjectDetectionLoss`` with ``class_cost=2`` (the original
  repository's; transformers' config default is 1) — transformers weights its ``loss_ce`` by a fixed
  1, so detloss runs with ``cls=1`` for the comparison (its default is the original's 2);
- ``"rtdetr"``: ``RTDetrForObjectDetectionLoss`` (RTDetrConfig defaults, no denoising); its encoder
  proposals (``enc_topk_logits`` / ``enc_topk_bboxes``) are detloss's layer 0, the L decoder layers
  follow (``auxiliary_outputs_*`` keys).
- ``"rtdetr" step`` (``--skip-step`` leaves it out): the whole training step's loss,
  ``RTDetrForObjectDetectionLoss`` with ``denoising_meta_values`` and the encoder's top-k outputs, on
  inputs shaped like an RT-DETR step (Q = 300, L = 6, 80 classes, 20 targets per image, the
  denoising groups laid out as ``get_contrastive_denoising_training_group`` makes them); detloss gets
  the same tensors split into decoder / denoising queries (``enc_logits``, ``dn_logits``, ``dn_meta``)
  and its ``loss_dict()`` is compared key by key.
- ``"lwdetr"`` (``--skip-lwdetr`` leaves it out): ``LwDetrForObjectDetectionLoss`` (LwDetrConfig
  defaults: 13 groups, IA-BCE) on model-shaped outputs (13 × 300 queries, L = 3–6 layers, the encoder's
  ``(B, 13·300, C)`` proposals, 80 classes, 20 targets per image); every key of ``loss_dict()``,
  the total and the gradients; speed and syncs in float32.
- ``"dfine"`` (``--skip-dfine`` leaves it out, ``--only-dfine``): ``DFineForObjectDetectionLoss``
  (DFineConfig defaults) on a model-shaped D-FINE step (L = 6 layers, the L + 1 intermediate outputs,
  corners ``(B, L, Q_dn + Q, 4·33)``, reference points, the encoder's top-k, denoising, Q = 300, 80
  classes, 20 targets per image); every key, the total and the gradients in float64; speed and syncs in
  float32. transformers' ``translate_gt`` writes float64 values into float32 tensors and fails for
  float64 inputs, so here it gets its side distances rounded to float32 (its bin weights are float32
  anyway): the float64 comparison carries that rounding (≈ 1e-7).

Values: float64, max relative error per component summed over layers, of every per-layer value, of
the total and of the gradients (max |Δ| / max |g|). Speed: float32, forward + backward with the
matching, 2 threads, medians over interleaved rounds. Ops and syncs:
:class:`detloss.profiling.DispatchCounter` over one forward + backward; host transfers = calls of
the matcher's device → host copy
(detloss: ``detloss.assign.hungarian.to_host``; transformers: one ``.cpu()`` per layer's matcher call).

Two modes replace the above:

- ``--speed [--threads T] [--repeats 5] [--verbose] [--profile] [--families rtdetr,dfine,deimv2,lwdetr]``:
  one table of the model-shaped training losses at B = ``--batch`` (8): RT-DETR, D-FINE, DEIMv2
  (L = 6, Q = 300, encoder entry, 5 denoising groups of 2·20 queries) and LW-DETR (13 × 300 queries,
  L = 3 and 6), 80 classes, 20 targets in every image; forward + backward of detloss (validate True
  and False) and of transformers' loss function, interleaved, medians of wall-clock and process CPU
  time, ratio, aten ops and syncs of both (:func:`families`, :func:`speed_family`); ``--profile``:
  where detloss's CPU time goes (:func:`profile_family`).
- ``--half [--half-batch 4]``: float16 / bfloat16 model outputs of every preset against the float32
  result, random and saturated (:func:`_saturate`), detloss's non-finite matching costs asserted to be
  0; transformers on the same half tensors, as given and with its ``cdist`` in float32.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import detloss.assign.hungarian as hungarian  # noqa: E402
from detloss.criteria import DETRLoss  # noqa: E402
from detloss.profiling import DispatchCounter  # noqa: E402

try:
    import transformers.loss.loss_d_fine as _dfine_mod
    from transformers import (
        DeformableDetrConfig,
        Deimv2Config,
        DetrConfig,
        DFineConfig,
        LwDetrConfig,
        RTDetrConfig,
    )
    from transformers.loss.loss_d_fine import DFineForObjectDetectionLoss
    from transformers.loss.loss_deformable_detr import DeformableDetrForObjectDetectionLoss
    from transformers.loss.loss_deimv2 import Deimv2ForObjectDetectionLoss
    from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss
    from transformers.loss.loss_lw_detr import LwDetrForObjectDetectionLoss
    from transformers.loss.loss_rt_detr import RTDetrForObjectDetectionLoss

    _translate_gt = _dfine_mod.translate_gt
    _dfine_mod.translate_gt = lambda gt, *a: _translate_gt(gt.float(), *a)  # see the docstring
except ImportError as err:  # a peer that is not installed is reported, not silently dropped
    print(f"transformers not available ({err}): nothing to compare")
    sys.exit(0)

PRESETS = ("detr", "deformable", "rtdetr")
OURS_KW = {"detr": {}, "deformable": {"cls": 1.0}, "rtdetr": {}}
REF_KEYS = {"detr": "loss_ce", "deformable": "loss_ce", "rtdetr": "loss_vfl"}


def make_inputs(preset, L, B, Q, C, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = C + 1 if preset == "detr" else C
    logits = torch.randn(L, B, Q, width, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    boxes = (
        torch.sigmoid(torch.randn(L, B, Q, 4, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    )
    targets = []
    for _ in range(B):
        ctr = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.3 + 0.02
        targets.append(
            {"boxes": torch.cat((ctr, wh), -1).to(dtype), "labels": torch.randint(0, C, (n,), generator=g)}
        )
    return logits, boxes, targets


def reference(preset, C, L):
    """A callable (logits, boxes, targets) → (total, per-layer dicts in detloss's names and order)."""
    if preset == "detr":
        config = DetrConfig(num_labels=C, auxiliary_loss=True, decoder_layers=L)
        fn = ForObjectDetectionLoss
    elif preset == "deformable":
        config = DeformableDetrConfig(num_labels=C, auxiliary_loss=True, decoder_layers=L, class_cost=2)
        fn = DeformableDetrForObjectDetectionLoss
    else:
        config = RTDetrConfig(num_labels=C, auxiliary_loss=True, decoder_layers=L - 1)
        fn = RTDetrForObjectDetectionLoss

    def run(logits, boxes, targets):
        labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
        if preset == "rtdetr":  # layer 0 = the encoder proposals, then the L − 1 decoder layers
            dec_l, dec_b = logits[1:], boxes[1:]
            total, d, _ = fn(
                dec_l[-1],
                labels,
                "cpu",
                dec_b[-1],
                config,
                outputs_class=dec_l.transpose(0, 1),
                outputs_coord=dec_b.transpose(0, 1),
                enc_topk_logits=logits[0],
                enc_topk_bboxes=boxes[0],
            )
            # keys: final layer unsuffixed, decoder layer i: _aux_i, the encoder: _aux_{L-2}
            suffix = [f"_aux_{L - 2}"] + [f"_aux_{i}" for i in range(L - 2)] + [""]
            names = (("cls", "loss_vfl", 1.0), ("bbox", "loss_bbox", 1.0), ("giou", "loss_giou", 1.0))
        else:
            total, d, _ = fn(
                logits[-1], labels, "cpu", boxes[-1], config, outputs_class=logits, outputs_coord=boxes
            )
            suffix = [f"_{i}" for i in range(L - 1)] + [""]
            names = (
                ("cls", "loss_ce", 1.0),
                ("bbox", "loss_bbox", config.bbox_loss_coefficient),
                ("giou", "loss_giou", config.giou_loss_coefficient),
            )
        layers = [{k: d[key + s] * w for k, key, w in names} for s in suffix]
        return total, layers

    return run


def rel(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


def compare_values(preset, L=4, B=4, Q=30, C=7, n=6):
    ours_fn = DETRLoss(C, preset, **OURS_KW[preset])
    ref_fn = reference(preset, C, L)
    worst = {}
    torch.set_default_dtype(torch.float64)  # the references build their class weights in the default dtype
    for seed in range(3):
        lg, bx, tg = make_inputs(preset, L, B, Q, C, n, torch.float64, seed)
        tg[1] = {"boxes": tg[1]["boxes"][:0], "labels": tg[1]["labels"][:0]}  # an image without targets
        out = ours_fn(lg, bx, tg)
        g_ours = torch.autograd.grad(out.total, (lg, bx))
        total, layers = ref_fn(lg, bx, tg)
        g_ref = torch.autograd.grad(total, (lg, bx))
        errs = {"total": rel(out.total.detach(), total.detach())}
        for k in ("cls", "bbox", "giou"):
            errs[k] = rel(out.components[k].detach(), sum(layer[k] for layer in layers).detach())
        errs["layers"] = max(
            rel(o[k].detach(), r[k].detach()) for o, r in zip(out.layers, layers, strict=True) for k in o
        )
        errs["grad logits"], errs["grad boxes"] = (rel(a, b) for a, b in zip(g_ours, g_ref, strict=True))
        for k, v in errs.items():
            worst[k] = max(worst.get(k, 0.0), v)
    torch.set_default_dtype(torch.float32)
    return worst


def count(fn, lg, bx, tg):
    calls = {"n": 0}
    original = hungarian.to_host

    def counted(*tensors):
        calls["n"] += 1
        return original(*tensors)

    hungarian.to_host = counted
    try:
        with DispatchCounter() as c:
            total = fn(lg, bx, tg)
            total.backward()
    finally:
        hungarian.to_host = original
    return c.ops, c.syncs, calls["n"]


def speed(preset, L, B, Q, C, n, repeats):
    lg, bx, tg = make_inputs(preset, L, B, Q, C, n, torch.float32)
    ours_v = DETRLoss(C, preset, **OURS_KW[preset])
    ours_nv = DETRLoss(C, preset, validate=False, **OURS_KW[preset])
    ref_fn = reference(preset, C, L)
    fns = {
        "ours": lambda: torch.autograd.grad(ours_v(lg, bx, tg).total, (lg, bx)),
        "ours nv": lambda: torch.autograd.grad(ours_nv(lg, bx, tg).total, (lg, bx)),
        "transformers": lambda: torch.autograd.grad(ref_fn(lg, bx, tg)[0], (lg, bx)),
    }
    for f in fns.values():
        f()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    ops_ours = count(lambda a, b, t: ours_nv(a, b, t).total, lg, bx, tg)
    ops_ref = count(lambda a, b, t: ref_fn(a, b, t)[0], lg, bx, tg)
    return med, ops_ours, ops_ref


# ----------------------------------------------------------------------------- the whole RT-DETR step
def make_step(B, L=6, Q=300, C=80, n=20, dtype=torch.float64, seed=0, num_denoising=100, full=False):
    """Model-shaped outputs of an RT-DETR training step: ``outputs_class`` ``(B, L, Q_dn + Q, C)`` and
    ``outputs_coord`` (denoising queries first, as the decoder emits them), the encoder's top-k
    ``(B, Q, ·)``, targets with n boxes per image (the last image n // 2 unless ``full``), and
    ``denoising_meta_values`` as ``get_contrastive_denoising_training_group`` builds it:
    G = num_denoising // max n groups of 2·max n queries, positives first, so
    ``dn_positive_idx[b] = [2·M·g + j for g, j < n_b]``."""
    g = torch.Generator().manual_seed(seed)
    counts = [n] * B
    if not full:
        counts[-1] = n // 2
    m = max(counts)
    groups = max(num_denoising // m, 1)
    q_dn = 2 * m * groups

    def rand(*shape, sig=False):
        t = torch.randn(*shape, generator=g, dtype=torch.float64)
        return (t.sigmoid() if sig else t).to(dtype).requires_grad_()

    oc, ob = rand(B, L, q_dn + Q, C), rand(B, L, q_dn + Q, 4, sig=True)
    el, eb = rand(B, Q, C), rand(B, Q, 4, sig=True)
    labels = []
    for k in counts:
        ctr = torch.rand(k, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
        wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * 0.3 + 0.02
        labels.append(
            {
                "boxes": torch.cat((ctr, wh), -1).to(dtype),
                "class_labels": torch.randint(0, C, (k,), generator=g),
            }
        )
    pos = tuple(torch.arange(m * 2 * groups).view(groups, 2 * m)[:, :k].reshape(-1) for k in counts)
    meta = {"dn_positive_idx": pos, "dn_num_group": groups, "dn_num_split": [q_dn, Q]}
    return (oc, ob, el, eb), labels, meta


def step_fns(C, L):
    config = RTDetrConfig(num_labels=C, auxiliary_loss=True, decoder_layers=L)

    def ref(inputs, labels, meta):
        oc, ob, el, eb = inputs
        total, d, _ = RTDetrForObjectDetectionLoss(
            oc[:, -1], labels, oc.device, ob[:, -1], config, oc, ob,
            enc_topk_logits=el, enc_topk_bboxes=eb, denoising_meta_values=meta,
        )  # fmt: skip
        return total, d

    def ours(crit, inputs, targets, meta):
        oc, ob, el, eb = inputs
        q_dn = meta["dn_num_split"][0]
        dec_c, dn_c = oc[:, :, q_dn:].transpose(0, 1), oc[:, :, :q_dn].transpose(0, 1)  # (L, B, ·, ·)
        dec_b, dn_b = ob[:, :, q_dn:].transpose(0, 1), ob[:, :, :q_dn].transpose(0, 1)
        return crit(
            dec_c, dec_b, targets, enc_logits=el, enc_boxes=eb, dn_logits=dn_c, dn_boxes=dn_b, dn_meta=meta
        )

    return ref, ours


def compare_step(B_values=(2, 4, 8), L=6, Q=300, C=80, n=20):
    """Worst relative errors over batch sizes: total, every loss-dict key, gradients of the four inputs;
    and the main term with the denoising queries left in (transformers 5.24 drops them)."""
    ref, ours = step_fns(C, L)
    crit = DETRLoss(C, "rtdetr")
    worst = {}
    torch.set_default_dtype(torch.float64)
    for B in B_values:
        inputs, labels, meta = make_step(B, L, Q, C, n, seed=B)
        targets = [{"boxes": t["boxes"], "labels": t["class_labels"]} for t in labels]
        total, d = ref(inputs, labels, meta)
        out = ours(crit, inputs, targets, meta)
        mine = out.loss_dict()
        assert list(mine) == list(d), (list(mine)[:6], list(d)[:6])
        errs = {"total": rel(out.total.detach(), total.detach()), "keys": len(d)}
        errs["every key"] = max(rel(mine[k].detach(), d[k].detach()) for k in d)
        for name, a, b in zip(
            ("grad class", "grad coord", "grad enc logits", "grad enc boxes"),
            torch.autograd.grad(out.total, inputs),
            torch.autograd.grad(total, inputs),
            strict=True,
        ):
            errs[name] = rel(a, b)
        # with the denoising queries inside the main (Hungarian) term the last layer's value moves
        oc, ob = inputs[0], inputs[1]
        with_dn = crit(oc[:, -1:].transpose(0, 1), ob[:, -1:].transpose(0, 1), targets)
        main = sum(d[k] for k in ("loss_vfl", "loss_bbox", "loss_giou"))
        errs["main with dn queries"] = rel(with_dn.total.detach(), main.detach())
        for k, v in errs.items():
            worst[k] = max(worst.get(k, 0.0), v)
    torch.set_default_dtype(torch.float32)
    return worst


def speed_step(B, repeats, L=6, Q=300, C=80, n=20):
    ref, ours = step_fns(C, L)
    inputs, labels, meta = make_step(B, L, Q, C, n, dtype=torch.float32)
    targets = [{"boxes": t["boxes"], "labels": t["class_labels"]} for t in labels]
    ours_v, ours_nv = DETRLoss(C, "rtdetr"), DETRLoss(C, "rtdetr", validate=False)
    fns = {
        "ours": lambda: torch.autograd.grad(ours(ours_v, inputs, targets, meta).total, inputs),
        "ours nv": lambda: torch.autograd.grad(ours(ours_nv, inputs, targets, meta).total, inputs),
        "transformers": lambda: torch.autograd.grad(ref(inputs, labels, meta)[0], inputs),
    }
    for f in fns.values():
        f()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    counts = {}
    for k, fn in (
        ("ours", lambda: ours(ours_nv, inputs, targets, meta).total),
        ("transformers", lambda: ref(inputs, labels, meta)[0]),
    ):
        calls = {"n": 0}
        original = hungarian.to_host

        def counted(*t, _o=original, _c=calls):
            _c["n"] += 1
            return _o(*t)

        hungarian.to_host = counted
        try:
            with DispatchCounter() as c:
                fn().backward()
        finally:
            hungarian.to_host = original
        counts[k] = (c.ops, c.syncs, calls["n"])
    return med, counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-values", action="store_true")
    ap.add_argument("--cases", default="sparse,dense", help="comma-separated: sparse, dense")
    ap.add_argument("--skip-step", action="store_true", help="leave out the whole RT-DETR step")
    ap.add_argument("--skip-presets", action="store_true", help="only the whole RT-DETR step")
    ap.add_argument("--skip-lwdetr", action="store_true", help="leave out LW-DETR")
    ap.add_argument("--only-lwdetr", action="store_true", help="only LW-DETR")
    ap.add_argument("--skip-dfine", action="store_true", help="leave out D-FINE")
    ap.add_argument("--only-dfine", action="store_true", help="only D-FINE")
    ap.add_argument("--speed", action="store_true", help="only the speed table of the model-shaped losses")
    ap.add_argument("--half", action="store_true", help="only float16 / bfloat16 against float32")
    ap.add_argument("--batch", type=int, default=8, help="--speed's B")
    ap.add_argument("--half-batch", type=int, default=4, help="--half's B")
    ap.add_argument(
        "--families",
        default="",
        help="--speed, --half: comma-separated, of rtdetr,dfine,deimv2,lwdetr (and detr,deformable: --half)",
    )
    ap.add_argument("--profile", action="store_true", help="--speed: torch.profiler table of detloss")
    ap.add_argument("--verbose", action="store_true", help="--speed: sync ops and min/max times")
    ap.add_argument("--skip-deimv2", action="store_true", help="leave out DEIMv2")
    ap.add_argument("--only-deimv2", action="store_true", help="only DEIMv2")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {threads} threads")
    if args.speed or args.half:
        if args.speed:
            run_speed(args)
        if args.half:
            run_half(args)
        return
    if not args.skip_deimv2:
        run_dfine(args, "deimv2")
    if args.only_deimv2:
        return
    if not args.skip_dfine:
        run_dfine(args)
    if args.only_dfine:
        return
    if not args.skip_lwdetr:
        run_lw(args)
    if args.only_lwdetr:
        return
    if not args.skip_step:
        run_step(args)
    if args.skip_presets:
        return
    if not args.skip_values:
        print("\nvalues (float64, L=4, B=4, Q=30, C=7, 6 targets/img, one image empty; max rel err, 3 seeds)")
        keys = ("total", "cls", "bbox", "giou", "layers", "grad logits", "grad boxes")
        print(f"{'preset':<11}" + "".join(f"{k:>13}" for k in keys))
        for preset in PRESETS:
            w = compare_values(preset)
            print(f"{preset:<11}" + "".join(f"{w[k]:>13.2e}" for k in keys))
    if args.skip_speed:
        return
    print("\nspeed: float32, forward + backward incl. matching, median ms over interleaved rounds")
    print("ours = validate=True, nv = validate=False; ratio = transformers / ours; per call: aten ops,")
    print(
        "host syncs seen by DispatchCounter (+ device -> host cost transfers: ours 1, transformers 1 per "
        "layer)"
    )
    cases = {
        "sparse": ("B=8 Q=300 L=6 C=91 20/img", 6, 8, 300, 91, 20),
        "dense": ("B=4 Q=300 L=6 C=2 200/img", 6, 4, 300, 2, 200),
    }
    print(
        f"{'case':<27}{'preset':<11}{'ours':>8}{'nv':>8}{'transf.':>9}{'ratio':>7}{'ratio nv':>9}"
        f"{'ops':>6}{'transf.':>8}{'syncs':>7}{'transf.':>8}"
    )
    for key in args.cases.split(","):
        name, L, B, Q, C, n = cases[key]
        for preset in PRESETS:
            med, (o_ops, o_sync, o_tr), (r_ops, r_sync, _) = speed(preset, L, B, Q, C, n, args.repeats)
            t = med["transformers"]
            print(
                f"{name:<27}{preset:<11}{med['ours']:>8.1f}{med['ours nv']:>8.1f}{t:>9.1f}"
                f"{t / med['ours']:>6.1f}x{t / med['ours nv']:>8.1f}x{o_ops:>6}{r_ops:>8}"
                f"{f'{o_sync}+{o_tr}':>7}{f'{r_sync}+{L}':>8}"
            )


def run_step(args):
    if not args.skip_values:
        print(
            "\nthe whole RT-DETR step (float64, Q=300, L=6, C=80, 20 targets/img, last image 10, dn groups "
            "as the model makes them; max rel err over B = 2, 4, 8)"
        )
        w = compare_step()
        for k, v in w.items():
            print(f"  {k:<22}{v:>10.2e}" if k != "keys" else f"  {k:<22}{v:>10}")
    if args.skip_speed:
        return
    print("\nthe whole RT-DETR step, float32 fwd+bwd, median ms (interleaved); ops, syncs+cost transfers")
    for B in (2, 8):
        med, c = speed_step(B, args.repeats)
        t = med["transformers"]
        print(
            f"  B={B}: ours {med['ours']:.1f} nv {med['ours nv']:.1f} transformers {t:.1f} "
            f"ratio {t / med['ours']:.1f}x (nv {t / med['ours nv']:.1f}x); ops {c['ours'][0]} vs "
            f"{c['transformers'][0]}; syncs {c['ours'][1]}+{c['ours'][2]} vs {c['transformers'][1]}+"
            f"{L_MATCHER_CALLS}"
        )


# ----------------------------------------------------------------------------- LW-DETR / RF-DETR
def make_lw(B, L, G=13, Q=300, C=80, n=20, dtype=torch.float64, seed=0, full=False):
    """LW-DETR's training outputs: ``outputs_class`` ``(L, B, G·Q, C)`` / ``outputs_coord`` (the last
    layer is ``logits`` / ``pred_boxes``), the encoder's ``(B, G·Q, ·)``; n targets per image (the
    last image n // 2)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, sig=False):
        t = torch.randn(*shape, generator=g, dtype=torch.float64)
        return (t.sigmoid() if sig else t).to(dtype).requires_grad_()

    inputs = (
        rand(L, B, G * Q, C),
        rand(L, B, G * Q, 4, sig=True),
        rand(B, G * Q, C),
        rand(B, G * Q, 4, sig=True),
    )
    labels = []
    for b in range(B):
        k = n if b < B - 1 or full else n // 2
        ctr = torch.rand(k, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
        wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * 0.3 + 0.02
        labels.append(
            {
                "boxes": torch.cat((ctr, wh), -1).to(dtype),
                "class_labels": torch.randint(0, C, (k,), generator=g),
            }
        )
    return inputs, labels


def lw_fns(C, L):
    config = LwDetrConfig(num_labels=C, decoder_layers=L)

    def ref(inputs, labels):
        oc, ob, el, eb = inputs
        total, d, _ = LwDetrForObjectDetectionLoss(oc[-1], labels, oc.device, ob[-1], config, oc, ob, el, eb)
        return total, d

    def ours(crit, inputs, targets):
        oc, ob, el, eb = inputs
        return crit(oc, ob, targets, enc_logits=el, enc_boxes=eb)

    return ref, ours


def compare_lw(cases=((2, 6), (4, 4), (8, 3)), C=80):
    """Worst relative errors over (B, L): total, every loss-dict key, gradients of the four inputs."""
    worst = {}
    torch.set_default_dtype(torch.float64)
    for B, L in cases:
        ref, ours = lw_fns(C, L)
        inputs, labels = make_lw(B, L, C=C, seed=B)
        targets = [{"boxes": t["boxes"], "labels": t["class_labels"]} for t in labels]
        total, d = ref(inputs, labels)
        out = ours(DETRLoss(C, "lwdetr"), inputs, targets)
        mine = out.loss_dict()
        assert list(mine) == list(d), (list(mine)[:6], list(d)[:6])
        errs = {"total": rel(out.total.detach(), total.detach()), "keys": len(d)}
        errs["every key"] = max(rel(mine[k].detach(), d[k].detach()) for k in d)
        for name, a, b in zip(
            ("grad class", "grad coord", "grad enc logits", "grad enc boxes"),
            torch.autograd.grad(out.total, inputs),
            torch.autograd.grad(total, inputs),
            strict=True,
        ):
            errs[name] = rel(a, b)
        for k, v in errs.items():
            worst[k] = max(worst.get(k, 0.0), v)
    torch.set_default_dtype(torch.float32)
    return worst


def speed_lw(B, L, repeats, C=80):
    ref, ours = lw_fns(C, L)
    inputs, labels = make_lw(B, L, C=C, dtype=torch.float32)
    targets = [{"boxes": t["boxes"], "labels": t["class_labels"]} for t in labels]
    ours_v, ours_nv = DETRLoss(C, "lwdetr"), DETRLoss(C, "lwdetr", validate=False)
    fns = {
        "ours": lambda: torch.autograd.grad(ours(ours_v, inputs, targets).total, inputs),
        "ours nv": lambda: torch.autograd.grad(ours(ours_nv, inputs, targets).total, inputs),
        "transformers": lambda: torch.autograd.grad(ref(inputs, labels)[0], inputs),
    }
    for f in fns.values():
        f()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    counts = {}
    for k, fn in (
        ("ours", lambda: ours(ours_nv, inputs, targets).total),
        ("transformers", lambda: ref(inputs, labels)[0]),
    ):
        with DispatchCounter() as c:
            fn().backward()
        counts[k] = (c.ops, c.syncs)
    return med, counts


def run_lw(args):
    if not args.skip_values:
        print(
            "\nLW-DETR (float64, 13 groups × 300 queries, C=80, 20 targets/img, last image 10, encoder "
            "proposals; max rel err over (B, L) = (2, 6), (4, 4), (8, 3))"
        )
        w = compare_lw()
        for k, v in w.items():
            print(f"  {k:<22}{v:>10.2e}" if k != "keys" else f"  {k:<22}{v:>10}")
    if args.skip_speed:
        return
    print("\nLW-DETR, float32 fwd+bwd, L=6, median ms (interleaved); ops, syncs")
    for B in (2, 8):
        med, c = speed_lw(B, 6, args.repeats)
        t = med["transformers"]
        print(
            f"  B={B}: ours {med['ours']:.1f} nv {med['ours nv']:.1f} transformers {t:.1f} "
            f"ratio {t / med['ours']:.1f}x (nv {t / med['ours nv']:.1f}x); ops {c['ours'][0]} vs "
            f"{c['transformers'][0]}; syncs {c['ours'][1]} vs {c['transformers'][1]}"
        )


# ----------------------------------------------------------------------------- D-FINE
NUM_BINS = 32


def make_dfine(B, L=6, Q=300, C=80, n=20, dtype=torch.float64, seed=0, full=False):
    """A D-FINE step: the RT-DETR step's tensors with L + 1 intermediate outputs (the pre-head first),
    ``predicted_corners`` ``(B, L, Q_dn + Q, 4·(N + 1))`` and ``initial_reference_points``; boxes spill
    a little outside [0, 1] (the loss clamps them)."""
    (oc, ob, el, eb), labels, meta = make_step(B, L + 1, Q, C, n, dtype, seed, full=full)
    g = torch.Generator().manual_seed(seed + 100)
    q_all = oc.shape[2]
    with torch.no_grad():
        ob.mul_(1.1).sub_(0.05)
    corners = (torch.randn(B, L, q_all, 4 * (NUM_BINS + 1), generator=g, dtype=torch.float64) * 2).to(dtype)
    refs = (torch.rand(B, L, q_all, 4, generator=g, dtype=torch.float64) * 0.5 + 0.2).to(dtype)
    return (oc, ob, el, eb, corners.requires_grad_()), refs, labels, meta


def _stable_argsort(*args, **kwargs):
    return _argsort(*args, **{**kwargs, "stable": True})


_argsort = torch.argsort


def dfine_fns(C, L, preset="dfine"):
    """D-FINE's or DEIMv2's loss function and ours. DEIMv2's union sorts its pairs by count with an
    unstable sort (ties broken arbitrarily); for a comparison the reference runs with a stable sort,
    which gives detloss's rule (the lowest target among equal counts)."""
    if preset == "dfine":
        config, loss_fn = DFineConfig(num_labels=C, decoder_layers=L), DFineForObjectDetectionLoss
    else:
        config, loss_fn = Deimv2Config(num_labels=C, decoder_layers=L), Deimv2ForObjectDetectionLoss

    def ref(inputs, refs, labels, meta):
        oc, ob, el, eb, corners = inputs
        torch.argsort = _stable_argsort
        try:
            total, d, _ = loss_fn(
                oc[:, -1], labels, oc.device, ob[:, -1], config, oc, ob, enc_topk_logits=el,
                enc_topk_bboxes=eb, denoising_meta_values=meta, predicted_corners=corners,
                initial_reference_points=refs,
            )  # fmt: skip
        finally:
            torch.argsort = _argsort
        return total, d

    def ours(crit, inputs, refs, targets, meta):
        oc, ob, el, eb, corners = inputs
        k = meta["dn_num_split"][0]

        def split(t):  # (B, L, Q_dn + Q, ·) → decoder and denoising parts, (L, B, ·, ·)
            return t[:, :, k:].transpose(0, 1), t[:, :, :k].transpose(0, 1)

        (c, dc), (b, db), (co, dco), (r, dr) = split(oc), split(ob), split(corners), split(refs)
        return crit(
            c, b, targets, enc_logits=el, enc_boxes=eb, dn_logits=dc, dn_boxes=db, dn_meta=meta,
            corners=co, reference_points=r, dn_corners=dco, dn_reference_points=dr,
        )  # fmt: skip

    return ref, ours


def compare_dfine(B_values=(2, 4, 8), L=6, Q=300, C=80, n=20, preset="dfine"):
    ref, ours = dfine_fns(C, L, preset)
    crit = DETRLoss(C, preset)
    worst = {}
    for B in B_values:
        inputs, refs, labels, meta = make_dfine(B, L, Q, C, n, seed=B)
        targets = [{"boxes": t["boxes"], "labels": t["class_labels"]} for t in labels]
        total, d = ref(inputs, refs, labels, meta)
        out = ours(crit, inputs, refs, targets, meta)
        mine = out.loss_dict()
        assert list(mine) == list(d), (list(mine)[:6], list(d)[:6])
        errs = {"total": rel(out.total.detach(), total.detach()), "keys": len(d)}
        errs["every key"] = max(rel(mine[k].detach(), d[k].detach()) for k in d)
        names = ("grad class", "grad coord", "grad enc logits", "grad enc boxes", "grad corners")
        mine_g, ref_g = torch.autograd.grad(out.total, inputs), torch.autograd.grad(total, inputs)
        for name, a, b in zip(names, mine_g, ref_g, strict=True):
            errs[name] = rel(a, b)
        errs["per_image sum"] = rel(out.per_image.sum().detach(), total.detach())
        for k, v in errs.items():
            worst[k] = max(worst.get(k, 0.0), v)
    return worst


def speed_dfine(B, repeats, L=6, Q=300, C=80, n=20, preset="dfine"):
    ref, ours = dfine_fns(C, L, preset)
    inputs, refs, labels, meta = make_dfine(B, L, Q, C, n, dtype=torch.float32)
    targets = [{"boxes": t["boxes"], "labels": t["class_labels"]} for t in labels]
    ours_v, ours_nv = DETRLoss(C, preset), DETRLoss(C, preset, validate=False)
    fns = {
        "ours": lambda: torch.autograd.grad(ours(ours_v, inputs, refs, targets, meta).total, inputs),
        "ours nv": lambda: torch.autograd.grad(ours(ours_nv, inputs, refs, targets, meta).total, inputs),
        "transformers": lambda: torch.autograd.grad(ref(inputs, refs, labels, meta)[0], inputs),
    }
    for f in fns.values():
        f()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    counts = {}
    for k, fn in (
        ("ours", lambda: ours(ours_nv, inputs, refs, targets, meta).total),
        ("transformers", lambda: ref(inputs, refs, labels, meta)[0]),
    ):
        with DispatchCounter() as c:
            fn().backward()
        counts[k] = (c.ops, c.syncs)
    return med, counts


def run_dfine(args, preset="dfine"):
    name = {"dfine": "D-FINE", "deimv2": "DEIMv2"}[preset]
    if not args.skip_values:
        print(
            f"\n{name} step (float64, Q=300, L=6, C=80, 20 targets/img, last image 10, denoising, encoder; "
            "max rel err over B = 2, 4, 8)"
        )
        w = compare_dfine(preset=preset)
        for k, v in w.items():
            print(f"  {k:<22}{v:>10.2e}" if k != "keys" else f"  {k:<22}{v:>10}")
    if args.skip_speed:
        return
    print(f"\n{name} step, float32 fwd+bwd, median ms (interleaved); ops, syncs")
    for B in (2, 8):
        med, c = speed_dfine(B, args.repeats, preset=preset)
        t = med["transformers"]
        print(
            f"  B={B}: ours {med['ours']:.1f} nv {med['ours nv']:.1f} transformers {t:.1f} "
            f"ratio {t / med['ours']:.1f}x (nv {t / med['ours nv']:.1f}x); ops {c['ours'][0]} vs "
            f"{c['transformers'][0]}; syncs {c['ours'][1]} vs {c['transformers'][1]}"
        )


# ----------------------------------------------------------------------------- --speed and --half
def families(B, C=80, n=20, L=6, Q=300, lw_layers=(3, 6), dtype=torch.float32, seed=0, which=None):
    """The model-shaped training losses, float32 inputs built as the models emit them, n targets in
    every image: name → (description, preset, tensors, ours(crit, tensors), ref(tensors)).

    ``tensors`` are the model outputs (a dict of float tensors; those that need a gradient have one);
    ``ours`` returns detloss's :class:`SetLossResult`, ``ref`` transformers' total."""
    out = {}
    want = set(which) if which else None

    def wanted(name):
        return want is None or name.split(" ")[0] in want

    if wanted("rtdetr"):
        ref_s, ours_s = step_fns(C, L)
        (oc, ob, el, eb), labels, meta = make_step(B, L, Q, C, n, dtype, seed, full=True)
        targets = [{"boxes": t["boxes"], "labels": t["class_labels"]} for t in labels]
        q_dn = meta["dn_num_split"][0]
        out["rtdetr"] = (
            f"L={L} Q={Q}+{q_dn} dn (G={meta['dn_num_group']}), enc",
            "rtdetr",
            {"outputs_class": oc, "outputs_coord": ob, "enc_logits": el, "enc_boxes": eb},
            lambda crit, t, _o=ours_s, _tg=targets, _m=meta: _o(crit, tuple(t.values()), _tg, _m),
            lambda t, _r=ref_s, _l=labels, _m=meta: _r(tuple(t.values()), _l, _m)[0],
        )
    for local in ("dfine", "deimv2"):
        if not wanted(local):
            continue
        ref_d, ours_d = dfine_fns(C, L, local)
        (oc, ob, el, eb, co), refs, labels, meta = make_dfine(B, L, Q, C, n, dtype, seed, full=True)
        targets = [{"boxes": t["boxes"], "labels": t["class_labels"]} for t in labels]
        q_dn = meta["dn_num_split"][0]
        names = ("outputs_class", "outputs_coord", "enc_logits", "enc_boxes", "corners")
        out[local] = (
            f"L={L} Q={Q}+{q_dn} dn (G={meta['dn_num_group']}), enc, corners 4x33",
            local,
            dict(zip(names, (oc, ob, el, eb, co), strict=True)) | {"reference_points": refs},
            lambda crit, t, _o=ours_d, _tg=targets, _m=meta, _n=names: _o(
                crit, tuple(t[k] for k in _n), t["reference_points"], _tg, _m
            ),
            lambda t, _r=ref_d, _l=labels, _m=meta, _n=names: _r(
                tuple(t[k] for k in _n), t["reference_points"], _l, _m
            )[0],
        )
    for lw_l in lw_layers:
        if not wanted("lwdetr"):
            break
        ref_l, ours_l = lw_fns(C, lw_l)
        (oc, ob, el, eb), labels = make_lw(B, lw_l, Q=Q, C=C, n=n, dtype=dtype, seed=seed, full=True)
        targets = [{"boxes": t["boxes"], "labels": t["class_labels"]} for t in labels]
        out[f"lwdetr L={lw_l}"] = (
            f"L={lw_l} Q=13x{Q}={13 * Q}, enc" + (" (LwDetrConfig default L)" if lw_l == 3 else ""),
            "lwdetr",
            {"outputs_class": oc, "outputs_coord": ob, "enc_logits": el, "enc_boxes": eb},
            lambda crit, t, _o=ours_l, _tg=targets: _o(crit, tuple(t.values()), _tg),
            lambda t, _r=ref_l, _l=labels: _r(tuple(t.values()), _l)[0],
        )
    return out


def _grad_inputs(tensors):
    return tuple(t for t in tensors.values() if t.requires_grad)


def _count_sync(fn):
    """(aten ops, host syncs, matcher cost transfers) of one forward + backward."""
    calls = {"n": 0}
    original = hungarian.to_host

    def counted(*t):
        calls["n"] += 1
        return original(*t)

    hungarian.to_host = counted
    try:
        with DispatchCounter() as c:
            fn().backward()
    finally:
        hungarian.to_host = original
    return c.ops, c.syncs, calls["n"], c.sync_ops


def run_speed(args):
    """One table: forward + backward of each family's whole training loss, detloss against transformers,
    medians of interleaved rounds; ops and syncs of one call of each."""
    B = args.batch
    fams = families(B, which=args.families.split(",") if args.families else None)
    print(
        f"\n--speed: float32 forward + backward (torch.autograd.grad w.r.t. every model output), B={B}, "
        f"C=80, 20 targets/img, {torch.get_num_threads()} threads, median of {args.repeats} interleaved "
        "rounds; detloss = DETRLoss (validate=True), nv = validate=False; ratio = transformers / detloss; "
        "syncs = DispatchCounter syncs (+ matcher cost transfers: detloss's to_host calls; transformers "
        "one .cpu() per matched layer, not seen by the counter on the CPU); 'CPU time': the same rounds' "
        "process CPU time (all threads; the time spent waiting for a core excluded)"
    )
    head = (
        f"{'family':<14}{'shape':<50}{'detloss':>9}{'nv':>9}{'transf.':>10}{'ratio':>7}{'nv':>7}"
        f"{'ops':>6}{'transf.':>8}{'syncs':>7}{'nv':>5}{'transf.':>8}"
    )
    print(head)
    return [speed_family(args, name, *fam) for name, fam in fams.items()]


def speed_family(args, name, shape, preset, tensors, ours, ref):
    """One row of :func:`run_speed`."""
    crit_v, crit_nv = DETRLoss(80, preset), DETRLoss(80, preset, validate=False)
    grads = _grad_inputs(tensors)
    fns = {
        "detloss": lambda: torch.autograd.grad(ours(crit_v, tensors).total, grads),
        "nv": lambda: torch.autograd.grad(ours(crit_nv, tensors).total, grads),
        "transformers": lambda: torch.autograd.grad(ref(tensors), grads),
    }
    for f in fns.values():
        f()  # warm-up
    times = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, f in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    med_cpu = {k: statistics.median(v) * 1e3 for k, v in cpu.items()}
    c_v = _count_sync(lambda: ours(crit_v, tensors).total)
    c_nv = _count_sync(lambda: ours(crit_nv, tensors).total)
    c_r = _count_sync(lambda: ref(tensors))
    t = med["transformers"]
    print(
        f"{name:<14}{shape:<50}{med['detloss']:>9.1f}{med['nv']:>9.1f}{t:>10.1f}"
        f"{t / med['detloss']:>6.1f}x{t / med['nv']:>6.1f}x{c_nv[0]:>6}{c_r[0]:>8}"
        f"{f'{c_v[1]}+{c_v[2]}':>7}{f'{c_nv[1]}+{c_nv[2]}':>5}{c_r[1]:>8}",
        flush=True,
    )
    t = med_cpu["transformers"]
    print(
        f"{'  CPU time':<64}{med_cpu['detloss']:>9.1f}{med_cpu['nv']:>9.1f}{t:>10.1f}"
        f"{t / med_cpu['detloss']:>6.1f}x{t / med_cpu['nv']:>6.1f}x",
        flush=True,
    )
    if args.verbose:
        print(f"    transformers' syncs by op: {dict(c_r[3])}; detloss (validate=True): {dict(c_v[3])}")
        spread = {k: (min(v) * 1e3, max(v) * 1e3) for k, v in times.items()}
        print("    min / max ms: " + ", ".join(f"{k} {a:.0f}/{b:.0f}" for k, (a, b) in spread.items()))
    if args.profile:
        profile_family(name, lambda: ours(crit_nv, tensors).total)
    return name, med, med_cpu, c_v, c_nv, c_r


def profile_family(name, fn, top=14):
    """Where detloss's forward + backward goes: the process CPU time of its parts (forward: the input
    checks, the matching costs, ``hungarian_match_all`` = transfer + scipy, the class/L1/GIoU terms,
    D-FINE's FGL/DDF, the rest; then the backward), medians of 3 calls; and torch.profiler's self CPU
    time per aten op of one call."""
    from torch.profiler import ProfilerActivity, profile

    import detloss.criteria.detr as detr_mod

    parts = ("_check_values", "_cost", "_terms", "_local")
    spent = {}

    def timed(owner, attr, key):
        original = getattr(owner, attr)

        def wrapper(*a, **k):
            c0 = time.process_time()
            try:
                return original(*a, **k)
            finally:
                spent[key] = spent.get(key, 0.0) + time.process_time() - c0

        setattr(owner, attr, wrapper)
        return original

    saved = {p: timed(DETRLoss, p, p) for p in parts}
    saved_match = timed(detr_mod, "hungarian_match_all", "hungarian_match_all")
    runs = []
    try:
        for _ in range(3):
            spent.clear()
            c0 = time.process_time()
            total = fn()
            c1 = time.process_time()
            total.backward()
            c2 = time.process_time()
            run = dict(spent)
            run["forward, the rest"] = (c1 - c0) - sum(spent.values())
            run["backward"] = c2 - c1
            run["all"] = c2 - c0
            runs.append(run)
    finally:
        for p, original in saved.items():
            setattr(DETRLoss, p, original)
        detr_mod.hungarian_match_all = saved_match
    med = {k: statistics.median(r.get(k, 0.0) for r in runs) * 1e3 for k in runs[0]}
    print(
        f"    detloss (validate=False) {name}, CPU ms (median of 3): "
        + ", ".join(f"{k} {v:.1f}" for k, v in med.items())
    )
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn().backward()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=44)
    print("\n".join("    " + line for line in table.splitlines()))


def _cast(tensors, dtype):
    return {k: v.detach().to(dtype).requires_grad_(v.requires_grad) for k, v in tensors.items()}


def half_families(B, C=80, n=20, L=6, Q=300, seed=0, which=None):
    """--half's cases: the "detr" and "deformable" presets (decoder layers only), and the model-shaped
    RT-DETR, D-FINE, DEIMv2 and LW-DETR (L = 3) losses of :func:`families`."""
    out = {}
    for preset in ("detr", "deformable"):
        if which and preset not in which:
            continue
        lg, bx, tg = make_inputs(preset, L, B, Q, C, n, torch.float32, seed)
        ref_fn = reference(preset, C, L)
        out[preset] = (
            f"L={L} Q={Q}",
            preset,
            {"logits": lg, "boxes": bx},
            lambda crit, t, _tg=tg: crit(t["logits"], t["boxes"], _tg),
            lambda t, _r=ref_fn, _tg=tg: _r(t["logits"], t["boxes"], _tg)[0],
        )
    out.update(families(B, C, n, L, Q, lw_layers=(3,), seed=seed, which=which))
    return out


def _saturate(tensors):
    """A harder copy: every 7th logit set to ±30 (σ rounds to 0 or 1 in every float format) and one
    predicted box per image of zero width and height."""
    out = {}
    for k, v in tensors.items():
        v = v.detach().clone()
        if k in ("outputs_class", "enc_logits", "logits"):
            flat = v.view(-1)
            flat[::7] = 30.0
            flat[3::14] = -30.0
        elif k in ("outputs_coord", "enc_boxes", "boxes"):
            v[..., 0, 2:] = 0.0
        out[k] = v.requires_grad_(tensors[k].requires_grad)
    return out


class _CdistUpcast:
    """transformers' matchers call ``torch.cdist``, which has no float16/bfloat16 kernel on the CPU
    (it has on CUDA): this context computes it in float32 and casts back, so the rest of the
    reference runs in the half type as it would on a GPU."""

    def __enter__(self):
        self.original = torch.cdist
        torch.cdist = lambda a, b, *x, **k: self.original(a.float(), b.float(), *x, **k).to(a.dtype)

    def __exit__(self, *exc):
        torch.cdist = self.original


class _NonFiniteCosts:
    """Counts the non-finite matching costs: transformers' matchers pass their cost through
    ``torch.nan_to_num`` (NaN and ±inf → the dtype's max) before scipy; detloss's reach the host in
    ``hungarian.to_host``."""

    def __enter__(self):
        self.n = 0
        self.nan_to_num, self.to_host = torch.nan_to_num, hungarian.to_host

        def nan_to_num(t, *a, **k):
            self.n += int((~torch.isfinite(t)).sum())
            return self.nan_to_num(t, *a, **k)

        def to_host(*tensors):
            out = self.to_host(*tensors)
            self.n += sum(int((~np.isfinite(a)).sum()) for a in out if a.dtype.kind == "f")
            return out

        torch.nan_to_num, hungarian.to_host = nan_to_num, to_host
        return self

    def __exit__(self, *exc):
        torch.nan_to_num, hungarian.to_host = self.nan_to_num, self.to_host


def _ref_half(ref, tensors, base, dt, upcast):
    try:
        with _NonFiniteCosts() as bad:
            if upcast:
                with _CdistUpcast():
                    r = ref(_cast(tensors, dt))
            else:
                r = ref(_cast(tensors, dt))
        r_val = float(r.detach())
        costs = f", {bad.n} non-finite costs" if bad.n else ""
        if not math.isfinite(r_val):
            return f"{str(r.dtype).split('.')[1]} {r_val}{costs}"
        return f"{str(r.dtype).split('.')[1]} rel {abs(r_val - base) / abs(base):.2e}{costs}"
    except Exception as err:  # noqa: BLE001 - the reference's own behaviour is the finding
        return f"{type(err).__name__}: {str(err).splitlines()[0][:60]}"


def run_half(args):
    """float16 / bfloat16 model outputs (every float input cast) against the float32 result of the same
    inputs: detloss's total and transformers' on the same half inputs (targets stay float32, as a
    data loader gives them); random outputs, then saturated ones (:func:`_saturate`)."""
    B = args.half_batch
    print(
        f"\n--half: |total(half inputs) - total(float32 inputs)| / |total(float32)|, B={B}, C=80, 20 "
        "targets/img; 'grad ok': every gradient finite; transformers on the same half tensors as they are, "
        "and with torch.cdist computed in float32 (CPU cdist has no half kernel; CUDA's has); non-finite "
        "costs: entries of the matching cost that were NaN or inf before the matcher cleaned them (detloss: "
        "asserted 0, at the host)"
    )
    print(
        f"{'case':<14}{'inputs':<11}{'dtype':<10}{'detloss rel':>12}{'grad ok':>8}  {'transformers':<62}"
        "cdist upcast"
    )
    which = args.families.split(",") if args.families else None
    for name, (_, preset, tensors, ours, ref) in half_families(B, which=which).items():
        crit = DETRLoss(80, preset)
        for kind in ("random", "saturated"):
            ins = tensors if kind == "random" else _saturate(tensors)
            base = float(ours(crit, ins).total.detach())
            ref_base = float(ref(ins).detach())
            for dt in (torch.float16, torch.bfloat16):
                lo = _cast(ins, dt)
                with _NonFiniteCosts() as bad:
                    out = ours(crit, lo).total
                assert bad.n == 0, f"detloss: {bad.n} non-finite costs"
                grads = torch.autograd.grad(out, _grad_inputs(lo))
                ok = all(bool(torch.isfinite(g).all()) for g in grads)
                d = abs(float(out.detach()) - base) / abs(base)
                plain = _ref_half(ref, ins, ref_base, dt, False)
                up = _ref_half(ref, ins, ref_base, dt, True)
                print(
                    f"{name:<14}{kind:<11}{str(dt).split('.')[1]:<10}{d:>12.2e}{str(ok):>8}  {plain:<62}{up}",
                    flush=True,
                )
            if not math.isfinite(ref_base):
                print(f"{'':<14}{kind:<11}float32: transformers' own float32 total is {ref_base}")


L_MATCHER_CALLS = 7  # transformers' matcher calls per step: the 6 layers and the encoder, one .cpu() each


if __name__ == "__main__":
    main()
