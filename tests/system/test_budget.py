"""Memory budgets: sizes like ``4GB`` and ``1.5GiB`` parsed, anything else refused naming the setting."""
from __future__ import annotations

import pytest

from fapm_lib.errors import ConfigError
from fapm_lib.system.budget import parse_size


def test_parse_size() -> None:
    assert parse_size("4GB") == 4 * 10**9 and parse_size("512MB") == 512 * 10**6
    assert parse_size("1.5GiB") == 3 * 2**29 and parse_size(1000) == 1000 and parse_size("2 gb") == 2 * 10**9
    for bad in ("4XB", "-1GB", "GB", "0MB", True):
        with pytest.raises(ConfigError, match="max_memory"):
            parse_size(bad)
