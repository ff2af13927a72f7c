"""Stage ``prepare_data``: make the dataset (or check an external one) and write its manifest.

Output: ``data/prepared/`` holding

- ``manifest.json``: layout, root, class list, the train and test splits with their image
  ids, and a content digest of everything the later stages read (parsed annotations and
  image bytes), so that any change of the data changes this file and DVC re-runs what
  follows;
- ``classes.json``: the class list alone (what ``init_weights`` depends on: new images
  with the same classes do not re-initialise the network);
- ``synthetic/``: the generated VOC-layout dataset, for the synthetic profiles.

External datasets (BCCD, VOC2007) are read where they are (``data.source``) rather than
copied: the manifest's digest ties the outputs to their content.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from model.data.loading import load_dataset
from model.data.records import DatasetError, DetectionDataset
from model.data.synthetic import generate_synthetic_voc
from model.data.validate import pipeline_problems
from tasks import layout
from tasks.atomic import publish_directory, write_json
from tasks.lazy_prefect import task
from tasks.params import ParamsError
from tasks.settings import Settings


ROLES = ("train", "test")
MANIFEST_VERSION = 1


class ManifestError(RuntimeError):
    """The prepared data is missing or does not match what the manifest recorded."""


def _resolve(root: str) -> Path:
    path = Path(root)
    return path if path.is_absolute() else layout.workspace() / path


def dataset_digest(dataset: DetectionDataset) -> str:
    """sha256 over the parsed records (ids, sizes, objects) and every image file's bytes."""
    hasher = hashlib.sha256()
    hasher.update(json.dumps(list(dataset.classes)).encode("utf-8"))
    for record in tqdm(dataset.records, desc="hash images", dynamic_ncols=True, leave=False):
        objects = [[o.name, list(o.box), o.difficult] for o in record.objects]
        hasher.update(json.dumps([record.image_id, record.width, record.height, objects]).encode("utf-8"))
        with open(record.path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(chunk)
    return hasher.hexdigest()


def _summary(dataset: DetectionDataset) -> dict[str, Any]:
    counts = Counter(o.name for r in dataset.records for o in r.objects if not o.difficult)
    return {
        "images": len(dataset.records),
        "objects": sum(counts.values()),
        "difficult": sum(1 for r in dataset.records for o in r.objects if o.difficult),
        "objects_per_class": {name: counts.get(name, 0) for name in dataset.classes},
        "fixups": len(dataset.fixups),
    }


def prepare(settings: Settings) -> dict[str, Any]:
    """Build ``data/prepared``; returns the metrics (image and box counts per split)."""
    data = settings.data
    data_layout = data.layout
    synthetic = data.synthetic
    splits = {"train": data.train_split, "test": data.test_split}
    classes = data.classes or None
    result: dict[str, Any] = {}

    def fill(staging: Path) -> None:
        if synthetic:
            if data_layout != "voc":
                raise ParamsError(f"data.layout must be 'voc' for generated data, got {data_layout!r}")
            generate_synthetic_voc(staging / layout.SYNTHETIC_ROOT.name, synthetic)
            root_text = layout.SYNTHETIC_ROOT.as_posix()
            read_root = staging / layout.SYNTHETIC_ROOT.name
        else:
            root_text = data.source
            read_root = _resolve(root_text)
            if not read_root.exists():
                raise ManifestError(
                    f"data.source {root_text!r} does not exist (resolved to {read_root}); "
                    "set data.source (an absolute path for `dvc exp run --temp`)"
                )
        if splits["train"] == splits["test"]:
            raise ParamsError(f"data.train_split and data.test_split are both {splits['train']!r}; they must differ")
        # Every bad file is collected (the COCO reader has one file: it raises), then the checks of
        # `python -m model.data validate` run: all found now, not one per run after four training steps.
        errors: list[DatasetError] = []
        collect = {"errors": errors} if data_layout != "coco" else {}
        datasets = {role: load_dataset(read_root, data_layout, split, classes, **collect) for role, split in splits.items()}
        found = datasets["train"].classes
        if datasets["test"].classes != found:
            raise ManifestError(f"{read_root}: train and test splits disagree on classes ({found} vs {datasets['test'].classes})")
        problems = list(dict.fromkeys(str(error) for error in errors))
        problems += pipeline_problems(
            {splits[role]: ds for role, ds in datasets.items()}, read_root, min_size=data.input.min_size,
            max_size=data.input.max_size, decode_images=True
        )
        if problems:
            listed = "\n".join(f"  - {line}" for line in problems)
            raise DatasetError(f"{read_root}: the data cannot be used ({len(problems)} problem(s)):\n{listed}")
        manifest = {
            "version": MANIFEST_VERSION,
            "name": data.name,
            "layout": data_layout,
            "root": root_text,
            "classes": list(found),
            "splits": {
                role: {
                    "name": splits[role],
                    "image_ids": [r.image_id for r in ds.records],
                    "digest": dataset_digest(ds),
                    "fixups": list(ds.fixups),
                }
                for role, ds in datasets.items()
            },
        }
        write_json(staging / layout.MANIFEST.name, manifest)
        write_json(staging / layout.CLASSES.name, {"classes": list(found)})
        result.update({role: _summary(ds) for role, ds in datasets.items()})
        result["classes"] = len(found)

    publish_directory(layout.PREPARED, fill)
    return result


def read_manifest(path: Path = layout.MANIFEST) -> dict[str, Any]:
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: not found; run the prepare_data stage first") from None
    except ValueError as error:
        raise ManifestError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        raise ManifestError(f"{path}: not a dataset manifest of version {MANIFEST_VERSION}")
    return manifest


def read_classes(path: Path = layout.CLASSES) -> tuple[str, ...]:
    try:
        return tuple(json.loads(Path(path).read_text(encoding="utf-8"))["classes"])
    except FileNotFoundError:
        raise ManifestError(f"{path}: not found; run the prepare_data stage first") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ManifestError(f"{path}: not a class list: {error}") from error


def load_split(role: str, manifest: Mapping[str, Any] | None = None) -> DetectionDataset:
    """The ``train`` or ``test`` split recorded in the manifest, checked against its image ids."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    manifest = manifest or read_manifest()
    split = manifest["splits"][role]
    dataset = load_dataset(_resolve(manifest["root"]), manifest["layout"], split["name"], tuple(manifest["classes"]))
    ids = [r.image_id for r in dataset.records]
    if ids != split["image_ids"]:
        raise ManifestError(
            f"{layout.MANIFEST}: the {role} split ({split['name']}) of {manifest['root']} changed since prepare_data "
            f"ran ({len(ids)} images now, {len(split['image_ids'])} recorded); re-run prepare_data"
        )
    from tasks.tracking import log_dataset_read

    log_dataset_read(manifest, role, _resolve(manifest["root"]))
    return dataset


@task(name="prepare_data")
def prepare_data_task(settings: Settings) -> dict[str, Any]:
    """Prefect task: generate or check the dataset; log counts to MLflow."""
    from tasks.tracking import log_dataset_read, stage_run

    with stage_run("prepare_data", settings.tracking.experiment, settings) as run:
        metrics = prepare(settings)
        write_json(layout.metrics("prepare_data"), metrics)
        manifest = read_manifest()
        for role in ROLES:
            log_dataset_read(manifest, role, _resolve(manifest["root"]))
        run.log_metrics(metrics)
        run.log_artifact(layout.MANIFEST, "data")
        run.log_artifact(layout.metrics("prepare_data"), "metrics")
    return metrics
