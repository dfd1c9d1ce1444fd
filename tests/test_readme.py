"""The README's commands run as written: each `cumulo` command is the venv's, exists and
parses; the CLI reference is the one the commands generate. (`integration/
test_readme_walkthrough.py` runs them against a server.)"""

from __future__ import annotations

import shutil
import subprocess

import click
import pytest

from cumulo.cli import cli
from cumulo.cli.reference import replace_in
from support.readme import README, blocks, shell_lines, simple_commands

SHELL = [b for b in blocks() if b.lang == "sh"]
COMMANDS = [
    (b.section, cmd) for b in SHELL for line in shell_lines(b) for cmd in simple_commands(line)
]
CUMULO = [(section, cmd) for section, cmd in COMMANDS if cmd[0].endswith("cumulo")]


def test_the_readme_shows_cumulo_commands() -> None:
    assert len(CUMULO) >= 6
    assert {section for section, _ in CUMULO} >= {"Quick start"}


@pytest.mark.parametrize(("section", "command"), CUMULO, ids=[" ".join(c[1:4]) for _, c in CUMULO])
def test_each_cumulo_command_is_the_venvs(section: str, command: list[str]) -> None:
    # A bare `cumulo` is "command not found" after `make serve`: the venv is not activated.
    assert command[0] == ".venv/bin/cumulo", f"{section}: {' '.join(command)}"


@pytest.mark.parametrize(("section", "command"), CUMULO, ids=[" ".join(c[1:4]) for _, c in CUMULO])
def test_each_cumulo_command_exists_and_its_options_parse(section: str, command: list[str]) -> None:
    args = command[1:]
    group: click.Command = cli
    ctx: click.Context | None = None
    name = "cumulo"
    while isinstance(group, click.Group):
        ctx = click.Context(group, info_name=name, parent=ctx)
        _, rest, _ = group.make_parser(ctx).parse_args(list(args))
        assert rest, f"{section}: `{' '.join(command)}` names no command"
        sub = group.get_command(ctx, rest[0])
        assert sub is not None, f"{section}: `{' '.join(command)}`: no command {rest[0]!r}"
        name, args, group = rest[0], rest[1:], sub
    try:
        group.make_context(name, list(args), parent=ctx)
    except click.UsageError as exc:
        pytest.fail(f"{section}: `{' '.join(command)}`: {exc.format_message()}")


def test_the_cli_reference_is_generated_from_the_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert replace_in(text, cli) == text, "the README's CLI reference is stale: run `make docs`"


MAKE = [(section, cmd) for section, cmd in COMMANDS if cmd[0] == "make"]


@pytest.mark.parametrize(("section", "command"), MAKE, ids=[" ".join(c) for _, c in MAKE])
def test_each_make_command_names_a_target_of_the_makefile(section: str, command: list[str]) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(
        ["make", "-n", "-C", str(README.parent), *command[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert dry.returncode == 0, f"{section}: `{' '.join(command)}`: {dry.stderr}"
