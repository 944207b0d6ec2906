"""Atomic writes: a reader sees the old complete file or the new complete file, never a
partial one, also when the writing process is interrupted (SIGINT) or killed (SIGKILL)."""
from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from fapm_lib import FAPM, FAPMConfig
from fapm_lib.detectors.model_file import MODEL_FILE
from fapm_lib.system.atomic import atomic_path, write_text_atomic, write_with_atomic
from tests.helpers import build_mvtec_tree


def leftovers(folder: Path) -> list[str]:
    """Temporary files an atomic write may leave beside its target."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---- in-process --------------------------------------------------------------------------------
def test_success_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing visible before the block ends
    assert target.read_text() == "new" and leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt, SystemExit])
def test_exception_keeps_the_old_file(tmp_path: Path, error: type[BaseException]) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old complete content")
    with pytest.raises(error):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new but partial")
            raise error()
    assert target.read_bytes() == b"old complete content"
    assert leftovers(tmp_path) == []


def test_exception_before_the_first_write_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "new.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target):
            raise RuntimeError("writer failed")
    assert not target.exists() and leftovers(target.parent) == []


def test_writer_that_deletes_its_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(FileNotFoundError):
        write_with_atomic(target, lambda tmp: tmp.unlink())
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_helpers_write_and_fail_atomically(tmp_path: Path) -> None:
    assert write_text_atomic(tmp_path / "a.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"

    def failing_writer(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_with_atomic(tmp_path / "a.txt", failing_writer)
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_permissions_are_those_of_a_plain_write(tmp_path: Path) -> None:
    existing = tmp_path / "existing.txt"
    existing.write_text("old")
    existing.chmod(0o640)
    write_text_atomic(existing, "new")
    assert stat.S_IMODE(existing.stat().st_mode) == 0o640
    plain, atomic = tmp_path / "plain.txt", tmp_path / "atomic.txt"
    plain.write_text("x")
    write_text_atomic(atomic, "x")
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


# ---- interrupted writer processes --------------------------------------------------------------
def default_sigint() -> None:
    """In the child: SIGINT raises KeyboardInterrupt even when this test runs in a background job
    (a non-interactive shell starts background jobs with SIGINT ignored, and children inherit it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


CHILD = r'''
"""Writes versions of a model file or of a JSON file forever; prints when a window opens."""
import itertools, json, sys, time
from pathlib import Path
import torch
from fapm_lib import FAPM, FAPMConfig
from fapm_lib.detectors import model_file as persistence
from fapm_lib.system.atomic import write_with_atomic
from fapm_lib.method.backbone import BackboneInfo, FeatureExtractor
from fapm_lib.method.memory import BankGroup, LayerMemory

mode, target = sys.argv[1], Path(sys.argv[2])

def model_writer():
    """Models of ~40 MB: bank values = base + version; fit_stats["version"] names the version."""
    info = BackboneInfo("tf_efficientnet_lite0", (40, 112), (8, 16), (0.5,) * 3, (0.5,) * 3, True)
    model = FAPM(FAPMConfig(resize=64, crop_size=64, grid=2, k=1),
                 extractor=FeatureExtractor(torch.nn.Identity(), info))
    model.feature_sizes = [(8, 8), (4, 4)]
    base = [torch.randn(4, 16000, c, generator=torch.Generator().manual_seed(0)) for c in (40, 112)]
    if mode == "model-after-tmp":  # hold the window between the finished temporary file and the rename
        real = persistence.save_file
        def save_then_wait(tensors, path, metadata):
            real(tensors, path, metadata=metadata)
            print("tmp-written", flush=True)
            time.sleep(2.0)
        persistence.save_file = save_then_wait
    def write(version):
        model.set_memories([LayerMemory([BankGroup(torch.arange(4), b + version)], torch.zeros(4),
                                        torch.zeros(4, dtype=torch.bool)) for b in base])
        model.fit_stats = {"version": version}
        model.save(target)
    return write

def json_writer():
    """JSON of ~20 MB written in 1 MB pieces over about a second: the kill lands mid-write."""
    def write(version):
        def writer(tmp):
            with open(tmp, "w") as fh:
                fh.write('{"version": %d, "values": [' % version)
                for piece in range(20):
                    if piece == 2:
                        print("mid-write", flush=True)
                    fh.write(",".join([str(version)] * 500_000) + ("," if piece < 19 else ""))
                    fh.flush()
                    time.sleep(0.05)
                fh.write("]}")
        write_with_atomic(target, writer)
    return write

write = json_writer() if mode == "json-mid-write" else model_writer()
for version in itertools.count():
    print(f"start {version}", flush=True)
    write(version)
    print(f"done {version}", flush=True)
'''


def read_version(mode: str, target: Path) -> int:
    """Version held by a complete target; fails on a partial or damaged one."""
    if mode == "json-mid-write":
        data = json.loads(target.read_text())
        assert len(data["values"]) == 10_000_000 and set(data["values"]) == {data["version"]}
        return data["version"]
    model = FAPM.load(target)  # checks the sha256 of every tensor
    version = int(model.fit_stats["version"])
    first = torch.randn(4, 16000, 40, generator=torch.Generator().manual_seed(0))[0, 0, 0]
    assert float(model.memories[0].groups[0].bank[0, 0, 0]) == pytest.approx(float(first) + version, abs=1e-4)
    return version


def interrupt_child(tmp_path: Path, mode: str, sig: signal.Signals, trigger: str, delay: float) -> tuple:
    """Run the writer; once version 0 is done, wait for ``trigger`` of version >= 1, then sleep
    ``delay`` and send ``sig``. Returns (target, exit code, last started version, last done version)."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    target = tmp_path / ("model.safetensors" if mode.startswith("model") else "metrics.json")
    proc = subprocess.Popen([sys.executable, str(script), mode, str(target)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    started = done = -1
    try:
        for line in proc.stdout:
            word, _, number = line.strip().partition(" ")
            if word == "start":
                started = int(number)
            elif word == "done":
                done = int(number)
            if word == trigger and done >= 0:
                time.sleep(delay)
                proc.send_signal(sig)
                break
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
    for line in proc.stdout.read().splitlines():  # lines printed while we slept and before the exit
        word, _, number = line.partition(" ")
        if word == "start":
            started = int(number)
        elif word == "done":
            done = int(number)
    return target, code, started, done, proc.stderr.read()


def died_of(sig: signal.Signals, code: int, err: str) -> bool:
    """The child ended by ``sig``: killed by it, or (SIGINT) through an uncaught KeyboardInterrupt.
    CPython re-raises SIGINT after an uncaught KeyboardInterrupt (code -2), unless an exit hook
    runs more code first: torch._dynamo's (imported by torchvision) does when ``tabulate`` is
    installed (nncf, the export extra, brings it), and the exit code is then 1."""
    if code == -sig:
        return True
    return sig == signal.SIGINT and code == 1 and err.rstrip().endswith("KeyboardInterrupt")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize(("mode", "trigger", "delay"), [
    ("json-mid-write", "mid-write", 0.1),      # the temporary file is half written
    ("model-after-tmp", "tmp-written", 0.2),   # the temporary file is complete, not yet renamed
    ("model-random", "start", 0.37),           # any moment of a model save
])
def test_interrupted_writer_leaves_a_complete_file(tmp_path: Path, sig, mode: str, trigger: str, delay: float) -> None:
    target, code, started, done, err = interrupt_child(tmp_path, mode, sig, trigger, delay)
    assert died_of(sig, code, err), (code, err[-500:])
    assert read_version(mode, target) in {done, started}
    assert done >= 0
    if mode != "model-random":  # killed inside the window: the old version is still there
        assert read_version(mode, target) == done == started - 1
    stray = leftovers(tmp_path)
    if sig == signal.SIGINT:
        assert stray == []  # KeyboardInterrupt runs the clean-up
    else:  # SIGKILL cannot clean up: at most one hidden temporary file, never the target's name
        assert len(stray) <= 1 and all(name.startswith(f".{target.name}.") for name in stray)
        if mode != "model-random":
            assert len(stray) == 1


@pytest.mark.slow
def test_ctrl_c_during_fit_exits_130_and_keeps_the_old_model(tmp_path: Path) -> None:
    """Real ``fapm fit`` with progress bars on; SIGINT once feature extraction has started."""
    root = build_mvtec_tree(tmp_path / "data", "widget", n_train=64, test_counts={"good": 1}, size=(64, 64))
    config = tmp_path / "c.yaml"
    config.write_text("resize: 224\ncrop_size: 224\nbatch_size: 1\n")  # features alone take seconds
    output = tmp_path / "out"
    old = FAPM(FAPMConfig(resize=64, crop_size=64, grid=2, k=1)).fit(torch.randn(2, 3, 64, 64), progress=False)
    old_bytes = old.save(output / MODEL_FILE).read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "fapm_lib", "fit", "--data-root", str(root), "--category",
                             "widget", "--config", str(config), "--output", str(output)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=default_sigint)
    chunks: list[bytes] = []

    def read_stderr() -> None:
        while chunk := proc.stderr.read1(4096):
            chunks.append(chunk)

    reader = threading.Thread(target=read_stderr)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while b"features" not in b"".join(chunks) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
        reader.join()
    err = b"".join(chunks).decode()
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert code == 130, err
    assert "Traceback" not in err
    assert lines[-1] == "fapm fit: interrupted; files already written are complete"
    assert (output / MODEL_FILE).read_bytes() == old_bytes
    assert leftovers(output) == []
