"""Dataset readers (VOC, flat, COCO), the synthetic generator, image loading and validation.

Everything here yields :class:`DetectionDataset` s of :class:`ImageRecord` s with
0-based inclusive boxes (see ``model``). Importing this package does not import
torch.
"""
from model.data.flat import load_flat, split_ids
from model.data.images import image_size, load_image_rgb
from model.data.loading import load_dataset
from model.data.records import DatasetError, DetectionDataset, ImageRecord, ObjectAnnotation
from model.data.synthetic import SHAPE_CLASSES, SyntheticSpec, generate_synthetic_voc, render_synthetic_image
from model.data.validate import ValidationReport, format_report, pipeline_problems, validate_dataset
from model.data.voc import (
    VOC_CLASSES,
    discover_classes,
    load_voc,
    load_voc_annotations,
    parse_voc_annotation,
    read_image_set,
    training_objects,
)

__all__ = [
    "DatasetError",
    "DetectionDataset",
    "ImageRecord",
    "ObjectAnnotation",
    "SHAPE_CLASSES",
    "SyntheticSpec",
    "VOC_CLASSES",
    "ValidationReport",
    "discover_classes",
    "format_report",
    "generate_synthetic_voc",
    "image_size",
    "load_dataset",
    "load_flat",
    "load_image_rgb",
    "load_voc",
    "load_voc_annotations",
    "parse_voc_annotation",
    "pipeline_problems",
    "read_image_set",
    "render_synthetic_image",
    "split_ids",
    "training_objects",
    "validate_dataset",
]
