"""Exporting the detector to ONNX and running the export (``python -m model.export``).

- ``graph``: the whole detector (backbone, RPN, NMS, RoIPool, head) as one graph of
  ``(resized image, scale)``; what stays outside (image decoding and the resize) and why.
- ``runtime``: ``OnnxDetector``, an ONNX Runtime session with ``FasterRCNN.detect``'s call.
- ``check``: detection-by-detection comparison of the export with the PyTorch model.

``onnx`` and ``onnxruntime`` are imported only when an export is written or run.
"""
