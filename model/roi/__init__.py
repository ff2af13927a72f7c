"""Fast R-CNN part of Faster R-CNN: RoI sampling and targets, detector head, loss, post-processing."""
from __future__ import annotations

from model.roi.head import DetectorHead
from model.roi.loss import detector_loss
from model.roi.postprocess import postprocess_detections
from model.roi.sampling import RoISample, sample_rois

__all__ = ["DetectorHead", "RoISample", "detector_loss", "postprocess_detections", "sample_rois"]
