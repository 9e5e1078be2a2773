"""``python -m dva_model <command>``: one module per command, dispatched by ``dva_model.cli.main``."""
