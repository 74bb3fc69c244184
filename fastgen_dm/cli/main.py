"""The ``fastgen`` command: LightningCLI's training subcommands plus the data tools, one help."""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from typing import Callable

from fastgen_dm import __version__


def _tools() -> dict[str, tuple[str, Callable[[list[str]], int]]]:
    from fastgen_dm.cli import bench, index, prepare, show, verify

    return {
        "prepare": ("Write a dataset in the format a DataModule reads: demo, cifar10, imagenet-64, imagenet-256.", prepare.main),
        "index": ("Index WebDataset shards: sample counts and byte offsets for exact epochs.", index.main),
        "verify": ("Decode every sample once; list the bad ones and write an ignore index.", verify.main),
        "bench": ("Measure a DataModule's loader: samples/s, MB/s, data wait, against raw reads.", bench.main),
        "show": ("Draw one batch as a picture: image grid, video frame strips, latent channels.", show.main),
    }


def _top_parser(tools: dict[str, tuple[str, Callable[[list[str]], int]]]) -> argparse.ArgumentParser:
    from fastgen_dm.cli.train import LIGHTNING_SUBCOMMANDS

    parser = argparse.ArgumentParser(
        prog="fastgen",
        description="Train fast generative models on fastgen-dm DataModules, and prepare their data.",
        epilog="Examples:\n"
        "  fastgen fit --config configs/quickstart.yaml\n"
        "  fastgen fit --data CIFAR10DataModule --data.batch_size 64 --trainer.max_steps 1000\n"
        "  fastgen fit --data.help CIFAR10DataModule     (every option of one DataModule)\n"
        "  fastgen prepare demo\n"
        "Run 'fastgen COMMAND --help' for the options of one command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fastgen-dm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in {**LIGHTNING_SUBCOMMANDS, **{k: v[0] for k, v in tools.items()}}.items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


def _unknown_datamodule(argv: list[str]) -> str | None:
    """An error for ``--data NAME`` (or ``--data.help NAME``) naming no DataModule of the package, else None.

    Dotted values (class paths, config files) are left to LightningCLI.
    """
    import fastgen_dm

    known = sorted(name for name in fastgen_dm.__all__ if name.endswith("DataModule"))
    for flag, value in zip(argv, argv[1:]):
        if flag in ("--data", "--data.help") and "." not in value and value not in known:
            close = difflib.get_close_matches(value, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            return f"{flag} {value!r} is no DataModule of fastgen-dm; {hint}choose from {', '.join(known)}"
    return None


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tools = _tools()
    if not argv or argv[0].startswith("-"):
        _top_parser(tools).parse_args(argv or ["--help"])
        return 0
    command, rest = argv[0], argv[1:]
    if command in tools:
        return tools[command][1](rest)
    from fastgen_dm.cli.train import LIGHTNING_SUBCOMMANDS, lightning_main

    if command in LIGHTNING_SUBCOMMANDS:
        error = _unknown_datamodule(rest)
        if error:
            _top_parser(tools).exit(2, f"fastgen {command}: error: {error}\n")
        return lightning_main(None if from_command_line else argv)  # LightningCLI warns when given both
    known = [*LIGHTNING_SUBCOMMANDS, *tools]
    close = difflib.get_close_matches(command, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    _top_parser(tools).error(f"unknown command {command!r}{hint} (choose from {', '.join(known)})")
    return 2


if __name__ == "__main__":
    sys.exit(main())
