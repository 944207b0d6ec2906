"""glibc allocator tuning: applied once by the CLI and the notebooks, never against the user's choice."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from fapm_lib.system.allocator import OPT_OUT

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
PROBE = "from fapm_lib.system.allocator import tune_allocator; print(tune_allocator(), tune_allocator())"


def probe(**env: str) -> str:
    ours = (OPT_OUT, "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    clean = {k: v for k, v in os.environ.items() if k not in ours}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_tuning_applies_once_on_glibc() -> None:
    assert probe() == "True True"


def test_opt_out_and_the_users_own_malloc_settings_win() -> None:
    assert probe(**{OPT_OUT: "1"}) == "False False"
    assert probe(MALLOC_TRIM_THRESHOLD_="1000000") == "False False"
    assert probe(MALLOC_MMAP_THRESHOLD_="1000000") == "False False"


def test_the_cli_and_notebooks_apply_it(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import fapm_lib.cli.main as cli
    import fapm_lib.tutorial.notebook as notebook_tools

    calls: list[str] = []
    monkeypatch.setattr(cli, "tune_allocator", lambda: calls.append("cli"))
    monkeypatch.setattr(notebook_tools, "tune_allocator", lambda: calls.append("notebook"))
    (tmp_path / "widget").mkdir()
    notebook_tools.prepare_data(tmp_path, "widget")
    cli.main(["gif", "--model", str(tmp_path / "missing.safetensors"), "--data-root", str(tmp_path),
              "--category", "widget", "--output", str(tmp_path / "x.gif")])
    assert calls == ["notebook", "cli"]  # the gif command failed (no model file) after tuning
