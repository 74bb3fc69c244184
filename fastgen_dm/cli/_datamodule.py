"""The DataModule arguments the data tools share with ``fastgen fit``: ``--config FILE`` and ``--data ...``.

A tool's own options go to its ``argparse`` parser; everything else goes to a jsonargparse
parser holding only ``--data`` (the same subclass argument LightningCLI builds for ``fit``), so
``--data DemoDataModule``, ``--data.batch_size 8`` and ``--data.help CLASS`` behave as in ``fit``.
A ``--config`` file is a ``fit`` config: only its ``data:`` section is read. Trainer and model are
neither parsed nor built, so a config written for 8 GPUs still works on a laptop.

Example: ``fastgen verify --config configs/quickstart.yaml --data.batch_size 8`` parses as
``--data '<the data: section as JSON>' --data.batch_size 8``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import textwrap
import warnings
from pathlib import Path
from typing import Any, NoReturn, Sequence

import yaml

DATA_HELP = """\
DataModule, as for `fastgen fit`:
  --config FILE         a fit config; only its data: section is read (repeatable: later files win)
  --data CLASS          a DataModule by short name (DemoDataModule, ImageLatentDataModule, ...)
  --data.ARG VALUE      one of its arguments (applied after the config files)
  --data.help CLASS     every argument of one DataModule, with its documentation"""


class ToolError(Exception):
    """A user error the tool reports as ``prog: error: message`` with exit status 2."""


def tool_parser(prog: str, description: str, examples: Sequence[str]) -> argparse.ArgumentParser:
    """An argparse parser with the shared ``--config`` option and the DataModule help in its epilog."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="\n\n".join(textwrap.fill(part, 100) for part in description.split("\n\n")),
        epilog=DATA_HELP + "\n\nExamples:\n" + "\n".join(f"  {line}" for line in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --data.* must never be taken for an abbreviation of a tool option
    )
    parser.add_argument(
        "--config", action="append", default=[], metavar="FILE", help="a fit config file; its data: section is used (repeatable)"
    )
    return parser


def fail(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Exit with status 2 and ``prog: error: message`` (no usage: the message says what to fix)."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def _config_data(path: str) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ToolError(f"--config {path}: cannot read it ({err.strerror or err})") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ToolError(f"--config {path}: not YAML ({err})") from None
    if not isinstance(config, dict) or config.get("data") is None:
        raise ToolError(f"--config {path} has no data: section; it must be a `fastgen fit` config (data: class_path: ...)")
    return config["data"]


def data_argv(configs: Sequence[str], rest: Sequence[str]) -> list[str]:
    """The data parser's arguments: each config's data section as ``--data <json>``, then ``rest``.

    Example: a config with ``data: {class_path: fastgen_dm.DemoDataModule}`` and
    ``rest=["--data.batch_size", "8"]`` give
    ``["--data", '{"class_path": "fastgen_dm.DemoDataModule"}', "--data.batch_size", "8"]``.
    """
    argv: list[str] = []
    for path in configs:
        section = _config_data(path)
        argv += ["--data", section if isinstance(section, str) else json.dumps(section)]
    return argv + list(rest)


def build_datamodule(parser: argparse.ArgumentParser, configs: Sequence[str], rest: Sequence[str]) -> Any:
    """The DataModule that ``fastgen fit`` would build from the same ``--config``/``--data`` arguments.

    Exits with status 2 (naming the argument) on a bad config, an unknown option or class, or a
    value the DataModule rejects; ``--data.help CLASS`` prints that class's options and exits 0.
    """
    from fastgen_dm.cli.train import OneLineErrorParser
    from fastgen_dm.datamodules import PlannedDataModule  # imports every DataModule, so short names resolve

    try:
        argv = data_argv(configs, rest)
    except ToolError as err:
        fail(parser, str(err))
    if not argv:
        fail(parser, "no DataModule given: pass --config FILE or --data CLASS (see --help)")
    from fastgen_dm.cli.main import unknown_datamodule

    unknown = unknown_datamodule(rest)
    if unknown:
        fail(parser, unknown)
    data_parser = OneLineErrorParser(prog=parser.prog, exit_on_error=True)
    data_parser.add_lightning_class_args(PlannedDataModule, "data", subclass_mode=True, required=True)
    config = data_parser.parse_args(argv)  # exits 2 itself, naming the argument, on bad input
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # jsonargparse renames instantiate_classes
            init = data_parser.instantiate_classes(config)
    except (ValueError, TypeError) as err:
        fail(parser, f"--data: {root_cause(err)}")
    return init.data


def data_root_note(output_dir: str | None = None) -> str:
    """Where data goes, as an absolute path with where it came from: relative defaults depend
    on the current folder, which is easy to miss.

    Example: with no $DATA_ROOT_DIR, in /home/me: "data root: /home/me/FASTGEN_OUTPUT/DATA
    (FASTGEN_OUTPUT/DATA under the current folder; set $DATA_ROOT_DIR to change it)".
    """
    from fastgen_dm.datamodules.image_folder import DEFAULT_DATA_ROOT, data_root

    if output_dir is not None:
        source = "--output-dir"
    elif "DATA_ROOT_DIR" in os.environ:
        source = "$DATA_ROOT_DIR"
    else:
        source = f"{DEFAULT_DATA_ROOT} under the current folder; set $DATA_ROOT_DIR to change it"
    return f"data root: {Path(output_dir or data_root()).resolve()} ({source})"


def root_cause(err: BaseException) -> BaseException:
    """The innermost error of a chain: the DataModule's own message, not jsonargparse's Union wrapper.

    An error raised ``from None`` says everything itself: the chain stops there.
    """
    while True:
        inner = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        if inner is None:
            return err
        err = inner


def is_planned(dm: Any) -> bool:
    """Whether ``dm`` is one of this package's DataModules, with their public inspection API
    (``with_overrides``, ``data_files``, ``shards``, ...); ``--data`` also takes any other."""
    from fastgen_dm.datamodules import PlannedDataModule

    return isinstance(dm, PlannedDataModule)


def override(dm: Any, name: str, value: Any, changed: list[str]) -> None:
    """Set ``dm.<name> = value`` when the DataModule has that attribute; note it in ``changed`` when it differs.

    For a DataModule of another package, which offers no ``with_overrides``.
    """
    if hasattr(dm, name) and getattr(dm, name) != value:
        changed.append(f"{name}={value!r}")
        setattr(dm, name, value)


def workers_inherit_handlers() -> bool:
    """Whether DataLoader workers start by fork and so inherit the main process's logging handlers."""
    return multiprocessing.get_start_method(allow_none=False) == "fork"


def family_name(dm: Any) -> str:
    return type(dm).__name__
