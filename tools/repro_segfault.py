"""Minimal reproducer of the single-process test-suite segfault: OpenVINO's CPU plugin leaves the
main thread's alternate signal stack pointing at unmapped memory.

Every ``ov.Core`` that uses the CPU device gets its own CPU plugin. On Linux the plugin's
constructor mmaps an alternate signal stack and installs it (``sigaltstack``) on the calling
thread, remembering the previous one; the destructor restores the previous one only if its own is
still current, and unmaps its own either way (``SigAltStackSetup`` in OpenVINO's
src/plugins/intel_cpu/src/plugin.cpp). Two plugins released in the order they were made (not
LIFO) leave the thread's alternate stack unmapped. The next signal whose handler has SA_ONSTACK
(CPython installs every ``signal.signal`` handler so; torch's DataLoader installs one for SIGCHLD,
faulthandler/pytest one for SIGSEGV) cannot be delivered: the kernel kills the process with
SIGSEGV (si_code SI_KERNEL) and faulthandler cannot print anything. If the freed range has been
mapped again by then, the kernel instead writes the signal frame into whatever lives there.

    python tools/repro_segfault.py           # Segmentation fault (exit 139), no traceback
    python tools/repro_segfault.py --shared  # one Core for the process (the fix): prints "survived"
"""
import signal
import subprocess
import sys

import openvino as ov

signal.signal(signal.SIGCHLD, lambda *_: None)  # any Python handler (torch's DataLoader installs this one)
if "--shared" in sys.argv:
    a = b = ov.Core()  # the fix: one Core, so one CPU plugin that lives until exit
else:
    a, b = ov.Core(), ov.Core()
a.get_property("CPU", "FULL_DEVICE_NAME")  # CPU plugin A: sigaltstack(A), remembers the previous one
b.get_property("CPU", "FULL_DEVICE_NAME")  # CPU plugin B: sigaltstack(B), remembers A
del a  # A is not the current stack: munmap(A) only
del b  # B is current: "restores" A, which is unmapped, then munmap(B)
signal.raise_signal(signal.SIGCHLD)  # what a child process's exit sends -> SIGSEGV here
subprocess.run(["true"])  # the same through a real child (unless the freed range was mapped again meanwhile)
print("survived")
