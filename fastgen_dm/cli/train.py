"""``fastgen fit|validate|test|predict``: LightningCLI over every DataModule of the package."""

from __future__ import annotations

from typing import Any

import lightning
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from fastgen_dm.datamodules import PlannedDataModule
from fastgen_dm.storage import redact_storage_options

LIGHTNING_SUBCOMMANDS = {
    "fit": "Train a model on a DataModule (LightningCLI).",
    "validate": "Run the validation loop once (LightningCLI).",
    "test": "Run the test loop once (LightningCLI).",
    "predict": "Run the predict loop once (LightningCLI).",
}

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


class FastGenCLI(LightningCLI):
    """LightningCLI whose ``--data`` takes any fastgen-dm DataModule by short name, and whose
    ``--model`` defaults to the reference EDM denoiser."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}})

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
        datamodule_class=PlannedDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RedactingSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "fastgen"},
        args=args,
    )


def lightning_main(args: list[str] | None) -> int:
    run_lightning(args)
    return 0
