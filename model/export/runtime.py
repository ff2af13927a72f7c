"""Running an exported detector with ONNX Runtime, the way ``FasterRCNN.detect`` is run.

Shapes as ``model.export.graph``: one prepared image ``[3, h, w]``, D detections in
original-image pixels.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from model.detections import Detections
from model.export.graph import FORMAT, INPUT_NAMES, METADATA_KEYS


class OnnxModelError(ValueError):
    """An ONNX file cannot be used as a detector; the message names the file and the problem."""


@dataclass(frozen=True)
class OnnxDetectorInfo:
    """The glue settings stored in the graph's metadata (see ``model.export.graph``)."""

    class_names: tuple[str, ...]
    min_size: int
    max_size: int
    backbone: str


class OnnxDetector:
    """An exported detector in an ONNX Runtime CPU session; ``threads`` 0 lets ORT choose."""

    def __init__(self, path: Path | str, threads: int = 0) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxModelError(f"{self.path}: ONNX file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ORT raises its own exception types for corrupt graphs
            raise OnnxModelError(f"{self.path}: not a loadable ONNX model: {error}") from error
        self.info = _read_info(self.path, self.session.get_modelmeta().custom_metadata_map)
        inputs = tuple(i.name for i in self.session.get_inputs())
        if inputs != INPUT_NAMES:
            raise OnnxModelError(f"{self.path}: graph inputs are {list(inputs)}, expected {list(INPUT_NAMES)}")

    def detect(self, image: Tensor, scale: float) -> Detections:
        """Detections of one prepared image ``[3, h, w]`` (as ``FasterRCNN.detect``), CPU tensors."""
        feed = {
            "image": np.ascontiguousarray(image.detach().cpu().numpy(), dtype=np.float32),
            "scale": np.asarray(scale, dtype=np.float32),
        }
        boxes, scores, labels = self.session.run(None, feed)
        return Detections(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels).long())


def _read_info(path: Path, meta: dict[str, str]) -> OnnxDetectorInfo:
    missing = [k for k in METADATA_KEYS if k not in meta]
    if missing or meta.get("format") != FORMAT:
        raise OnnxModelError(
            f"{path}: not a detector exported by model.export (format {meta.get('format')!r}, "
            f"expected {FORMAT!r}; missing metadata {missing})"
        )
    try:
        names = json.loads(meta["class_names"])
        info = OnnxDetectorInfo(tuple(str(n) for n in names), int(meta["min_size"]), int(meta["max_size"]), meta["backbone"])
    except (ValueError, TypeError) as error:
        raise OnnxModelError(f"{path}: unreadable detector metadata: {error}") from error
    if not info.class_names:
        raise OnnxModelError(f"{path}: metadata lists no classes")
    return info
