"""What one region job does: its query batches cover every query and never leave one alone (so the
batched product is bit-identical to one product over all of them)."""
from __future__ import annotations

from fapm_lib.scale.regionjobs import query_batches


def test_query_batches_never_leave_a_single_query() -> None:
    for n in range(1, 40):
        for size in (1, 2, 3, 7):
            parts = query_batches(n, size)
            assert [i for p in parts for i in range(p.start, p.stop)] == list(range(n))
            assert n == 1 or min(p.stop - p.start for p in parts) >= 2
