"""`pacs-node --help` reads cleanly: flags carry no `<bool>` type label; commands that only
read or write the index answer without loading the models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
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


QUICK_COMMANDS = [["--help"], ["token", "list"], ["studies", "--limit", "1"],
                  ["batch", "list"], ["batch", "pause", "1"], ["batch", "export", "1"]]


def test_commands_on_the_index_answer_without_loading_the_models(tmp_path: Path) -> None:
    """Only commands that run models (serve, worker, train, evaluate, a batch with a
    checkpoint) import torch: it cost every other command, an operator's `token list` or
    `batch show` included, 1.5 s and more before it said anything."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"storage": {"root": str(tmp_path / "store"),
                                                  "database_url": "sqlite:///"
                                                  f"{tmp_path / 'index.db'}"}}))
    script = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from pacs_node.cli import app\n"
        "runs = [CliRunner().invoke(app, [*a, *(['--config', sys.argv[1]] if a != ['--help'] "
        "else [])]) for a in json.loads(sys.argv[2])]\n"
        "print(json.dumps({'codes': [r.exit_code for r in runs], "
        "'torch': 'torch' in sys.modules, 'output': [r.output[-300:] for r in runs]}))\n")
    done = subprocess.run([sys.executable, "-c", script, str(config),
                           json.dumps(QUICK_COMMANDS)], capture_output=True, text=True,
                          timeout=120, check=True)
    report = json.loads(done.stdout.splitlines()[-1])
    # batch pause/export of a batch that does not exist: the user's error (2), not a crash.
    assert report["codes"] == [0, 0, 0, 0, 2, 2], report["output"]
    assert "batch 1" in report["output"][4]
    assert report["torch"] is False
