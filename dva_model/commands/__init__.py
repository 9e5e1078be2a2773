"""One module per CLI command; see ``dva_model.cli``."""
