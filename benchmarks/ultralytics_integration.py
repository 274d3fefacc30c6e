"""detloss's ultralytics integration against ultralytics' own criterion and trainer (8.4.190).

Run in a side environment with ultralytics (never a dependency of detloss; AGPL-3.0, only run here)::

    PYTHONPATH=src <side-venv>/bin/python benchmarks/ultralytics_integration.py [--models yolov8n yolo26n]
        [--skip-train] [--epochs 2]

1. Agreement: yolov8n, yolo11n, yolov10n and yolo26n, and the oriented-box yolov8n-obb, yolo11n-obb
   and yolo26n-obb (xywhr boxes, θ in [−π/4, 3π/4), one box per image below 2 px), built from
   ultralytics' yaml files (no weights, 80 classes), one training-mode forward at 160 px (B = 4, one
   image without boxes), ultralytics' criterion (``model.init_criterion()``) and
   :class:`UltralyticsCriterion` on the same predictions and batch: relative error of the loss
   vector, of the items, and of every parameter's gradient (max over parameters of max |Δg| / max
   |g|, with max |g| floored at 1e-6 of the largest over all parameters, as some gradients are
   round-off), in float32 and float64 (the model cast with ``.double()``, torch's default dtype
   float64 so that ultralytics' own tensors are too); the end-to-end models (yolo26n-obb too) at
   epochs 0 and 4 of 10. Then the time of the criterion's call and of a whole forward + loss +
   backward (medians of interleaved rounds).
2. Training: ``model.train(...)`` on a synthetic YOLO-format data set (coloured rectangles on noise,
   16 train / 8 val images, 3 classes; for the OBB models turned rectangles with the four corners as
   labels, ultralytics' OBB format) written to a temporary directory, 160 px, batch 4, CPU,
   ``workers=0``, with ultralytics' own trainer and with ``DetlossDetectionTrainer`` /
   ``DetlossOBBTrainer``, each in its own process: median step time (``on_train_batch_start`` →
   ``on_train_batch_end``, first step left out), the process's peak resident memory, the last items
   and the validation mAP50-95.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # no version check, no asset downloads
os.environ.setdefault("YOLO_VERBOSE", "False")

import torch  # noqa: E402

MODELS = ("yolov8n", "yolo11n", "yolov10n", "yolo26n", "yolov8n-obb", "yolo11n-obb", "yolo26n-obb")
#: the end-to-end heads (one-to-one branch, ``E2ELoss``)
E2E = ("yolov10n", "yolo26n", "yolo26n-obb")
SIZE, BATCH = 160, 4


def synthetic_batch(b: int, g: torch.Generator, dtype: torch.dtype, obb: bool = False) -> dict:
    """ultralytics' batch dict: images and 2–7 normalised xywh boxes per image, image 1 empty; with
    ``obb`` xywhr boxes as an OBB data set gives them (w ≥ h, θ in [−π/4, 3π/4)), the first of each
    image 1 px high (below the 2 px both criteria drop)."""
    idx, cls, boxes = [], [], []
    for i in range(b):
        n = 0 if i == 1 else int(torch.randint(2, 8, (1,), generator=g))
        wh = 0.03 + 0.5 * torch.rand(n, 2, generator=g, dtype=torch.float64)
        xy = wh / 2 + torch.rand(n, 2, generator=g, dtype=torch.float64) * (1 - wh)
        idx.append(torch.full((n,), float(i)))
        cls.append(torch.randint(0, 80, (n, 1), generator=g).double())
        if obb:
            wh = torch.stack((wh.amax(1), wh.amin(1)), 1)
            if n:
                wh[0, 1] = 1.0 / SIZE
            theta = (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.25) * torch.pi
            boxes.append(torch.cat((xy, wh, theta), 1))
            continue
        boxes.append(torch.cat((xy, wh), 1))
    return {
        "img": torch.rand(b, 3, SIZE, SIZE, generator=g, dtype=torch.float64).to(dtype),
        "batch_idx": torch.cat(idx).to(dtype),
        "cls": torch.cat(cls).to(dtype),
        "bboxes": torch.cat(boxes).to(dtype),
    }


def build(name: str, dtype: torch.dtype):
    from types import SimpleNamespace

    from ultralytics import YOLO

    model = YOLO(f"{name}.yaml", verbose=False).model.to(dtype).train()
    model.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5, angle=1.0, epochs=10)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def agreement(name: str, dtype: torch.dtype, epoch: int) -> dict:
    from detloss.integrations.ultralytics import UltralyticsCriterion

    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        model = build(name, dtype)
        batch = synthetic_batch(BATCH, torch.Generator().manual_seed(1), dtype, obb=name.endswith("-obb"))
        theirs, ours = model.init_criterion(), UltralyticsCriterion(model)
        for _ in range(epoch):
            if hasattr(theirs, "update"):
                theirs.update()
            ours.update()
        params = [p for p in model.parameters() if p.requires_grad]
        preds = model(batch["img"])
        loss_t, items_t = theirs(preds, batch)
        loss_o, items_o = ours(preds, batch)
        grads_t = torch.autograd.grad(loss_t.sum(), params, retain_graph=True, allow_unused=True)
        grads_o = torch.autograd.grad(loss_o.sum(), params, allow_unused=True)
        zero = [torch.zeros_like(p) for p in params]
        grads_t = [z if g is None else g for z, g in zip(zero, grads_t, strict=True)]
        grads_o = [z if g is None else g for z, g in zip(zero, grads_o, strict=True)]
        # a parameter whose gradient is round-off (e.g. the bias of a batch norm whose output is
        # multiplied by a zero-initialised weight: |g| ~ 1e-20) is measured against 1e-6 of the largest
        floor = 1e-6 * max(g.abs().max().item() for g in grads_t)
        grad_err = max(
            (o - t).abs().max().item() / max(t.abs().max().item(), floor)
            for t, o in zip(grads_t, grads_o, strict=True)
        )
        assert list(items_t) == list(items_o), (list(items_t), list(items_o))
        return {
            "loss": _rel(loss_o, loss_t),
            "items": max(_rel(items_o[k], items_t[k]) for k in items_t),
            "grads": grad_err,
            "params": len(params),
            "keys": list(items_o),
            "loss_vector": [round(v, 5) for v in loss_o.tolist()],
        }
    finally:
        torch.set_default_dtype(torch.float32)


def timing(name: str, rounds: int = 9) -> dict:
    """Medians (ms) of the criterion's call alone and of forward + loss + backward, float32."""
    from detloss.integrations.ultralytics import UltralyticsCriterion

    torch.manual_seed(0)
    model = build(name, torch.float32)
    batch = synthetic_batch(BATCH, torch.Generator().manual_seed(1), torch.float32, obb=name.endswith("-obb"))
    crits = {"ultralytics": model.init_criterion(), "detloss": UltralyticsCriterion(model)}
    times: dict[str, list[float]] = {f"{k} {w}": [] for k in crits for w in ("loss", "step")}
    for _ in range(rounds + 1):
        for key, crit in crits.items():
            preds = model(batch["img"])
            t0 = time.perf_counter()
            loss, _ = crit(preds, batch)
            t1 = time.perf_counter()
            loss.sum().backward()
            t2 = time.perf_counter()
            model.zero_grad(set_to_none=True)
            times[f"{key} loss"].append(t1 - t0)
            times[f"{key} step"].append(t2 - t0)
    # the step adds the forward, timed once per round outside the loop above
    fwd = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        model(batch["img"])
        fwd.append(time.perf_counter() - t0)
    f = statistics.median(fwd)
    out = {k: 1e3 * statistics.median(v[1:]) for k, v in times.items()}
    for key in crits:
        out[f"{key} step"] += 1e3 * f
    return out


