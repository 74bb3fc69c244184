"""``fastgen prepare <dataset>``: write datasets in the formats the DataModules read."""

from __future__ import annotations

import argparse
import logging
import os
import pickle
from pathlib import Path

from fastgen_dm.cli._datamodule import data_root_note
from fastgen_dm.datamodules.image_folder import data_root

logger = logging.getLogger(__name__)


def _output_dir(args: argparse.Namespace) -> Path:
    return Path(args.output_dir or data_root()).resolve()


def _prepare_demo(args: argparse.Namespace) -> int:
    from fastgen_dm.prepare import write_demo_zip
    from fastgen_dm.prepare.demo_wds import SHARD_COUNTS_FILE, write_demo_media_shards, write_demo_shards

    for flag, value in (("--num-samples", args.num_samples), ("--num-media", args.num_media)):
        if value < 1:  # checked before anything is written, not after
            raise ValueError(f"{flag} must be >= 1, got {value}")
    path = _output_dir(args) / "demo" / f"demo-{args.resolution}x{args.resolution}.zip"
    if path.exists() and not args.force:
        print(f"{path} exists (use --force to rewrite it)")
    else:
        write_demo_zip(path, args.num_images, args.resolution, args.num_classes, args.seed, show_progress=True)
        print(f"wrote {args.num_images} images of {args.num_classes} classes to {path}")
    latent = [(kind, write_demo_shards, args.num_samples, f"{kind} samples") for kind in ("image_latent", "video_latent", "pair", "path")]
    media = [(kind, write_demo_media_shards, args.num_media, kind) for kind in ("images", "videos")]
    for kind, write, count, what in latent + media:
        folder = _output_dir(args) / "demo" / "wds" / kind
        if (folder / SHARD_COUNTS_FILE).exists() and not args.force:
            print(f"{folder} exists (use --force to rewrite it)")
            continue
        shards = write(folder, kind, count, seed=args.seed, show_progress=True)
        print(f"wrote {count} {what} in {len(shards)} shards to {folder}")
    return 0


def _prepare_cifar10(args: argparse.Namespace) -> int:
    from fastgen_dm.prepare import cifar10

    path = _output_dir(args) / "cifar10" / cifar10.CIFAR10_ZIP_NAME
    existed = path.exists() and not args.force
    cifar10.prepare_cifar10(path, source=args.source, force=args.force)
    if existed:
        print(f"{path} exists and passed its check (use --force to rewrite it)")
    else:
        print(f"wrote the {cifar10.CIFAR10_TRAIN_IMAGES} CIFAR-10 training images to {path}")
    return 0


def _prepare_imagenet_64(args: argparse.Namespace) -> int:
    from fastgen_dm.prepare.imagenet import prepare_imagenet_64

    report = prepare_imagenet_64(
        args.imagenet_source, _output_dir(args), workers=args.workers, force=args.force, on_bad_image=args.on_bad_image
    )
    _print_report({path: "images" for path in report.outputs.values()}, report.written, report.images, report.bad)
    return 0


def _print_report(outputs: dict, written, count: int, bad) -> None:
    """What a converter wrote or kept, and the unreadable sources it left out."""
    for path, what in outputs.items():
        if path in written:
            print(f"wrote {count} {what} to {path}")
        else:
            print(f"{path} exists and passed its check (use --force to rewrite it)")
    if bad:
        print(f"left out {len(bad)} unreadable images:")
        for path, reason in bad:
            print(f"  {path}: {reason}")


