"""Output names of the images given on the command line: the extension kept, never a counter, only
the clashing names lengthened."""
from __future__ import annotations

from pathlib import Path

from fapm_lib.data.output_names import output_names
from tests.helpers import save_image


def test_output_names_keep_the_extension_and_never_count(tmp_path: Path) -> None:
    for rel in ("line/part1.png", "line/part1.jpg", "a/good/1.png", "b/good/1.png", "batch/x/2.png"):
        save_image(tmp_path / rel)
    (tmp_path / "batch" / "log.txt").write_text("x")
    named = output_names([tmp_path / "line" / "part1.png", tmp_path / "line" / "part1.jpg",
                          tmp_path / "a" / "good" / "1.png", tmp_path / "b" / "good" / "1.png",
                          tmp_path / "batch", tmp_path / "line" / "part1.png"])
    assert [n.as_posix() for _, n in named.pairs] == ["line/part1.png", "line/part1.jpg", "a/good/1.png",
                                                     "b/good/1.png", "batch/x/2.png"]
    assert named.repeats == [tmp_path / "line" / "part1.png"]
    assert named.skipped == [tmp_path / "batch" / "log.txt"]
    assert named.pairs[0][0] == tmp_path / "line" / "part1.png"  # the path as given


def test_output_names_lengthen_only_the_clashing_names(tmp_path: Path) -> None:
    for rel in ("x/site1/good/1.png", "x/site2/good/1.png", "y/good/2.png"):
        save_image(tmp_path / rel)
    named = output_names([tmp_path / "x" / "site1" / "good" / "1.png", tmp_path / "x" / "site2" / "good" / "1.png",
                          tmp_path / "y" / "good" / "2.png"])
    assert [n.as_posix() for _, n in named.pairs] == ["site1/good/1.png", "site2/good/1.png", "good/2.png"]
