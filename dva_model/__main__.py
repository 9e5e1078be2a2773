"""``python -m dva_model <command>``: the library's command-line interface."""

import sys

try:
    from dva_model.cli.main import main

    status = main()
except KeyboardInterrupt:  # Ctrl-C while Python is still importing or entering main: no traceback either
    if "--debug" in sys.argv:
        raise
    sys.stderr.write("cancelled\n")
    status = 130  # EXIT_INTERRUPTED, which may not be imported yet
sys.exit(status)
