"""``python -m initdiag`` runs the CLI."""

import sys

from .cli import run

sys.exit(run())
