"""The ``fapm`` command itself: every subcommand dispatches to a workflow function, and Ctrl-C in a
command is one line and exit code 130."""
from __future__ import annotations

import argparse

from fapm_lib.cli import main as cli


def test_every_subcommand_runs_a_workflow_function() -> None:
    """The CLI only parses and dispatches: each subcommand has a handler in fapm_lib.workflows."""
    from fapm_lib.cli.main import COMMANDS, build_parser, handler

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMANDS)
    for command in COMMANDS:
        assert callable(handler(command)) and handler(command).__module__.startswith("fapm_lib.workflows.")


def test_keyboard_interrupt_in_a_command_is_one_line_and_exit_130(capsys, monkeypatch) -> None:
    def interrupted(args) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr("fapm_lib.workflows.fit.run_fit", interrupted)
    code = cli.main(["fit", "--output", "unused", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err
    assert err.strip() == "fapm fit: interrupted; files already written are complete"
