"""``fastgen prepare <dataset>``: write datasets in the formats the DataModules read."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fastgen_dm.datamodules.edm_zip import data_root

logger = logging.getLogger(__name__)


def _output_dir(args: argparse.Namespace) -> Path:
    return Path(args.output_dir or data_root())


def _prepare_demo(args: argparse.Namespace) -> int:
    from fastgen_dm.prepare import write_demo_zip
    from fastgen_dm.prepare.demo_wds import SHARD_COUNTS_FILE, write_demo_shards

    if args.num_samples < 1:  # checked before the zip is written, not after
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    path = _output_dir(args) / "demo" / f"demo-{args.resolution}x{args.resolution}.zip"
    if path.exists() and not args.force:
        print(f"{path} exists (use --force to rewrite it)")
    else:
        write_demo_zip(path, args.num_images, args.resolution, args.num_classes, args.seed, show_progress=True)
        print(f"wrote {args.num_images} images of {args.num_classes} classes to {path}")
    for kind in ("image_latent", "video_latent", "pair", "path"):
        folder = _output_dir(args) / "demo" / "wds" / kind
        if (folder / SHARD_COUNTS_FILE).exists() and not args.force:
            print(f"{folder} exists (use --force to rewrite it)")
            continue
        shards = write_demo_shards(folder, kind, args.num_samples, seed=args.seed, show_progress=True)
        print(f"wrote {args.num_samples} {kind} samples in {len(shards)} shards to {folder}")
    return 0


def build_parser(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--output-dir", help="data root to write under (default: $DATA_ROOT_DIR, else FASTGEN_OUTPUT/DATA)"
    )
    common.add_argument("--force", action="store_true", help="rewrite an existing output")
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)

    demo = datasets.add_parser(
        "demo",
        parents=[common],
        help="a small labelled dataset of drawn shapes (EDM zip) and latent WebDataset shards, made locally",
        description="Write demo/demo-RxR.zip: drawn shapes per class in the EDM zip format, and "
        "demo/wds/{image_latent,video_latent,pair,path}/: WebDataset shards of each latent family with "
        "shard_counts.json and neg_condition.pth; no network needed. "
        "Example: fastgen prepare demo --num-images 4096 --num-samples 1024",
    )
    demo.add_argument("--num-images", type=int, default=2048, help="images to write (default: 2048)")
    demo.add_argument("--resolution", type=int, default=32, help="image side in pixels (default: 32)")
    demo.add_argument("--num-classes", type=int, default=4, help="classes (shape kinds) (default: 4)")
    demo.add_argument(
        "--num-samples", type=int, default=256, help="samples of each latent family's shards (default: 256)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the drawing and the shards (default: 0)")
    demo.set_defaults(handler=_prepare_demo)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fastgen prepare", description="Write datasets in the formats the DataModules read.")
    build_parser(parser)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"fastgen prepare {args.dataset}: error: {err}\n")
