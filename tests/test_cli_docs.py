"""Every CLI command has help text and is documented in README.md or docs/."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cloud_sync.cli import build_parser as cloud_parser
from edge_runtime.cli import build_parser as edge_parser

ROOT = Path(__file__).resolve().parents[1]


def _commands(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, str | None]]:
    """(full command name, help text) for every leaf and group command under ``parser``."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                full = f"{prefix} {name}"
                found.append((full, helps.get(name)))
                found.extend(_commands(sub, full))
    return found


def _all_commands() -> list[tuple[str, str | None]]:
    return _commands(edge_parser(), "edge-runtime") + _commands(cloud_parser(), "cloud-sync")


def _docs_text() -> str:
    parts = [(ROOT / "README.md").read_text()]
    parts += [p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(parts)


def test_the_command_tree_is_not_empty() -> None:
    assert len(_all_commands()) > 20


@pytest.mark.parametrize(("command", "help_text"), _all_commands())
def test_every_command_has_help_and_docs(command: str, help_text: str | None) -> None:
    assert help_text and help_text.strip(), f"{command} has no help text"
    assert f"`{command}" in _docs_text(), f"{command} is not documented in README.md or docs/"


def test_top_level_help_runs(capsys: pytest.CaptureFixture[str]) -> None:
    for parser in (edge_parser(), cloud_parser()):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["--help"])
        assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out