def write_dataset(root: Path, n_train: int = 16, n_val: int = 8, seed: int = 0, obb: bool = False) -> Path:
    """Coloured rectangles on noise: class k is colour k; YOLO labels (with ``obb``, rectangles turned
    by a random angle and labelled by their corners, ``k x1 y1 … x4 y4`` normalised); a data.yaml."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    colours = np.array([[230, 40, 40], [40, 200, 60], [50, 80, 230]], dtype=np.uint8)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) // 3
            lines = []
            for _ in range(int(rng.integers(1, 5))):
                k = int(rng.integers(0, 3))
                w, h = rng.integers(16, 64, 2)
                x, y = rng.integers(0, SIZE - w), rng.integers(0, SIZE - h)
                if obb:  # the rectangle turned about its centre, kept inside the image
                    t = rng.uniform(0, np.pi)
                    half = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
                    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
                    pts = np.clip(half @ rot.T + (x + w / 2, y + h / 2), 0, SIZE - 1)
                    drawn = Image.fromarray(img)
                    ImageDraw.Draw(drawn).polygon([tuple(p) for p in pts], fill=tuple(colours[k].tolist()))
                    img = np.asarray(drawn).copy()
                    box = tuple((pts / SIZE).reshape(-1))
                else:
                    img[y : y + h, x : x + w] = colours[k]
                    box = ((x + w / 2) / SIZE, (y + h / 2) / SIZE, w / SIZE, h / SIZE)
                lines.append(f"{k} " + " ".join(f"{v:.6f}" for v in box))
            Image.fromarray(img).save(root / "images" / split / f"{i:03d}.png")
            (root / "labels" / split / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    names = "".join(f"  {k}: {c}\n" for k, c in enumerate(("red", "green", "blue")))
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return data


def train_once(name: str, trainer: str, data: str, project: str, epochs: int) -> dict:
    """One ``model.train`` run (in this process); prints a JSON line of its figures."""
    import resource

    from ultralytics import YOLO

    from detloss.integrations.ultralytics import DetlossDetectionTrainer, DetlossOBBTrainer

    torch.set_num_threads(2)
    model = YOLO(f"{name}.yaml", verbose=False)
    steps: list[float] = []
    start: list[float] = []
    model.add_callback("on_train_batch_start", lambda tr: start.append(time.perf_counter()))
    model.add_callback("on_train_batch_end", lambda tr: steps.append(time.perf_counter() - start[-1]))
    ours = DetlossOBBTrainer if name.endswith("-obb") else DetlossDetectionTrainer
    kwargs = {"trainer": ours} if trainer == "detloss" else {}
    t0 = time.perf_counter()
    model.train(
        data=data, epochs=epochs, imgsz=SIZE, batch=BATCH, device="cpu", workers=0, plots=False, val=True,
        project=project, name=f"{name}-{trainer}", exist_ok=True, verbose=False, amp=False, seed=0,
        deterministic=True, **kwargs,
    )
    wall = time.perf_counter() - t0
    tr = model.trainer
    crit = type(getattr(tr.model, "criterion", None)).__name__
    return {
        "model": name, "trainer": trainer, "criterion": crit, "steps": len(steps),
        "step_ms": 1e3 * statistics.median(steps[1:] or steps), "wall_s": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "items": {k: round(float(v), 4) for k, v in (tr.tloss or {}).items()},
        "map50_95": float(
            next((v for k, v in tr.metrics.items() if k.startswith("metrics/mAP50-95")), float("nan"))
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--skip-agree", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--train-one", nargs=4, metavar=("MODEL", "TRAINER", "DATA", "PROJECT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.train_one:
        print("RESULT " + json.dumps(train_once(*args.train_one, epochs=args.epochs)), flush=True)
        return
    torch.set_num_threads(2)
    if not args.skip_agree:
        print(f"agreement at {SIZE} px, B = {BATCH} (relative errors; detloss vs ultralytics' criterion)")
        print(f"{'model':9} {'dtype':8} {'epoch':>5} {'loss':>9} {'items':>9} {'grads':>9}  keys")
        for name in args.models:
            e2e = name in E2E
            for dtype in (torch.float32, torch.float64):
                for epoch in (0, 4) if e2e else (0,):
                    r = agreement(name, dtype, epoch)
                    print(f"{name:9} {str(dtype)[6:]:8} {epoch:>5} {r['loss']:9.1e} {r['items']:9.1e} "
                          f"{r['grads']:9.1e}  {r['keys']} ({r['params']} parameters)", flush=True)
        print("\ntime (ms, float32, 2 threads, medians): criterion call / forward + loss + backward")
        for name in args.models:
            t = timing(name)
            print(f"{name:9} ultralytics {t['ultralytics loss']:7.1f} / {t['ultralytics step']:7.1f}   "
                  f"detloss {t['detloss loss']:7.1f} / {t['detloss step']:7.1f}", flush=True)
    if args.skip_train:
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = {False: write_dataset(Path(tmp) / "data"), True: write_dataset(Path(tmp) / "obb", obb=True)}
        env = {**os.environ, "YOLO_CONFIG_DIR": str(Path(tmp) / "config")}
        print(f"\ntraining: {args.epochs} epochs, 16 train / 8 val images, {SIZE} px, batch {BATCH}, CPU, "
              "each run in its own process")
        for name in args.models:
            for trainer in ("ultralytics", "detloss"):
                cmd = [sys.executable, __file__, "--epochs", str(args.epochs), "--train-one", name, trainer,
                       str(data[name.endswith("-obb")]), str(Path(tmp) / "runs")]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT ")), None)
                if line is None:
                    print(f"{name} {trainer}: failed\n{proc.stderr[-3000:]}")
                    continue
                r = json.loads(line[7:])
                print(f"{name:9} {trainer:11} {r['criterion']:22} step {r['step_ms']:7.1f} ms  "
                      f"peak RSS {r['peak_rss_mib']:6.0f} MiB  wall {r['wall_s']:5.1f} s  "
                      f"mAP50-95 {r['map50_95']:.4f}  items {r['items']}", flush=True)


if __name__ == "__main__":
    main()
