"""Selective search over the default dataset: one process against N (``model.selective_search``).

The ``ss_proposals`` stage splits the images over ``pipeline.ss_workers`` processes. This
script runs selective search over every image of the default profile's dataset (params.yaml:
its synthetic generator, both splits) with the profile's ``ablations.selective_search``
settings, once in this process and once over ``--workers`` processes, checks that the boxes
are identical, and prints both times and the speed-up (issue #13's goal: >= 1.7x with 2).

Usage (from the repository root, on an otherwise idle machine: the ratio is only meaningful
when N cores are free)::

    python benchmarks/ss_parallel.py                # 2 processes, the default dataset
    python benchmarks/ss_parallel.py --workers 4 --images 100

The last line reads ``ss_speedup=X``. Process start-up (each worker imports torch) counts
against the parallel run, as it does in the stage.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from model.data.records import DetectionDataset  # noqa: E402
from model.data.synthetic import SyntheticSpec, generate_synthetic_voc  # noqa: E402
from model.data.voc import load_voc  # noqa: E402
from model.selective_search import selective_search_dataset  # noqa: E402
from tasks.params import load_params  # noqa: E402
from tasks.settings import decode_dataclass  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="processes of the parallel run")
    parser.add_argument("--images", type=int, default=0, help="synthetic images (0: the profile's count)")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"), help="profile whose data and SS settings to use")
    args = parser.parse_args()

    params = load_params(args.params)
    synthetic = dict(params["data"].get("synthetic") or {})
    if not synthetic:
        sys.exit(f"{args.params}: data.synthetic is not set; this benchmark generates its images")
    if args.images:
        synthetic["num_images"] = args.images
    settings = dict(params["ablations"]["selective_search"])
    with tempfile.TemporaryDirectory() as work:
        root = generate_synthetic_voc(Path(work) / "data", decode_dataclass(SyntheticSpec, synthetic, "data.synthetic"))
        splits = [load_voc(root, split) for split in ("trainval", "test")]
        dataset = DetectionDataset(root, splits[0].classes, [r for s in splits for r in s.records])
        print(f"{len(dataset)} images, settings {settings}, {os.cpu_count()} cores", flush=True)
        timed = {}
        for workers in (1, args.workers):
            start = time.perf_counter()
            timed[workers] = selective_search_dataset(dataset, progress=False, workers=workers, **settings)
            seconds = time.perf_counter() - start
            timed[workers, "s"] = seconds
            print(f"workers={workers}: {seconds:.2f} s ({len(dataset) / seconds:.2f} img/s)", flush=True)
    serial, parallel = timed[1], timed[args.workers]
    same = list(serial) == list(parallel) and all(torch.equal(serial[k][0], parallel[k][0]) for k in serial)
    if not same:
        sys.exit("the parallel run's boxes differ from the serial run's")
    print("boxes identical: yes")
    print(f"ss_speedup={timed[1, 's'] / timed[args.workers, 's']:.2f}")


if __name__ == "__main__":
    main()
