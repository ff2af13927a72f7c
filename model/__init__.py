"""Faster R-CNN as a library: pure PyTorch + torchvision.ops.

Box convention used everywhere inside the library: 0-based pixel indices,
inclusive corners ``(x1, y1, x2, y2)``, so a box's width is ``x2 - x1 + 1``
(the convention of the original py-faster-rcnn). Conversion to and from the
1-based VOC files happens only in ``model.data.voc`` and
``model.evaluation.results_io``.

This package imports no prefect, mlflow or dvc.
"""
