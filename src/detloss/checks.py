"""Input checks, in one place: every public function and criterion validates its arguments here.

Each check raises ``TypeError`` for a wrong type and ``ValueError`` for a wrong shape or value,
naming the argument and, for a bad value inside a tensor, the first offending index. Checks of
tensor *values* read the tensor on the host (one sync); callers run them only with ``validate=True``.
Never ``assert``: an assertion vanishes under ``python -O`` and syncs silently on a device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .kernels import IOU_KINDS
from .kernels.iou import broadcast_shape


def check_tensor(name: str, t: object) -> Tensor:
    """Raise ``TypeError`` unless ``t`` is a tensor; return it."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_one_of(name: str, value: object, options: Sequence[object]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``options`` (a format, kind, reduction...)."""
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")


def finite_number(v: object) -> bool:
    """Whether ``v`` is an int or float other than ±inf and NaN, as ``v − v == 0``: unlike
    ``math.isfinite`` it also takes the symbolic floats that ``torch.compile(dynamic=True)`` passes
    for float attributes and arguments (``math.isfinite`` on one breaks the graph)."""
    return isinstance(v, (int, float, torch.SymInt, torch.SymFloat)) and v - v == 0


def is_number(v: object) -> bool:
    """A finite int or float that is not a bool (``True`` is not a count, a size or a ratio)."""
    return not isinstance(v, bool) and finite_number(v)


