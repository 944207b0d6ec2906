"""``fapm export``: see :func:`fapm_lib.deploy.export.run_export_cli`."""
from __future__ import annotations

import argparse

from ..deploy.export import run_export_cli


def run_export(args: argparse.Namespace) -> int:
    return run_export_cli(args)
