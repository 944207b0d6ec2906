"""Fixtures that write tiny image datasets in the MVTec AD layout on the fly (no binaries in git)."""
from __future__ import annotations

import ctypes
import mmap
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import build_mvtec_tree, save_image, save_mask


@pytest.fixture
def make_mvtec(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_mvtec(root=None, **kwargs of build_mvtec_tree)``; root defaults to tmp_path/mvtec."""

    def make(root: Path | None = None, **kwargs) -> Path:
        return build_mvtec_tree(root or tmp_path / "mvtec", **kwargs)

    return make


@pytest.fixture
def tiny_mvtec(make_mvtec: Callable[..., Path]) -> Path:
    """Root of category 'widget': 3 train/good, test/good 2, test/crack 2 with masks, 48x40 RGB PNGs."""
    return make_mvtec()


@pytest.fixture
def image_writer() -> Callable[..., Path]:
    """``save_image(path, size=(48, 40), mode='RGB', seed=0)`` for tests."""
    return save_image


@pytest.fixture
def mask_writer() -> Callable[..., Path]:
    """``save_mask(path, size, box=None, mode='L')`` for tests."""
    return save_mask


# ---- the main thread's alternate signal stack -----------------------------------------------------
# OpenVINO's CPU plugin (one per ov.Core) installs an alternate signal stack on the thread that makes
# it and can leave that thread's stack unmapped when plugins are released out of order (see
# fapm_lib.run_fapm.openvino_core). The next signal (SIGCHLD when a subprocess ends) then kills pytest
# with SIGSEGV and no traceback, many tests later. After every test: if the stack is gone, install a
# fresh one and fail the test that left it.
class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


SS_DISABLE = 2
_SPARE_STACKS: list = []  # alternate stacks installed here; never freed


def _sigaltstack(new: _StackT | None, old: _StackT | None) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.sigaltstack(ctypes.byref(new) if new else None, ctypes.byref(old) if old else None)


def alt_stack_is_valid() -> bool:
    """True when this thread has no alternate signal stack, or one whose memory is mapped (Linux)."""
    if not sys.platform.startswith("linux"):
        return True
    current = _StackT()
    if _sigaltstack(None, current) != 0 or current.ss_flags & SS_DISABLE or not current.ss_sp:
        return True
    low, high = current.ss_sp, current.ss_sp + current.ss_size - 1
    with open("/proc/self/maps") as fh:
        ranges = [tuple(int(x, 16) for x in line.split(None, 1)[0].split("-")) for line in fh]
    return all(any(start <= address < end for start, end in ranges) for address in (low, high))


def install_fresh_alt_stack(size: int = 64 * 1024) -> None:
    """Give this thread a new alternate signal stack that is never freed."""
    buffer = mmap.mmap(-1, size)
    base = ctypes.c_char.from_buffer(buffer)
    _SPARE_STACKS.append((buffer, base))
    _sigaltstack(_StackT(ctypes.addressof(base), 0, size), None)


@pytest.fixture(autouse=True)
def _alt_signal_stack_stays_mapped():
    yield
    if not alt_stack_is_valid():
        install_fresh_alt_stack()
        pytest.fail("this test left the main thread's alternate signal stack unmapped (OpenVINO CPU plugins "
                    "released out of order?); a fresh one is installed", pytrace=False)
