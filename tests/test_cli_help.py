"""Every option of every `surgeon` subcommand says what it is and, where it has one, its default."""

import argparse

import pytest

from surgeon.cli import parser


def options(p: argparse.ArgumentParser, command="surgeon"):
    """(command, parser, action) of every argument of `p` and of its subcommands."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from options(sub, f"{command} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield command, p, action


def test_every_option_has_help_and_shows_its_default():
    found = list(options(parser()))
    assert len({command for command, _, _ in found}) > 25  # every subcommand was walked
    no_help, no_default = [], []
    for command, p, action in found:
        name = f"{command} {'/'.join(action.option_strings) or action.dest}"
        if not (action.help or "").strip():
            no_help.append(name)
        shown = p._get_formatter()._expand_help(action)  # the text `--help` prints for it
        has_default = not (action.required or action.default is None or action.nargs == 0)
        if has_default and "default" not in shown:
            no_default.append(name)
    assert no_help == [], f"options without help: {no_help}"
    assert no_default == [], f"options whose help does not show their default: {no_default}"


def test_help_shows_defaults_but_not_for_required_options(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["prune", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "--shots SHOTS shots that reach the target (default: 1)" in text
    assert "--curvature CURVATURE curvature .h5 of --model, for the methods that read it " \
           "(default: none)" in text  # an empty string is shown as none
    assert "--model MODEL model of the previous shot --method" in text  # required: no default


def test_the_parser_does_not_import_torch():
    """Report, figure and table commands run in processes that never need torch: building the
    parser of every command (what each `surgeon` call does first) must not import it (1-2 s of
    every such job)."""
    import subprocess
    import sys

    code = ("import sys; from surgeon.cli import parser; parser(); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]
