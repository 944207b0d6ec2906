"""``python -m fapm_lib`` runs the ``fapm`` command."""
import sys

from .cli.main import main

sys.exit(main())
