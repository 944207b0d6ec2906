"""Fixtures of the service tests: the tiny models, built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.service_support import fit_models


@pytest.fixture(scope="session")
def service_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data root, model v1, model v2: v1 with two normal images added)."""
    return fit_models(tmp_path_factory.mktemp("service"))
