"""``python -m dva_model <command>``: the library's command-line interface."""

import sys

from dva_model.cli.main import main

sys.exit(main())