def check_finite(name: str, t: Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` and the first index holding NaN or Inf.

    Happy path: one sum (NaN and ±Inf always make the sum non-finite, so nothing slips through),
    about 4x cheaper than ``isfinite(t).all()``, which only runs when the sum is not finite (a bad
    value, or a sum of finite values that overflowed) and then finds the index.
    """
    if not t.numel():
        return
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    if bool(torch.isfinite(t.sum(dtype=acc))) or bool(torch.isfinite(t).all()):
        return
    bad = (~torch.isfinite(t)).nonzero()[0].tolist()
    raise ValueError(f"{name} has a non-finite value ({t[tuple(bad)].item()}) at index {tuple(bad)}")


def check_boxes(name: str, boxes: object, finite: bool = True, size: int = 4) -> Tensor:
    """Validate a box tensor ``(..., size)`` of floating dtype (4: axis-aligned, 5: xywhr);
    optionally check it is finite.

    Raises:
        TypeError: not a tensor, or not a floating dtype.
        ValueError: last dimension is not ``size``, or (``finite=True``) a NaN/Inf value, with its index.
    """
    boxes = check_tensor(name, boxes)
    if not boxes.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {boxes.dtype}")
    if boxes.dim() == 0 or boxes.shape[-1] != size:
        layout = " (x, y, w, h, angle)" if size == 5 else ""
        raise ValueError(f"{name} must have shape (..., {size}){layout}, got {tuple(boxes.shape)}")
    if finite:
        check_finite(name, boxes)
    return boxes


def check_box_pair(
    names: tuple[str, str], boxes1: object, boxes2: object, validate: bool, size: int = 4
) -> tuple[int, ...]:
    """Check two box tensors ``(..., size)`` of one elementwise call and return their broadcast shape.

    With ``validate``, their finiteness is one sum each and one host sync (NaN and ±Inf make the sum
    non-finite), tested on the host; the offending index is only searched when it fails.
    """
    check_boxes(names[0], boxes1, finite=False, size=size)
    check_boxes(names[1], boxes2, finite=False, size=size)
    if validate:
        acc = torch.float64 if torch.float64 in (boxes1.dtype, boxes2.dtype) else torch.float32
        with torch.no_grad():
            total = float(boxes1.sum(dtype=acc) + boxes2.sum(dtype=acc))
        if not math.isfinite(total):  # a bad value, or finite values whose sum overflowed
            check_finite(names[0], boxes1)
            check_finite(names[1], boxes2)
    try:
        return broadcast_shape(boxes1.shape, boxes2.shape)
    except RuntimeError:
        raise ValueError(
            f"{names[0]} {tuple(boxes1.shape)} and {names[1]} {tuple(boxes2.shape)} do not broadcast"
        ) from None


def check_query_groups(value: object, preset: str, default: int) -> int:
    """``group_detr`` of a DETR criterion: an int >= 1 for ``"lwdetr"`` (None: ``default``), None or 1
    for the other presets (they match every query against the targets once); returns it."""
    if value is None:
        return default if preset == "lwdetr" else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"group_detr must be an int >= 1, got {value!r}")
    if preset != "lwdetr" and value != 1:
        raise ValueError(f"group_detr applies to preset 'lwdetr' only, got {value} with {preset!r}")
    return value


def check_group_size(name: str, num_queries: int, groups: int) -> None:
    """Each of ``groups`` query groups needs at least one of the entry's ``num_queries`` queries."""
    if num_queries < groups:
        raise ValueError(f"{name} has {num_queries} queries, fewer than group_detr = {groups} groups")


def check_padded_targets(targets: object, batch: int) -> None:
    """The shapes and dtypes of a padded batch of targets (:class:`detloss.assign.PaddedTargets`):
    ``boxes`` ``(B, M, 4)`` floating, ``labels`` ``(B, M)`` integer, ``mask`` ``(B, M)`` bool, with B
    the predictions' batch size. Reads no value (no sync): a criterion given padded targets trusts
    their values.

    Raises:
        TypeError: a field that is not a tensor or has the wrong dtype.
        ValueError: a wrong shape.
    """
    boxes = check_tensor("targets.boxes", getattr(targets, "boxes", None))
    labels = check_tensor("targets.labels", getattr(targets, "labels", None))
    mask = check_tensor("targets.mask", getattr(targets, "mask", None))
    if not boxes.is_floating_point():
        raise TypeError(f"targets.boxes must have a floating dtype, got {boxes.dtype}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"targets.labels must be an integer tensor, got {labels.dtype}")
    if mask.dtype != torch.bool:
        raise TypeError(f"targets.mask must be a bool tensor, got {mask.dtype}")
    if boxes.dim() != 3 or boxes.shape[0] != batch or boxes.shape[2] != 4:
        raise ValueError(f"targets.boxes must have shape (B={batch}, M, 4), got {tuple(boxes.shape)}")
    if labels.shape != boxes.shape[:2] or mask.shape != boxes.shape[:2]:
        raise ValueError(
            f"targets.labels and targets.mask must have shape (B, M) = {tuple(boxes.shape[:2])}, got "
            f"{tuple(labels.shape)} and {tuple(mask.shape)}"
        )


def check_set_predictions(
    names: tuple[str, str], logits: object, boxes: object, dims: str, width: int, what: str
) -> tuple[Tensor, Tensor]:
    """Set-prediction logits ``(*dims, C′)`` and boxes ``(*dims, 4)`` of a DETR-family entry.

    Args:
        names: the two arguments' names, e.g. ``("logits", "boxes")`` or ``("enc_logits", "enc_boxes")``.
        dims: the leading dims as written in the message, e.g. ``"L, B, Q"``; their number is checked.
        width: C′, the logits' last dim; ``what`` says what it is (``"C"``, ``"C + 1 (no-object last)"``).

    Raises:
        TypeError: not a tensor, or not floating.
        ValueError: a wrong number of dims, a wrong class width, boxes not of the logits' leading shape.
    """
    logits = check_tensor(names[0], logits)
    boxes = check_tensor(names[1], boxes)
    for name, t in zip(names, (logits, boxes), strict=True):
        if not t.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
    ndim = len(dims.split(",")) + 1
    if logits.dim() != ndim or logits.shape[-1] != width:
        raise ValueError(f"{names[0]} must have shape ({dims}, {what} = {width}), got {tuple(logits.shape)}")
    if boxes.shape != logits.shape[:-1] + (4,):
        raise ValueError(
            f"{names[1]} must have shape ({dims}, 4) = {tuple(logits.shape[:-1]) + (4,)}, "
            f"got {tuple(boxes.shape)}"
        )
    return logits, boxes


def check_dfine_local(
    names: tuple[str, str], corners: object, refs: object, logits: Tensor, prefix: str
) -> tuple[Tensor, Tensor]:
    """D-FINE's ``corners`` ``(L, B, Q, 4·(N + 1))`` and ``reference_points`` ``(L, B, Q, 4)`` beside
    logits ``(L + 1, B, Q, C)`` (the model's L + 1 intermediate outputs: the pre-head prediction first).

    Raises:
        TypeError: not floating tensors.
        ValueError: missing, or shapes that do not fit the logits, or N + 1 bins with N odd or <= 2.
    """
    if corners is None or refs is None:
        raise ValueError(f"presets 'dfine' and 'deimv2' need {names[0]} and {names[1]} with {prefix}logits")
    corners, refs = check_tensor(names[0], corners), check_tensor(names[1], refs)
    for name, t in zip(names, (corners, refs), strict=True):
        if not t.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
    if logits.shape[0] < 2:
        raise ValueError(
            f"presets 'dfine' and 'deimv2' need {prefix}logits with L + 1 >= 2 entries, "
            f"got {tuple(logits.shape)}"
        )
    lead = (logits.shape[0] - 1,) + tuple(logits.shape[1:3])
    width = corners.shape[-1] if corners.dim() == 4 else 0
    bins = width // 4 - 1
    if corners.dim() != 4 or tuple(corners.shape[:3]) != lead or width % 4 or bins <= 2 or bins % 2:
        raise ValueError(
            f"{names[0]} must have shape (L, B, Q, 4·(N + 1)) = {lead + ('4·(N + 1)',)} with N even > 2 "
            f"({prefix}logits has the L + 1 entries {tuple(logits.shape)}), got {tuple(corners.shape)}"
        )
    if tuple(refs.shape) != lead + (4,):
        raise ValueError(f"{names[1]} must have shape {lead + (4,)}, got {tuple(refs.shape)}")
    return corners, refs


def check_dn_meta(
    meta: object, counts: Sequence[int] | None, num_dn: int, num_queries: int
) -> tuple[list[Tensor], int]:
    """Contrastive-denoising metadata, transformers' ``denoising_meta_values``: shapes only (no sync).

    Args:
        meta: a dict with ``"dn_positive_idx"`` (B integer tensors, image b's holding its
            ``n_b·dn_num_group`` positive denoising queries, group-major), ``"dn_num_group"`` (an int
            >= 1) and optionally ``"dn_num_split"`` (``[Q_dn, Q]``, checked against the inputs).
        counts: the targets per image when known on the host (a list of targets), else ``None``
            (padded targets: the counts are checked with the values).
        num_dn, num_queries: Q_dn of ``dn_logits`` and Q of ``logits``.

    Returns:
        ``(dn_positive_idx as a list, dn_num_group)``.
    """
    if not isinstance(meta, Mapping) or "dn_positive_idx" not in meta or "dn_num_group" not in meta:
        raise TypeError(
            "dn_meta must be a dict with 'dn_positive_idx' and 'dn_num_group' (transformers' "
            "denoising_meta_values)"
        )
    groups = meta["dn_num_group"]  # a host int (transformers'): a tensor here would cost a sync
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"dn_meta['dn_num_group'] must be an int >= 1, got {groups!r}")
    idx = meta["dn_positive_idx"]
    if isinstance(idx, Tensor) or not isinstance(idx, Sequence):
        raise TypeError("dn_meta['dn_positive_idx'] must be a list or tuple of B tensors (one per image)")
    idx = list(idx)
    if counts is not None and len(idx) != len(counts):
        raise ValueError(f"dn_meta['dn_positive_idx'] has {len(idx)} images but targets has {len(counts)}")
    for b, t in enumerate(idx):
        name = f"dn_meta['dn_positive_idx'][{b}]"
        t = check_tensor(name, t)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.dim() != 1:
            raise TypeError(f"{name} must be a 1-D integer tensor, got {t.dtype} {tuple(t.shape)}")
        if t.shape[0] % groups:
            raise ValueError(f"{name} has {t.shape[0]} queries, not a multiple of dn_num_group = {groups}")
        if counts is not None and t.shape[0] != counts[b] * groups:
            raise ValueError(
                f"{name} has {t.shape[0]} queries, expected n·dn_num_group = {counts[b]}·{groups} "
                f"(image {b}'s targets times the groups)"
            )
    split = meta.get("dn_num_split")
    if split is not None and [int(v) for v in split] != [num_dn, num_queries]:
        raise ValueError(
            f"dn_meta['dn_num_split'] = {list(split)} but dn_logits has Q_dn = {num_dn} and logits Q = "
            f"{num_queries}: pass the denoising and the matching queries apart"
        )
    return idx, groups


def _grid_sizes(name: str, maps: Sequence[Tensor], strides: Sequence[int]) -> list[tuple[int, int]]:
    """The grids ``(H_l, W_l)`` of maps ``(B, ·, H_l, W_l)`` named ``name[l]``, whose input size
    ``stride × (H_l, W_l)`` must agree across the levels."""
    sizes = [(int(m.shape[2]), int(m.shape[3])) for m in maps]
    for i, ((h, w), s) in enumerate(zip(sizes, strides, strict=True)):
        size, first = (h * s, w * s), (sizes[0][0] * strides[0], sizes[0][1] * strides[0])
        if size != first:
            raise ValueError(
                f"{name}[{i}] grid {(h, w)} × stride {s} gives input size {size}, "
                f"but {name}[0] gives {first}: strides and grids disagree"
            )
    return sizes


def check_heads(
    preds: Sequence[Tensor],
    channels: Sequence[int],
    layouts: Sequence[str],
    strides: Sequence[int],
    batch_size: int,
) -> list[tuple[int, int]]:
    """Check raw head outputs, one ``(B, channels[i], H, W)`` floating tensor per stride, whose input
    size ``stride × (H, W)`` agrees across scales; ``layouts[i]`` spells head i's channels in the
    error messages (e.g. ``"3*(5+80)"``). Returns the grid sizes ``(H, W)``."""
    if isinstance(preds, Tensor) or not isinstance(preds, Sequence):
        raise TypeError("preds must be a list with one tensor per scale")
    if len(preds) != len(strides):
        raise ValueError(f"preds has {len(preds)} scales, the criterion has {len(strides)} strides")
    for i, (p, c, layout) in enumerate(zip(preds, channels, layouts, strict=True)):
        check_tensor(f"preds[{i}]", p)
        if not p.is_floating_point():
            raise TypeError(f"preds[{i}] must have a floating dtype, got {p.dtype}")
        if p.dim() != 4 or p.shape[1] != c:
            raise ValueError(f"preds[{i}] must have shape (B, {layout}={c}, H, W), got {tuple(p.shape)}")
        if p.shape[0] != batch_size:
            raise ValueError(f"preds[{i}] has batch size {p.shape[0]} but targets has {batch_size} images")
    return _grid_sizes("preds", preds, strides)


def check_head_dict(
    preds: object,
    box_channels: int,
    num_classes: int,
    strides: Sequence[int],
    batch_size: int,
    angle: bool = False,
) -> list[tuple[int, int]]:
    """Check the mapping an ultralytics head hands its loss, ``{"boxes": (B, box_channels, A),
    "scores": (B, C, A), "feats": [one (B, ·, H_l, W_l) map per stride]}`` (and with ``angle`` the
    oriented head's ``"angle": (B, 1, A)``; the levels concatenated along A in stride order,
    A = Σ H_l·W_l), whose input size ``stride × (H_l, W_l)`` agrees across levels. Returns the grid
    sizes ``(H_l, W_l)``."""
    keys = ("boxes", "scores", "feats") + (("angle",) if angle else ())
    missing = [k for k in keys if k not in preds]  # type: ignore[operator]
    if missing:
        raise ValueError(
            f"preds: a mapping of heads needs the keys {', '.join(repr(k) for k in keys)}; missing {missing}"
        )
    boxes, scores, feats = preds["boxes"], preds["scores"], preds["feats"]  # type: ignore[index]
    if isinstance(feats, Tensor) or not isinstance(feats, Sequence):
        raise TypeError("preds['feats'] must be a list with one feature map per stride")
    if len(feats) != len(strides):
        raise ValueError(f"preds['feats'] has {len(feats)} levels, the criterion has {len(strides)} strides")
    for i, f in enumerate(feats):
        check_tensor(f"preds['feats'][{i}]", f)
        if f.dim() != 4:
            raise ValueError(f"preds['feats'][{i}] must have shape (B, channels, H, W), got {tuple(f.shape)}")
    sizes = _grid_sizes("preds['feats']", feats, strides)
    num_anchors = sum(h * w for h, w in sizes)
    rows_of = [("boxes", box_channels), ("scores", num_classes)] + ([("angle", 1)] if angle else [])
    for key, rows in rows_of:
        t = check_tensor(f"preds['{key}']", preds[key])  # type: ignore[index]
        if not t.is_floating_point():
            raise TypeError(f"preds['{key}'] must have a floating dtype, got {t.dtype}")
        if t.dim() != 3 or t.shape[1] != rows or t.shape[2] != num_anchors:
            raise ValueError(
                f"preds['{key}'] must have shape (B, {rows}, A={num_anchors}) (A from preds['feats']), "
                f"got {tuple(t.shape)}"
            )
        if t.shape[0] != batch_size:
            raise ValueError(
                f"preds['{key}'] has batch size {t.shape[0]} but targets has {batch_size} images"
            )
    others = [scores, preds["angle"]] if angle else [scores]  # type: ignore[index]
    if any(t.dtype != boxes.dtype or t.device != boxes.device for t in others):
        names = " and ".join(f"preds[{k!r}]" for k in keys if k != "feats")
        raise ValueError(f"{names} must share dtype and device")
    return sizes


def check_broadcasts_to(name: str, t: Tensor, shape: torch.Size, what: str) -> None:
    """Raise ``ValueError`` unless ``t`` broadcasts to ``shape`` without enlarging it (a ``(N, 1)``
    weight against a ``(N,)`` loss would silently produce ``(N, N)``)."""
    try:
        out = torch.Size(torch.broadcast_shapes(shape, t.shape)) if t.shape != shape else shape
    except RuntimeError:
        out = None
    if out != shape:
        raise ValueError(f"{name} of shape {tuple(t.shape)} must broadcast to {what} {tuple(shape)}")


def check_num_classes(num_classes: object) -> int:
    """The class count C: an ``int`` >= 1 (``True`` and ``80.0`` are refused); returns it."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return num_classes


def check_class_ids(name: str, ids: Tensor, num_classes: int) -> None:
    """Raise ``ValueError`` with the first index whose class id is outside [0, num_classes)."""
    bad = (ids < 0) | (ids >= num_classes)
    if ids.numel() and bool(bad.any()):
        idx = tuple(bad.nonzero()[0].tolist())
        raise ValueError(
            f"{name} holds class id {ids[idx].item()} at index {idx}, outside [0, {num_classes})"
        )


def positive_ints(name: str, values: Sequence) -> tuple[int, ...]:
    """Integral positive numbers (int, numpy int, 8.0) → ints; anything else is a ``ValueError``."""
    try:
        out = tuple(int(v) for v in values)
        ok = len(out) > 0 and all(
            not isinstance(v, bool) and o == v and o >= 1 for o, v in zip(out, values, strict=True)
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be positive integers, got {values!r}")
    return out


def check_unit(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is a number in [0, 1]."""
    if not (is_number(value) and 0 <= value <= 1):
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def check_number(
    name: str, value: object, *, low: float | None = None, high: float | None = None, open_low: bool = False
) -> float:
    """Raise ``ValueError`` unless ``value`` is a finite number (not a bool) with ``low <= value``
    (``low < value`` if ``open_low``) and ``value <= high``, each bound where given; return it as a float."""
    ok = is_number(value) and (high is None or value <= high)
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if not ok:
        bounds = [f"{'>' if open_low else '>='} {low}"] if low is not None else []
        bounds += [f"<= {high}"] if high is not None else []
        what = "".join(f" {b}" for b in bounds[:1]) + "".join(f" and {b}" for b in bounds[1:])
        raise ValueError(f"{name} must be a finite number{what}, got {value!r}")
    return float(value)


def check_gain(name: str, value: object) -> float:
    """A loss gain (the weight of one component of a criterion): a finite number >= 0, not a bool;
    returns it as a float."""
    return check_number(name, value, low=0.0)


_MIN_EPS = torch.finfo(torch.float32).tiny  # a smaller eps is 0 in float32: 0/0 on zero-area boxes


def check_eps(eps: float, name: str = "eps") -> None:
    """An IoU ``eps``: finite and at least float32's smallest normal (a smaller one is 0 in float32)."""
    if not (finite_number(eps) and eps >= _MIN_EPS):
        raise ValueError(
            f"{name} must be a finite number >= {_MIN_EPS:.3g} (float32's smallest normal), got {eps!r}"
        )


def check_sigma(sigma: float) -> None:
    """Smooth L1's σ: > 0, and ∞ allowed (β = 1/σ² = 0 leaves no quadratic zone: plain L1)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")


def check_modifiers(
    kind: str,
    alpha: float = 1.0,
    inner_ratio: float | None = None,
    focaler: tuple[float, float] | None = None,
    image_size: float | tuple[float, float] | None = None,
) -> None:
    """Raise ``ValueError`` naming the argument for an unknown IoU ``kind``, an invalid modifier or a
    conflict of modifiers.

    ``alpha`` > 0; ``inner_ratio`` > 0; ``focaler`` = (d, u) with 0 <= d < u <= 1; at most one of
    ``alpha != 1``, ``inner_ratio``, ``focaler``, and none with ``kind="wiou"``; ``image_size`` (a
    number, or (width, height), > 0) required by ``kind="mpdiou"`` and refused by the other kinds.
    """
    check_one_of("kind", kind, IOU_KINDS)
    if not (is_number(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if inner_ratio is not None and not (is_number(inner_ratio) and inner_ratio > 0):
        raise ValueError(f"inner_ratio must be a finite number > 0 or None, got {inner_ratio!r}")
    if focaler is not None:
        ok = isinstance(focaler, (tuple, list)) and len(focaler) == 2 and all(map(is_number, focaler))
        if not (ok and 0 <= focaler[0] < focaler[1] <= 1):
            raise ValueError(f"focaler must be (d, u) with 0 <= d < u <= 1, got {focaler!r}")
    active = [
        n
        for n, on in (
            ("alpha", alpha != 1),
            ("inner_ratio", inner_ratio is not None),
            ("focaler", focaler is not None),
        )
        if on
    ]
    if len(active) > 1:
        raise ValueError(f"at most one IoU modifier per call, got {' and '.join(active)}")
    if kind == "wiou" and active:
        raise ValueError(f"kind='wiou' takes no modifier, got {active[0]}")
    if kind == "mpdiou":
        if image_size is None:
            raise ValueError("kind='mpdiou' needs image_size=(width, height) in the boxes' units")
        sizes = (image_size,) if is_number(image_size) else image_size
        ok = isinstance(sizes, (tuple, list)) and len(sizes) in (1, 2) and all(map(is_number, sizes))
        if not (ok and all(v > 0 for v in sizes)):
            raise ValueError(f"image_size must be a number or (width, height), each > 0, got {image_size!r}")
    elif image_size is not None:
        raise ValueError(f"image_size is only used by kind='mpdiou', got kind={kind!r}")
