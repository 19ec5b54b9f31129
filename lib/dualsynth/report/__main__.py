"""``python -m dualsynth.report``: see :func:`dualsynth.report.cli.main`."""
import sys

from .cli import main

sys.exit(main())
