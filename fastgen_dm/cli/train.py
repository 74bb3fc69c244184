"""``fastgen fit|validate|test|predict``: LightningCLI over any LightningDataModule, the package's by short name."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, NoReturn


import lightning
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

import fastgen_dm.datamodules  # noqa: F401  (registers the DataModules' short names)
from fastgen_dm.storage import redact_storage_options

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "fastgen_dm.models.EDMDenoiser"


class RedactingSaveConfigCallback(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` writer, with every ``storage_options`` credential redacted.

    The file keeps ``"<redacted>"`` in place of each secret (see
    :func:`~fastgen_dm.storage.redact_storage_options`), so ``fastgen fit --config config.yaml``
    still runs, taking credentials from the environment or from arguments passed again.
    """

    def __init__(self, parser: LightningArgumentParser, config: Any, *args: Any, **kwargs: Any) -> None:
        config = config.clone()
        for key, value in config.items():  # flattened: "data.init_args.storage_options", ...
            if key.rsplit(".", 1)[-1] == "storage_options" and value:
                config[key] = redact_storage_options(value)
        super().__init__(parser, config, *args, **kwargs)


def one_line_parse_error(message: str) -> str:
    """jsonargparse's nested report of a bad value, as the option and the reason on one line.

    Example: 'Parser key "data": ... Parser key "batch_size":\\n Expected a <class 'int'>. Got
    value: many ...' gives "--data.batch_size: Expected a <class 'int'>. Got value: many".
    """
    keys = re.findall(r'Parser key "([^"]+)":', message)
    if not keys:
        return " ".join(message.split())
    lines = [line.strip().removeprefix("- ") for line in message[message.rindex(f'Parser key "{keys[-1]}":') :].splitlines()[1:]]
    lines = [line for line in lines if line]
    # A bad subclass value ("--data.nosuch") says why under the class it tried, not first.
    tried = [k for k, line in enumerate(lines) if line.startswith("Problem with given class_path")]
    detail = lines[tried[0] + 1] if tried and tried[0] + 1 < len(lines) else lines[0] if lines else ""
    return f"--{'.'.join(keys)}: {detail}"


class OneLineErrorParser(LightningArgumentParser):
    """A LightningArgumentParser whose argument errors are one line, like every other error."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        prog = self.prog.replace(" [options]", "")  # a subcommand's prog, as jsonargparse spells it
        self.exit(2, f"{prog}: error: {one_line_parse_error(message)}\n")


class FastGenCLI(LightningCLI):
    """LightningCLI whose ``--data`` takes any LightningDataModule (the package's by short name,
    any other by class path), and whose ``--model`` defaults to the reference EDM denoiser."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}})

    def before_fit(self) -> None:
        # A DataModule reading the data root (a relative default) names it, absolute, once.
        from fastgen_dm.cli._datamodule import data_root_note
        from fastgen_dm.datamodules.image_folder import ImageFolderDataModule, data_root

        if not isinstance(self.datamodule, ImageFolderDataModule):
            return
        if Path(self.datamodule.dataset_path).resolve().is_relative_to(Path(data_root()).resolve()):
            logger.info(data_root_note())

    def instantiate_classes(self) -> None:
        """Build the classes; a value a DataModule or model rejects ends the command with its message."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, FileNotFoundError) as err:
            from fastgen_dm.cli._datamodule import root_cause

            self.parser.exit(2, f"fastgen {self.subcommand}: error: {root_cause(err)}\n")


def run_lightning(args: list[str] | None) -> FastGenCLI:
    """Run LightningCLI on ``args`` (None: the process's command line)."""
    import fastgen_dm.models  # noqa: F401  (registers the models' short names)

    return FastGenCLI(
        model_class=lightning.LightningModule,
        datamodule_class=lightning.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RedactingSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_class=OneLineErrorParser,
        parser_kwargs={"prog": "fastgen"},
        args=args,
    )


def lightning_main(args: list[str] | None) -> int:
    run_lightning(args)
    return 0
