"""``fapm watch``: every file dropped into the folder scored exactly once, also across a
``kill -9`` mid-stream and a restart (real subprocesses); the journal's recovery of a cut last
line; a file recorded but not yet moved is moved, not scored again; bad files get one line."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from fapm_lib.cli import main as cli
from fapm_lib.service.journal import Journal
from tests.helpers import REPO
from tests.service_support import fit_model, sample_images


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root, _, model_file = fit_model(tmp_path_factory.mktemp("watch"))
    return root, model_file


def drop(images: list[Path], inbox: Path, count: int, start: int = 0) -> list[str]:
    """Copy ``count`` images into ``inbox`` as a camera would (written under a hidden name, then
    renamed), every third one in a sub-folder; their relative names."""
    names = []
    for i in range(start, start + count):
        name = f"line{i % 3}/part_{i:03d}.png" if i % 3 == 0 else f"part_{i:03d}.png"
        target = inbox / name
        target.parent.mkdir(parents=True, exist_ok=True)
        hidden = target.with_name("." + target.name)
        shutil.copyfile(images[i % len(images)], hidden)
        os.replace(hidden, target)
        names.append(name)
    return names


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def watch_command(model: Path, inbox: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fapm_lib", "watch", "--model", str(model), str(inbox), "--output", str(out),
            "--settle", "0", "--interval", "0.05", "--threads", "1", *extra]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def test_kill_9_mid_stream_then_restart_scores_every_file_once(fitted, tmp_path: Path) -> None:
    """With --move-done (the journal alone marks a file done without it: the next tests)."""
    root, model, move = *fitted, True
    images, inbox, out, done = sample_images(root), tmp_path / "in", tmp_path / "out", tmp_path / "done"
    inbox.mkdir()
    extra = ("--move-done", str(done)) if move else ()
    names = drop(images, inbox, 24)
    process = subprocess.Popen(watch_command(model, inbox, out, *extra), env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not (out / "results.jsonl").exists() or len((out / "results.jsonl").read_bytes().splitlines()) < 3:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the watcher recorded nothing"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)  # mid-stream: 24 files, a few recorded
    finally:
        process.kill()
        process.wait(30)
    before = records(out)
    assert 3 <= len(before) < 24, len(before)
    names += drop(images, inbox, 6, start=24)  # the camera goes on while the watcher is down
    again = subprocess.run(watch_command(model, inbox, out, "--once", *extra), env=environment(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    after = records(out)
    assert after[: len(before)] == before  # what was written stays as it was
    counts = Counter(r["file"] for r in after)
    assert sorted(counts) == sorted(names) and set(counts.values()) == {1}
    for record in after:
        assert record["decision"] in ("OK", "NG")
        assert (record["overlay"] is not None) == (record["decision"] == "NG")
        if record["overlay"]:
            assert (out / record["overlay"]).is_file()
    if move:
        assert sorted(p.relative_to(done).as_posix() for p in done.rglob("*.png")) == sorted(names)
        assert not list(inbox.rglob("*.png"))
    assert cli.main(watch_command(model, inbox, out, "--once", *extra)[3:]) == 0
    assert records(out) == after


def test_a_cut_last_line_is_dropped_and_its_file_scored_once(fitted, tmp_path: Path, capsys) -> None:
    root, model = fitted
    inbox, out = tmp_path / "in", tmp_path / "out"
    names = drop(sample_images(root), inbox, 3)
    assert cli.main(["watch", "--model", str(model), str(inbox), "--output", str(out), "--once", "--settle",
                     "0"]) == 0
    journal = out / "results.jsonl"
    whole = journal.read_bytes()
    journal.write_bytes(whole[: whole.rfind(b"\n", 0, len(whole) - 1) + 1] + b'{"file": "part_00')  # a crash mid-line
    capsys.readouterr()
    assert cli.main(["watch", "--model", str(model), str(inbox), "--output", str(out), "--once", "--settle",
                     "0"]) == 0
    printed = capsys.readouterr().out
    assert "removed an incomplete last line (17 bytes)" in printed
    assert Counter(r["file"] for r in records(out)) == Counter(names)
    assert journal.read_bytes().endswith(b"\n")


def test_recorded_but_not_moved_is_moved_not_scored(fitted, tmp_path: Path) -> None:
    root, model = fitted
    inbox, out, done = tmp_path / "in", tmp_path / "out", tmp_path / "done"
    drop(sample_images(root), inbox, 2)
    assert cli.main(["watch", "--model", str(model), str(inbox), "--output", str(out), "--once", "--settle",
                     "0"]) == 0  # recorded, left in place (as if killed before the move)
    assert len(records(out)) == 2
    assert cli.main(["watch", "--model", str(model), str(inbox), "--output", str(out), "--once", "--settle",
                     "0", "--move-done", str(done)]) == 0
    assert len(records(out)) == 2 and len(list(done.rglob("*.png"))) == 2


def test_bad_files_get_one_line_and_journal_lines_are_checked(fitted, tmp_path: Path, capsys) -> None:
    root, model = fitted
    inbox, out = tmp_path / "in", tmp_path / "out"
    drop(sample_images(root), inbox, 1)
    (inbox / "broken.png").write_bytes(b"not a png")
    (inbox / "notes.txt").write_text("ignored")
    (inbox / "partial.png.part").write_bytes(b"still being written")
    assert cli.main(["watch", "--model", str(model), str(inbox), "--output", str(out), "--once", "--settle",
                     "0"]) == 0
    by_file = {r["file"]: r for r in records(out)}
    assert set(by_file) == {"broken.png", "line0/part_000.png"}
    assert by_file["broken.png"]["decision"] == "error"
    assert by_file["broken.png"]["error"].endswith("cannot read image (not an image, or an unsupported format)")
    (out / "results.jsonl").write_text("not json\n")
    capsys.readouterr()
    assert cli.main(["watch", "--model", str(model), str(inbox), "--output", str(out), "--once"]) == 2
    assert capsys.readouterr().err.strip().endswith("results.jsonl:1: not a results line of fapm watch; move the "
                                                    "file away or give another --output")
    assert cli.main(["watch", "--model", str(model), str(inbox), "--output", str(inbox / "out")]) == 2
    assert Journal(tmp_path / "fresh").records == 0
