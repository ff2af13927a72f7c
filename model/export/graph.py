"""The whole detector as one ONNX graph: backbone, RPN, proposal NMS, RoIPool, head, detection NMS.

Shapes: one image ``[3, h, w]`` float32 RGB in 0..255, already resized by ``scale`` (a
0-d float32 tensor, input / original size); D detections. Outputs, in original-image
pixels (0-based inclusive, as ``FasterRCNN.detect``): ``boxes [D, 4]`` float32,
``scores [D]`` float32, ``labels [D]`` int64 in 1..K, highest score first.

What stays outside the graph, and why: reading the image and the resize
(``model.data.transforms.prepare_image``: OpenCV's bilinear resize with the original's
scale rule). ONNX ``Resize`` rounds sizes and samples differently from ``cv2.resize``,
and the backbone is sensitive to that; taking the resized image plus its ``scale`` keeps
the graph exact, and the rule is two lines any runtime can do (see ``docs/export.md``).
The graph's metadata carries what the glue needs (``min_size``, ``max_size``,
``class_names``).

``DetectionGraph.forward`` runs the same library functions in the same order as
``FasterRCNN.detect``, but keeps the image and feature sizes symbolic: ``detect`` takes
``int()`` of them and caches anchors per size, which a trace would freeze to the sample
image's size. The exporter is the TorchScript tracer (``dynamo=False``): it records the
data-dependent steps (score filters, NMS with its variable output length, top-N slices)
as ONNX ops, where ``torch.export`` would need every data-dependent size guarded.
torchvision registers ONNX forms for ``nms`` (``NonMaxSuppression``) and ``roi_pool``
(``MaxRoiPool``, Caffe rounding as ``torchvision.ops.roi_pool``); the stable descending
``argsort`` of the proposal ranking gets one here (``TopK``, which breaks ties by lower
index first, as a stable sort). ``export_onnx`` verifies nothing: see ``model.export.check``.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.anchors import shift_anchors
from model.faster_rcnn import FasterRCNN
from model.roi.postprocess import postprocess_detections
from model.rpn.head import objectness_probability
from model.rpn.proposals import generate_proposals

OPSET = 17
INPUT_NAMES = ("image", "scale")
OUTPUT_NAMES = ("boxes", "scores", "labels")
# Keys of the ONNX model's metadata_props (string values; class_names as a JSON list).
METADATA_KEYS = ("format", "class_names", "min_size", "max_size", "backbone", "inputs")
FORMAT = "frcnn-onnx/1"
_INPUTS_NOTE = (
    "image: float32 [3, h, w] RGB 0..255, the original resized by `scale` with bilinear "
    "interpolation (shorter side to min_size unless the longer would pass max_size); "
    "scale: float32 scalar, resized / original"
)


class DetectionGraph(nn.Module):
    """``(image [3, h, w], scale []) -> (boxes [D, 4], scores [D], labels [D])`` of ``model``."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        if model.cfg.test_proposals.ranking != "score":
            raise ValueError(
                f"cannot export test proposals ranked {model.cfg.test_proposals.ranking!r}: "
                "only the deterministic 'score' ranking is a fixed function of the image"
            )
        self.model = model

    def forward(self, image: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        model, cfg = self.model, self.model.cfg
        # Under the tracer these sizes are symbolic (0-d tensors), so every op below that
        # uses them (anchor grid, clipping, min-size filter) follows the input's size.
        height, width = image.shape[1], image.shape[2]
        features = model.features(image)
        logits, deltas = model.rpn.head(features)
        logits, deltas = logits[0], deltas[0]  # [N, 2], [N, 4]
        anchors = shift_anchors(model.rpn.reference_anchors, features.shape[2], features.shape[3], model.rpn.stride)
        rois, _ = generate_proposals(
            anchors, objectness_probability(logits), deltas, height, width, scale, cfg.test_proposals
        )
        class_logits, box_deltas = model.roi_head(features, rois)
        detections = postprocess_detections(
            rois,
            F.softmax(class_logits, dim=1),
            model.roi_head.unnormalize_deltas(box_deltas),
            height,
            width,
            scale,
            cfg.test,
        )
        return detections.boxes, detections.scores, detections.labels


def _stable_argsort(g, values, stable, dim, descending):  # noqa: ANN001 - ONNX symbolic signature
    """``aten::argsort(stable=True)`` as ONNX ``TopK`` over the whole axis (ties: lower index first)."""
    from torch.onnx import symbolic_helper

    dim = symbolic_helper._get_const(dim, "i", "dim")
    descending = symbolic_helper._get_const(descending, "b", "descending")
    length = g.op(
        "Gather", g.op("Shape", values), g.op("Constant", value_t=torch.tensor([dim], dtype=torch.int64)), axis_i=0
    )
    _, indices = g.op("TopK", values, length, axis_i=dim, largest_i=int(descending), sorted_i=1, outputs=2)
    return indices


def onnx_metadata(model: FasterRCNN) -> dict[str, str]:
    """What a runtime needs beside the graph: the classes and the resize rule."""
    cfg = model.cfg
    return {
        "format": FORMAT,
        "class_names": json.dumps(list(cfg.class_names)),
        "min_size": str(cfg.min_size),
        "max_size": str(cfg.max_size),
        "backbone": cfg.backbone,
        "inputs": _INPUTS_NOTE,
    }


def export_onnx(model: FasterRCNN, out: Path | str, sample_image: Tensor, sample_scale: float) -> Path:
    """Write ``model`` as one ONNX graph (opset 17) to ``out`` atomically; returns the path.

    ``sample_image`` ``[3, h, w]`` (prepared as for ``detect``) is what the tracer runs;
    any image size works afterwards. It should give at least one proposal and one
    detection, so that every branch the tracer follows is the general one.
    """
    import onnx

    from model.atomic import atomic_path

    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("export_onnx: move the model to the CPU first (the graph's constants are CPU tensors)")
    # Process-wide, but only changes exports that meet a stable argsort (which the stock
    # symbolic refuses), so registering it again per call is harmless.
    torch.onnx.register_custom_op_symbolic("aten::argsort", _stable_argsort, OPSET)
    graph = DetectionGraph(model).eval()
    was_training = model.training
    model.eval()
    sample = (sample_image.float().cpu(), torch.tensor(float(sample_scale), dtype=torch.float32))
    try:
        with torch.no_grad():
            found = int(graph(*sample)[1].shape[0])
        if found == 0:
            # The tracer records the path the sample takes; with nothing above the score
            # threshold, torchvision's batched_nms returns early and the graph would
            # always answer "nothing".
            raise ValueError("export_onnx: the sample image gives no detection; trace with one that does")
        with torch.no_grad(), warnings.catch_warnings(), atomic_path(out) as tmp:
            # The tracer warns at every Python-level shape check it freezes (the library's
            # input validation, true for every valid input), and torch warns that the
            # TorchScript exporter is deprecated (see the module docstring for why it is used).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                sample,
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={
                    "image": {1: "height", 2: "width"},
                    "boxes": {0: "detections"},
                    "scores": {0: "detections"},
                    "labels": {0: "detections"},
                },
            )
            proto = onnx.load(str(tmp))
            for key, value in onnx_metadata(model).items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, value
            onnx.checker.check_model(proto)
            onnx.save(proto, str(tmp))
    finally:
        model.train(was_training)
    return Path(out)
