"""Where and when a measurement was made: the machine (CPU model, cores, RAM, torch), the git
commit of the code (and whether it had uncommitted changes) and the date, as a dict and as the
one line that the benchmark tables carry."""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: The folder of the code being measured (the ``fapm_lib`` package): its git checkout is the one stamped.
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (or the platform's processor name)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gb() -> float | None:
    """Physical memory in GB (10^9 bytes); None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (AttributeError, ValueError, OSError):
        return None


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, operating system and the versions of Python, torch and timm."""
    import timm
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "ram_gb": ram_gb(),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "torch": torch.__version__, "timm": timm.__version__}


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(folder: Path = PACKAGE_DIR) -> dict[str, Any]:
    """``{"commit": short hash or None, "dirty": bool}`` of the checkout holding ``folder``. Dirty:
    a tracked file changed, or an untracked, not ignored file inside ``folder`` (new code)."""
    commit = _git(["rev-parse", "--short=10", "HEAD"], folder)
    if commit is None:
        return {"commit": None, "dirty": False}
    tracked = _git(["status", "--porcelain", "--untracked-files=no"], folder) or ""
    untracked = _git(["status", "--porcelain", "--untracked-files=all", "--", "."], folder) or ""
    return {"commit": commit.strip(), "dirty": bool(tracked.strip()) or "??" in untracked}


def stamp() -> dict[str, Any]:
    """Now: the date (UTC), the git state, the machine and the 1-minute load average."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **git_state(),
            "machine": machine(), "load_average": load}


def commit_text(state: dict[str, Any]) -> str:
    """``commit 1a2b3c4d5e`` (``+ uncommitted changes`` when dirty); ``commit unknown`` outside git."""
    if not state.get("commit"):
        return "commit unknown (not a git checkout)"
    return f"commit {state['commit']}" + (" + uncommitted changes" if state.get("dirty") else "")


def machine_text(info: dict[str, Any]) -> str:
    """``AMD EPYC 7R13, 2 cores, 24.6 GB RAM, Linux 6.1; torch 2.4.0, timm 1.0.9, Python 3.11.7``."""
    ram = f", {info['ram_gb']:.1f} GB RAM" if info.get("ram_gb") else ""
    return (f"{info['cpu']}, {info['cores']} cores{ram}, {info['os']}; torch {info['torch']}, "
            f"timm {info['timm']}, Python {info['python']}")


def stamp_text(state: dict[str, Any]) -> str:
    """The provenance sentence of a table: date, commit, machine, load average."""
    load = "" if state.get("load_average") is None else f"; load average {state['load_average']:.1f} at the start"
    return f"{state['date']}, {commit_text(state)}; {machine_text(state['machine'])}{load}"
