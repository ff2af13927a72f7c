"""``python -m model.data``: ``synthesize`` a dataset, ``validate`` one, or print its ``stats``.

Exit codes of ``validate``: 0 when the data is valid (counted fix-ups allowed),
1 when any hard problem was found, 2 for command-line errors.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from model.data.loading import LAYOUTS
from model.data.synthetic import SHAPE_CLASSES, SyntheticSpec, generate_synthetic_voc
from model.data.validate import DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE, format_report, validate_dataset


def _class_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of class names")
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synthesize", help="write the synthetic shapes dataset in the VOC layout")
    defaults = SyntheticSpec()
    synth.add_argument("--root", type=Path, required=True, help="VOC root to create")
    synth.add_argument("--num-images", type=int, default=defaults.num_images)
    synth.add_argument("--image-size", type=int, nargs=2, metavar=("W", "H"), default=list(defaults.image_size))
    synth.add_argument("--seed", type=int, default=defaults.seed)
    synth.add_argument("--classes", type=_class_list, default=defaults.classes,
                       help=f"comma-separated subset of {','.join(SHAPE_CLASSES)}")
    synth.add_argument("--objects-per-image", type=int, nargs=2, metavar=("MIN", "MAX"), default=list(defaults.objects_per_image))
    synth.add_argument("--object-size", type=float, nargs=2, metavar=("MIN", "MAX"), default=list(defaults.object_size),
                       help="long side of an object in pixels")
    synth.add_argument("--max-aspect-ratio", type=float, default=defaults.max_aspect_ratio)
    synth.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    synth.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    synth.add_argument("--image-format", choices=("jpg", "png"), default=defaults.image_format)
    synth.add_argument("--overwrite", action="store_true", help="replace an existing synthetic dataset with another spec")

    check = commands.add_parser("validate", help="check a dataset and list every problem")
    check.add_argument("--root", type=Path, required=True,
                       help="voc/flat: dataset folder; coco: the JSON file or a folder with annotations.json + images/")
    check.add_argument("--layout", choices=LAYOUTS, default="voc")
    check.add_argument("--split", default=None, help="one split (default: everything)")
    check.add_argument("--classes", type=_class_list, default=None, help="comma-separated class list to enforce")
    check.add_argument("--no-decode", action="store_true", help="skip fully decoding every image")
    check.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE,
                       help=f"network input: shorter side after resizing (data.input.min_size; default {DEFAULT_MIN_SIZE})")
    check.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE,
                       help=f"network input: cap on the longer side (data.input.max_size; default {DEFAULT_MAX_SIZE})")
    check.add_argument("--train-split", default=None, help="split the pipeline trains on (voc default trainval, flat train)")
    check.add_argument("--test-split", default=None, help="split the pipeline tests on (default test); must not overlap the train split")

    stats = commands.add_parser("stats", help="objects per image, box sizes in feature cells, flags, classes, colour cues")
    stats.add_argument("--root", type=Path, required=True, help="dataset folder (as for validate)")
    stats.add_argument("--layout", choices=LAYOUTS, default="voc")
    stats.add_argument("--split", default="trainval")
    stats.add_argument("--input-size", type=int, nargs=2, metavar=("MIN", "MAX"), default=[600, 1000],
                       help="network input: shorter side MIN, longer at most MAX (default: the paper's 600 1000)")
    stats.add_argument("--no-colour", action="store_true", help="skip the colour cues (they read every image)")
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    return parser


def _stats(args: argparse.Namespace) -> int:
    import json

    from model.data.loading import load_dataset
    from model.data.records import DatasetError
    from model.data.stats import dataset_stats, format_stats

    min_size, max_size = args.input_size
    if not 0 < min_size <= max_size:
        print(f"error: --input-size must be 0 < MIN <= MAX, got {min_size} {max_size}", file=sys.stderr)
        return 2
    try:
        dataset = load_dataset(args.root, args.layout, args.split)
        stats = dataset_stats(dataset, (min_size, max_size), colour=not args.no_colour)
    except (DatasetError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(stats.to_dict(), indent=2))
    else:
        print(format_stats(stats, f"{args.root} ({args.layout}, {args.split})"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "synthesize":
        try:
            spec = SyntheticSpec(
                num_images=args.num_images,
                image_size=tuple(args.image_size),
                seed=args.seed,
                classes=args.classes,
                objects_per_image=tuple(args.objects_per_image),
                object_size=tuple(args.object_size),
                max_aspect_ratio=args.max_aspect_ratio,
                test_fraction=args.test_fraction,
                val_fraction=args.val_fraction,
                image_format=args.image_format,
            )
            root = generate_synthetic_voc(args.root, spec, overwrite=args.overwrite)
        except (ValueError, FileExistsError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2 if isinstance(error, ValueError) else 1
        print(f"synthetic VOC dataset: {root} ({spec.num_images} images)")
        return 0
    if args.command == "stats":
        logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
        return _stats(args)
    # Fix-ups are listed in the report; the readers' per-line warnings would only repeat them.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if args.min_size <= 0 or args.max_size <= 0:
        print(f"error: --min-size and --max-size must be positive, got {args.min_size} / {args.max_size}", file=sys.stderr)
        return 2
    report = validate_dataset(
        args.root, args.layout, args.split, args.classes, decode_images=not args.no_decode,
        min_size=args.min_size, max_size=args.max_size, train_split=args.train_split, test_split=args.test_split,
    )
    print(format_report(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
