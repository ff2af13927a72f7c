"""Evaluation: VOC AP exactly as the devkit, devkit results files, COCO AP, proposal recall.

* ``voc_ap``: ``average_precision``, ``evaluate_class``, ``evaluate_voc`` -> ``VOCResult``
* ``results_io``: ``write_voc_results`` / ``read_voc_results`` (``comp4_det_<set>_<class>.txt``, 1-based)
* ``coco_eval``: ``evaluate_coco`` through pycocotools
* ``recall``: ``proposal_recall`` -> ``RecallResult``
* ``voc``: the ``python -m model.evaluation.voc`` CLI

The names above are importable from this package too, but load on first use
(PEP 562): the CLI then starts without torch or pycocotools, and ``-m`` does
not find its own module already imported.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ClassResult": "voc_ap",
    "VOCResult": "voc_ap",
    "average_precision": "voc_ap",
    "evaluate_class": "voc_ap",
    "evaluate_voc": "voc_ap",
    "read_voc_results": "results_io",
    "write_voc_results": "results_io",
    "evaluate_coco": "coco_eval",
    "RecallResult": "recall",
    "proposal_recall": "recall",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
