"""detloss inside the trainers users already have. Each submodule imports its framework only when
used; no framework is ever a dependency of detloss.

- :mod:`detloss.integrations.ultralytics`: ultralytics' YOLO detection models train with detloss's
  criterion (``use_detloss(model)``, or ``model.train(trainer=DetlossDetectionTrainer, ...)``;
  ``DetlossOBBTrainer`` for oriented boxes).
"""