def _devices(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


def _prepare_imagenet_256(args: argparse.Namespace) -> int:
    from fastgen_dm.prepare.latents import DEFAULT_VAE, prepare_imagenet_256

    report = prepare_imagenet_256(
        args.imagenet_source,
        _output_dir(args),
        vae=args.vae or DEFAULT_VAE,
        batch_size=args.batch_size,
        devices=args.devices,
        precision=args.precision,
        workers=args.workers,
        loader_workers=args.loader_workers,
        force=args.force,
        on_bad_image=args.on_bad_image,
    )
    _print_report({report.images_zip: "images", report.latents_zip: "latents"}, report.written, report.images, report.bad)
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
        help="a small labelled dataset of drawn shapes (EDM zip) and WebDataset shards of every family, made locally",
        description="Write demo/demo-RxR.zip: drawn shapes per class in the EDM zip format; "
        "demo/wds/{image_latent,video_latent,pair,path}/: WebDataset shards of each latent family with "
        "shard_counts.json and neg_condition.pth; and demo/wds/{images,videos}/: captioned JPEGs and h264 "
        "mp4 clips of the shapes for ImageWDSDataModule and VideoWDSDataModule; no network needed. "
        "Example: fastgen prepare demo --num-images 4096 --num-samples 1024",
    )
    demo.add_argument("--num-images", type=int, default=2048, help="images to write (default: 2048)")
    demo.add_argument("--resolution", type=int, default=32, help="image side in pixels (default: 32)")
    demo.add_argument("--num-classes", type=int, default=4, help="classes (shape kinds) (default: 4)")
    demo.add_argument(
        "--num-samples", type=int, default=256, help="samples of each latent family's shards (default: 256)"
    )
    demo.add_argument(
        "--num-media", type=int, default=64, help="captioned JPEGs, and as many mp4 clips, to write (default: 64)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the drawing and the shards (default: 0)")
    demo.set_defaults(handler=_prepare_demo)

    cifar10 = datasets.add_parser(
        "cifar10",
        parents=[common],
        help="CIFAR-10 training set (50000 32x32 images) as cifar10/cifar10-32x32.zip",
        description="Write cifar10/cifar10-32x32.zip exactly as EDM's dataset_tool.py does from the official "
        "cifar-10-python.tar.gz (downloaded to cifar10/ when --source is not given; MD5-checked). "
        "An existing zip is checked and kept. Example: fastgen prepare cifar10 --source ~/cifar-10-python.tar.gz",
    )
    cifar10.add_argument(
        "--source", help="local cifar-10-python.tar.gz (default: download it from www.cs.toronto.edu)"
    )
    cifar10.set_defaults(handler=_prepare_cifar10)

    imagenet = datasets.add_parser(
        "imagenet-64",
        parents=[common],
        help="ImageNet train at 64x64: imagenet-64/imagenet-64x64.zip (EDM crop) and imagenet-64x64-edmv2.zip (ADM crop)",
        description="Write imagenet-64/imagenet-64x64.zip (EDM center-crop + Lanczos) and "
        "imagenet-64/imagenet-64x64-edmv2.zip (ADM/EDM2 center-crop-dhariwal) from "
        "DIR/ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG; labels are wnid indices in sorted order. "
        "ImageNet cannot be downloaded for you. Existing zips are checked and kept. "
        "Example: fastgen prepare imagenet-64 --imagenet-source /data/imagenet --workers 32",
    )
    imagenet.add_argument(
        "--imagenet-source", required=True, metavar="DIR", help="folder holding ILSVRC/Data/CLS-LOC/train"
    )
    imagenet.add_argument(
        "--workers", type=int, default=os.cpu_count(), help=f"decoding processes (default: every core, {os.cpu_count()})"
    )
    imagenet.add_argument(
        "--on-bad-image",
        choices=("fail", "skip"),
        default="fail",
        help="an unreadable image stops the run (fail, default) or is left out and listed (skip)",
    )
    imagenet.set_defaults(handler=_prepare_imagenet_64)

    imagenet256 = datasets.add_parser(
        "imagenet-256",
        parents=[common],
        help="ImageNet train at 256x256 (ADM crop) and its SD-VAE latents: imagenet-256/imagenet_256_sd.zip",
        description="Write imagenet-256/imagenet-256x256.zip (ADM/EDM2 center-crop-dhariwal at 256) from "
        "DIR/ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG, then imagenet-256/imagenet_256_sd.zip: each image's "
        "Stable Diffusion VAE posterior mean and std, float32 (8, 32, 32), members "
        "00000/img-mean-std-00000000.npy, same labels. Needs pip install 'fastgen-dm[vae]'. Encodes with "
        "Lightning on every GPU by default (several devices: ddp_spawn). Existing zips are checked and kept. "
        "Example: fastgen prepare imagenet-256 --imagenet-source /data/imagenet --devices 8",
    )
    imagenet256.add_argument(
        "--imagenet-source", required=True, metavar="DIR", help="folder holding ILSVRC/Data/CLS-LOC/train"
    )
    imagenet256.add_argument(
        "--vae",
        metavar="PATH_OR_NAME",
        help="AutoencoderKL folder (save_pretrained) or hub name (default: stabilityai/sd-vae-ft-mse)",
    )
    imagenet256.add_argument("--batch-size", type=int, default=64, help="images per device per step (default: 64)")
    imagenet256.add_argument(
        "--devices",
        type=_devices,
        default="auto",
        help="Lightning devices: auto (every GPU, else 1 CPU), N, or 0,1 (default: auto)",
    )
    imagenet256.add_argument(
        "--precision",
        choices=("32-true", "bf16-mixed"),
        default="32-true",
        help="VAE precision: 32-true (fp32 with TF32 off; default) or bf16-mixed (faster on GPUs, less exact)",
    )
    imagenet256.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count(),
        help=f"JPEG decoding processes (default: every core, {os.cpu_count()})",
    )
    imagenet256.add_argument(
        "--loader-workers", type=int, default=2, help="DataLoader workers per device while encoding (default: 2)"
    )
    imagenet256.add_argument(
        "--on-bad-image",
        choices=("fail", "skip"),
        default="fail",
        help="an unreadable image stops the run (fail, default) or is left out and listed (skip)",
    )
    imagenet256.set_defaults(handler=_prepare_imagenet_256)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fastgen prepare", description="Write datasets in the formats the DataModules read.")
    build_parser(parser)
    args = parser.parse_args(argv)
    print(data_root_note(args.output_dir))
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, ImportError, pickle.UnpicklingError) as err:
        parser.exit(2, f"fastgen prepare {args.dataset}: error: {err}\n")
