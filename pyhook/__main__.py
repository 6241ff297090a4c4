"""``python -m pyhook`` runs the ``pg-oauth`` command line."""

import sys

from pyhook.cli import main

sys.exit(main())
