"""One vocabulary across the CLI: every command says what it does and shows
examples that parse, every option has help, the same idea has the same name
everywhere, --json and --format cannot contradict each other, and every
command that changes something asks who and why."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator

import pytest

from tokenhub.cli import args
from tokenhub.cli.errors import UsageError
from tokenhub.cli.main import _parser

# Names of one idea that are not its name: each has one name now.
RETIRED = {"--at": "--as-of", "--month": "--period"}
CHANGE_WORDS = ("add", "set", "publish", "end", "create", "registry", "resubmit", "assign", "billing-cycle")


def commands(parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command a person can run, as (words, parser)."""
    parser = parser or _parser()
    children = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not children:
        yield path, parser
        return
    for child in children:
        for name, subparser in child.choices.items():
            yield from commands(subparser, (*path, name))


COMMANDS = dict(commands())


def test_there_are_commands() -> None:
    assert {("balance",), ("invoice", "show"), ("emit",), ("verify",)} <= set(COMMANDS)


@pytest.mark.parametrize("words", sorted(COMMANDS), ids=" ".join)
def test_every_option_has_help_and_every_command_examples_that_parse(words: tuple[str, ...]) -> None:
    parser = COMMANDS[words]
    silent = [action.option_strings or action.dest for action in parser._actions
              if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()]
    assert not silent, f"tokenhub {' '.join(words)}: no help for {silent}"
    assert parser.epilog and parser.epilog.startswith("examples:\n"), f"tokenhub {' '.join(words)} shows no examples"
    examples = [line.strip() for line in parser.epilog.splitlines()[1:] if line.strip()]
    assert examples
    for example in examples:
        argv = shlex.split(example.split("|")[-1].split(">")[0])
        assert argv[:1 + len(words)] == ["tokenhub", *words], example
        try:
            _parser().parse_args(argv[1:])
        except UsageError as error:
            pytest.fail(f"the example `{example}` does not parse: {error}")


@pytest.mark.parametrize("words", sorted(COMMANDS), ids=" ".join)
def test_one_idea_one_name(words: tuple[str, ...]) -> None:
    options = {option for action in COMMANDS[words]._actions for option in action.option_strings}
    for retired, name in RETIRED.items():
        assert retired not in options, f"tokenhub {' '.join(words)} says {retired}; the CLI says {name}"
    positionals = [action.dest for action in COMMANDS[words]._actions if not action.option_strings]
    assert "bu" not in positionals and "period" not in positionals, f"tokenhub {' '.join(words)}: use --bu and --period"
    if "--format" in options or "--json" in options:
        assert {"--format", "--json"} <= options, f"tokenhub {' '.join(words)} has one of --format and --json"


@pytest.mark.parametrize("words", sorted(words for words in COMMANDS if words[-1] in CHANGE_WORDS), ids=" ".join)
def test_every_change_asks_who_and_why(words: tuple[str, ...]) -> None:
    if words == ("pricebook", "import-litellm"):
        return  # a change only with --publish, which asks for --reason then
    reason = next((action for action in COMMANDS[words]._actions if "--reason" in action.option_strings), None)
    assert reason is not None and reason.required, f"tokenhub {' '.join(words)} must ask --reason"
    # An API key's --owner is the actor of every change made with it, its issuing included.
    who = "--owner" if words[0] == "apikey" else "--actor"
    assert any(who in action.option_strings for action in COMMANDS[words]._actions)


@pytest.mark.parametrize(("argv", "expected"), [
    (["balance"], "text"), (["balance", "--json"], "json"), (["balance", "--format", "json"], "json"),
    (["balance", "--json", "--format", "json"], "json"), (["invoice", "show", "--format", "csv"], "csv"),
])
def test_the_format_asked_for(argv: list[str], expected: str) -> None:
    assert args.output_format(_parser().parse_args(argv)) == expected


def test_json_and_another_format_are_refused_not_ignored() -> None:
    arguments = _parser().parse_args(["invoice", "list", "--json", "--format", "csv"])
    with pytest.raises(UsageError, match="--json asks for JSON and --format asks for csv; give one of them"):
        args.output_format(arguments)
