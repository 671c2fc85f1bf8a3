"""PyInstaller's entry point: the ``sorat`` command, as ``pip install`` makes it."""

from __future__ import annotations

import sys

from sorat_daemon.cli import main

if __name__ == "__main__":
    sys.exit(main())
