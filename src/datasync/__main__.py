"""Run the ``datasync`` command: ``python -m datasync ARGS``."""

import sys

from datasync.cli import main

sys.exit(main())
