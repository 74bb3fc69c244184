"""The ``fastgen`` command: LightningCLI's training subcommands plus the data tools, one help."""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import sys
from typing import Callable, Sequence

from fastgen_dm import __version__


# The training subcommands and the data tools (their modules are imported only when run, so
# `fastgen --help` starts in a fraction of a second instead of importing Lightning).
LIGHTNING_SUBCOMMANDS = {
    "fit": "Train a model on a DataModule (LightningCLI).",
    "validate": "Run the validation loop once (LightningCLI).",
    "test": "Run the test loop once (LightningCLI).",
    "predict": "Run the predict loop once (LightningCLI).",
}
TOOLS = {
    "prepare": "Write a dataset in the format a DataModule reads: demo, cifar10, imagenet-64, imagenet-256.",
    "index": "Index WebDataset shards: sample counts and byte offsets for exact epochs.",
    "verify": "Decode every sample once; list the bad ones and write an ignore index.",
    "bench": "Measure a DataModule's loader: samples/s, MB/s, data wait, against raw reads.",
    "show": "Draw one batch as a picture: image grid, video frame strips, latent channels.",
    "ledger": "Name the samples each GPU trained on at a step (runs with ledger_dir); write them as an ignore index.",
}


def _log_to_stderr() -> None:
    # After Lightning is imported: it gives its loggers their own handler only when the root
    # logger has none, and a root handler from before would print each of its lines twice.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("gcsfs").setLevel(logging.WARNING)  # it announces its experimental features on import


def _run_tool(name: str, argv: list[str]) -> int:
    tool: Callable[[list[str]], int] = importlib.import_module(f"fastgen_dm.cli.{name}").main
    _log_to_stderr()
    return tool(argv)


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastgen",
        description="Train fast generative models on fastgen-dm DataModules, and prepare their data.",
        epilog="Examples:\n"
        "  fastgen fit --config configs/quickstart.yaml\n"
        "  fastgen fit --data CIFAR10DataModule --data.batch_size 64 --trainer.max_steps 1000\n"
        "  fastgen fit --data.help CIFAR10DataModule     (every option of one DataModule)\n"
        "  fastgen prepare demo\n"
        "Run 'fastgen COMMAND --help' for the options of one command. An error during a run is one\n"
        "line; 'fastgen fit --debug ...' or FASTGEN_DEBUG=1 shows its traceback.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fastgen-dm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in {**LIGHTNING_SUBCOMMANDS, **TOOLS}.items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


def unknown_datamodule(argv: Sequence[str]) -> str | None:
    """An error for ``--data NAME`` (or ``--data.help NAME``) naming no DataModule of the package, else None.

    Dotted values (class paths of any LightningDataModule, config files) are left to LightningCLI.
    """
    import fastgen_dm

    known = sorted(name for name in fastgen_dm.__all__ if name.endswith("DataModule"))
    by_lower = {name.lower(): name for name in known}
    for flag, value in zip(argv, argv[1:]):
        if flag in ("--data", "--data.help") and "." not in value and value not in known:
            # Case-insensitively, so 'cifar10datamodule' finds CIFAR10DataModule.
            close = difflib.get_close_matches(value.lower(), by_lower, n=1)
            hint = f"did you mean {by_lower[close[0]]!r}? " if close else ""
            return f"{flag} {value!r} is no DataModule of fastgen-dm; {hint}choose from {', '.join(known)}, or give a class path (my.module.MyDataModule)"
    return None


def _one_line(err: BaseException) -> str:
    """The message of an error raised during a run, on one line.

    An error re-raised from a DataLoader worker or a spawned DDP process carries the original
    traceback as its text; its last line (``TooManyBadSamplesError: ...``) is the message.
    """
    from fastgen_dm.cli._datamodule import root_cause

    text = str(root_cause(err)).strip()
    if "Traceback (most recent call last)" in text:
        return text.splitlines()[-1].strip()
    return " ".join(text.split())


def _is_data_error(err: BaseException) -> bool:
    """Errors a user's data or settings cause (reported in one line), not bugs (traceback)."""
    from fastgen_dm.read.bad_data import TooManyBadSamplesError

    return isinstance(err, (ValueError, OSError, TooManyBadSamplesError)) or "Traceback (most recent call last)" in str(err)


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-"):
        _top_parser().parse_args(argv or ["--help"])
        return 0
    command, rest = argv[0], argv[1:]
    if command in TOOLS:
        return _run_tool(command, rest)
    if command in LIGHTNING_SUBCOMMANDS:
        error = unknown_datamodule(rest)
        if error:
            _top_parser().exit(2, f"fastgen {command}: error: {error}\n")
        debug = "--debug" in rest or os.environ.get("FASTGEN_DEBUG", "") not in ("", "0")
        args = [command, *(arg for arg in rest if arg != "--debug")]
        if from_command_line:
            sys.argv[1:] = args  # LightningCLI reads it, and warns when given args as well
        from fastgen_dm.cli.train import lightning_main

        _log_to_stderr()
        try:
            return lightning_main(None if from_command_line else args)
        except Exception as err:
            if debug or not _is_data_error(err):
                raise
            _top_parser().exit(1, f"fastgen {command}: error: {_one_line(err)} (--debug shows the traceback)\n")
    known = [*LIGHTNING_SUBCOMMANDS, *TOOLS]
    close = difflib.get_close_matches(command, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    _top_parser().error(f"unknown command {command!r}{hint} (choose from {', '.join(known)})")
    return 2


if __name__ == "__main__":
    sys.exit(main())
