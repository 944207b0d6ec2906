"""ruff (pyflakes, pycodestyle, import order, bugbear; settings in pyproject.toml) finds nothing in the
library, the tests and the tools. Skipped with a reason when ruff is not installed, except under CI (``CI=true``):
a failure there."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

#: What the suite lints.
LINTED = ("fapm_lib", "tests", "tools")


def test_ruff_finds_nothing() -> None:
    if importlib.util.find_spec("ruff") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("lint test under CI, but ruff is not installed (pip install ruff)")
        pytest.skip("ruff is not installed (pip install ruff)")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *LINTED],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
