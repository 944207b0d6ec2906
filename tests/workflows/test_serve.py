"""``fapm serve`` on the command line: started in a subprocess on a free port (``--port 0``), it
says where it listens, answers, and stops on SIGTERM; refused with one line without the serve
extra, on another interface without a token, and for settings out of range."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from fapm_lib.cli import main as cli
from tests.helpers import REPO, one_line
from tests.service_support import fit_model, sample_images


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root, _, model_file = fit_model(tmp_path_factory.mktemp("serve"))
    return root, model_file


def test_serve_in_a_subprocess_answers_and_stops_on_sigterm(fitted) -> None:
    root, model = fitted
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "fapm_lib", "serve", "--model", str(model), "--port", "0",
                                "--threads", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("fapm serve: model ") and " on http://127.0.0.1:" in line, process.stderr.read()
        url = line.split(" on ", 1)[1].split("/ (", 1)[0]
        with urllib.request.urlopen(f"{url}/health", timeout=30) as answer:
            assert json.load(answer)["status"] == "ok"
        request = urllib.request.Request(f"{url}/predict?heatmap=1", data=sample_images(root)[0].read_bytes(),
                                         headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            body = json.load(answer)
        assert body["decision"] == "NG" and body["heatmap"].startswith("data:image/png;base64,")
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has stopped
    finally:
        process.kill()
        process.wait(30)
    assert "Traceback" not in process.stderr.read()


def test_serve_without_the_extra_names_it(fitted, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ImportError
    assert cli.main(["serve", "--model", str(fitted[1])]) == 2
    assert one_line(capsys.readouterr().err) == ("fapm serve: error: fapm serve needs the serve extra (uvicorn is not "
                                                 "installed): pip install 'fapm-lib[serve]'")


@pytest.mark.parametrize("flags, message", [
    (["--host", "0.0.0.0"], "--host 0.0.0.0 is reachable from other machines: set a token (--token or "
                            "$FAPM_SERVE_TOKEN) or pass --no-token to serve without one"),
    (["--token", "t", "--no-token"], "--no-token and a token (--token or $FAPM_SERVE_TOKEN) contradict each other"),
    (["--max-batch", "0"], "--max-batch 0: out of range (see fapm serve --help)"),
    (["--batch-window-ms", "-1"], "--batch-window-ms -1.0: out of range (see fapm serve --help)"),
    (["--port", "99999"], "--port 99999: must be in 0..65535 (0: a free port)"),
])
def test_settings_out_of_range_are_refused(fitted, capsys, monkeypatch, flags: list[str], message: str) -> None:
    monkeypatch.delenv("FAPM_SERVE_TOKEN", raising=False)
    assert cli.main(["serve", "--model", str(fitted[1]), *flags]) == 2
    assert one_line(capsys.readouterr().err).startswith(f"fapm serve: error: {message}")


def test_a_damaged_model_is_refused_before_serving(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a model")
    assert cli.main(["serve", "--model", str(bad)]) == 2
    assert one_line(capsys.readouterr().err).startswith(f"fapm serve: error: {bad}: not a readable model file")
