"""CLI layer: the ``fastgen`` command (LightningCLI subcommands plus the data tools)."""
