"""The main thread's alternate signal stack (Linux): whether it is still mapped, and a fresh one.

OpenVINO's CPU plugin (one per ov.Core) installs an alternate signal stack on the thread that makes
it and can leave that thread's stack unmapped when plugins are released out of order (see
:func:`fapm_lib.deploy.run_fapm.openvino_core`). The next signal (SIGCHLD when a subprocess ends)
then kills pytest with SIGSEGV and no traceback, many tests later. ``tests/conftest.py`` checks the
stack after every test; ``tests/deploy/test_openvino_signal_stack.py`` checks the one-Core fix."""
from __future__ import annotations

import ctypes
import mmap
import sys


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
