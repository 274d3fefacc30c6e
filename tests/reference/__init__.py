"""Independent references of the library's formulas, written without detloss (tests and benchmarks).

- ``naive``: the naive IoU-family and focal formulas (tests and ``benchmarks/bench.py``).
- ``tf``: TensorFlow formulas shared by the TF ports (sigmoid cross-entropy, the eps-free xywh IoU).
- ``yolov3``: loop port of tensorflow-yolov3 (``core/dataset.py`` labels, ``core/yolov3.py`` loss).
- ``yolov4``: loop port of yolov4-tiny-tf2 (``preprocess_true_boxes``, ``nets/loss.py``, ``nets/ious.py``).
- ``yolov5``: loop port of ultralytics/yolov5 v7.0 ``ComputeLoss`` (``utils/loss.py``, ``utils/metrics.py``).
- ``yolov8``: naive loop port of ultralytics' ``v8DetectionLoss`` (8.4.190) from the TOOD and GFL papers.
- ``ssd``: loop port of SSD.TensorFlow (``ssd_model_fn``, ``do_dual_max_match``).
- ``detr``: loop port of the DETR, Deformable-DETR and RT-DETR presets (scipy's solver per image).
"""
