"""The `neuralign` entry point: one command, sub-commands from each package, clear errors."""
import subprocess
import sys
from pathlib import Path

import pytest

from flows import cli


def test_help_lists_a_command_per_installed_module(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage: neuralign" in capsys.readouterr().out


def test_unknown_command_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("neuralign")
    assert script.exists(), f"no console script beside {sys.executable}: is the project installed?"
    completed = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "neuralign" in completed.stdout
