"""The CLI as a person meets it before any stack runs: a wrong command line is
one line naming the argument, the valid choices and where help is; a reader
that goes away (`| head`) ends it quietly; logs never reach the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXIT_USAGE = 2
"""The command line itself is wrong (as argparse and most tools say)."""
EXIT_BROKEN_PIPE = 128 + 13
"""What a shell reports for a process ended by SIGPIPE."""


def _environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("TOKENHUB_")}


def _tokenhub(cwd: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokenhub.cli.main", *arguments], cwd=cwd, env=_environment(),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("arguments", "line"), [
    (["balance", "--by", "nope"],
     "tokenhub balance: --by nope is not one of: event-time, posting-time (see `tokenhub balance --help`)"),
    (["pricing", "parked", "--limit", "some"],
     "tokenhub pricing parked: --limit some is not a whole number (see `tokenhub pricing parked --help`)"),
    (["invoice"], "tokenhub invoice: say what to do: one of list, show, close (see `tokenhub invoice --help`)"),
    (["invoice", "list", "--colour"],
     "tokenhub invoice list: --colour is not an argument of this command (see `tokenhub invoice list --help`)"),
    (["registry"], "tokenhub registry: missing FILE, --reason (see `tokenhub registry --help`)"),
])
def test_a_wrong_command_line_is_one_line_naming_the_argument(arguments: list[str], line: str, tmp_path: Path) -> None:
    result = _tokenhub(tmp_path, *arguments)
    assert (result.returncode, result.stdout, result.stderr) == (EXIT_USAGE, "", line + "\n")


def test_an_unknown_command_lists_the_commands(tmp_path: Path) -> None:
    result = _tokenhub(tmp_path, "blance")
    assert result.returncode == EXIT_USAGE
    error = result.stderr
    assert error.startswith("tokenhub: blance is not a command here; one of up, ")
    assert {"balance", "emit", "invoice", "verify"} <= set(error.split("; one of ")[1].split(" (see")[0].split(", "))
    assert error.endswith(" (see `tokenhub --help`)\n") and len(error.splitlines()) == 1


def test_without_a_stack_a_command_says_how_to_start_one_and_logs_nothing_here(tmp_path: Path) -> None:
    result = _tokenhub(tmp_path, "balance")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("tokenhub balance: no broker or database configured: start the local stack with "
                                    "`tokenhub up`")
    assert len(result.stderr.splitlines()) == 1


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    prices = Path(__file__).resolve().parents[1] / "fixtures" / "litellm_prices.json"
    process = subprocess.Popen([sys.executable, "-m", "tokenhub.cli.main", "pricebook", "import-litellm", str(prices),
                                "--rate", "7.2", "--source-currency", "USD"],
                               cwd=tmp_path, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before the command has written a byte, as `| head -0` would
    error = process.stderr.read().decode()
    assert process.wait(timeout=60) == EXIT_BROKEN_PIPE
    assert "Broken pipe" not in error and "Traceback" not in error and "Exception ignored" not in error
