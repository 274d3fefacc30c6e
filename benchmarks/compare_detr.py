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
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

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
def make_step(B, L=6, Q=300, C=80, n=20, dtype=torch.float64, seed=0, num_denoising=100):
    """Model-shaped outputs of an RT-DETR training step: ``outputs_class`` ``(B, L, Q_dn + Q, C)`` and
    ``outputs_coord`` (denoising queries first, as the decoder emits them), the encoder's top-k
    ``(B, Q, ·)``, targets with n boxes per image (one image with n // 2), and ``denoising_meta_values``
    as ``get_contrastive_denoising_training_group`` builds it: G = num_denoising // max n groups of
    2·max n queries, positives first, so ``dn_positive_idx[b] = [2·M·g + j for g, j < n_b]``."""
    g = torch.Generator().manual_seed(seed)
    counts = [n] * B
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
    ap.add_argument("--skip-deimv2", action="store_true", help="leave out DEIMv2")
    ap.add_argument("--only-deimv2", action="store_true", help="only DEIMv2")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {threads} threads")
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
def make_lw(B, L, G=13, Q=300, C=80, n=20, dtype=torch.float64, seed=0):
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
        k = n if b < B - 1 else n // 2
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
        d = {k: v for k, v in d.items() if not k.startswith("cardinality_error")}  # a count, not computed
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


def make_dfine(B, L=6, Q=300, C=80, n=20, dtype=torch.float64, seed=0):
    """A D-FINE step: the RT-DETR step's tensors with L + 1 intermediate outputs (the pre-head first),
    ``predicted_corners`` ``(B, L, Q_dn + Q, 4·(N + 1))`` and ``initial_reference_points``; boxes spill
    a little outside [0, 1] (the loss clamps them)."""
    (oc, ob, el, eb), labels, meta = make_step(B, L + 1, Q, C, n, dtype, seed)
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


L_MATCHER_CALLS = 7  # transformers' matcher calls per step: the 6 layers and the encoder, one .cpu() each


if __name__ == "__main__":
    main()
