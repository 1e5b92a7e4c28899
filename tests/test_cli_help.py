"""`pacs-node --help` reads cleanly: flags carry no `<bool>` type label."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pacs_node.cli import app


@pytest.mark.parametrize("args", [
    ["--help"], ["studies", "--help"], ["serve", "--help"], ["train", "--help"],
    ["evaluate", "--help"],
])
def test_help_has_no_bool_label(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    assert "<bool>" not in result.output


def test_flags_are_listed_bare_and_value_options_with_their_type() -> None:
    output = CliRunner().invoke(app, ["studies", "--help"]).output
    lines = {line.split()[0]: line for line in output.splitlines() if line.strip()[:2] == "--"}
    assert lines["--json"].split()[1] == "Print"  # the help text follows the flag directly
    assert "<int range>" in lines["--limit"]
