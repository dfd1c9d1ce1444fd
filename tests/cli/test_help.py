"""Every command's `--help`: nothing cut off, every option described, the key's fallback
named. Rendered by click as a terminal 80 columns wide would show it."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from cumulo.cli import cli


def commands(
    group: click.Group = cli, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, group
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


ALL = list(commands())
GROUPS = [(path, c) for path, c in ALL if isinstance(c, click.Group)]


def help_of(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    ("path", "group"), GROUPS, ids=[" ".join(p) or "cumulo" for p, _ in GROUPS]
)
def test_no_command_summary_is_cut_off(path: tuple[str, ...], group: click.Group) -> None:
    listing = help_of(path).split("Commands:\n", 1)[1]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None and command.help is not None
        first_sentence = command.help.strip().split("\n\n")[0].replace("\n", " ")
        [line] = [ln for ln in listing.splitlines() if ln.split()[0] == name]
        assert not line.endswith("..."), line
        assert " ".join(line.split()[1:]) == " ".join(first_sentence.split()), line


@pytest.mark.parametrize(("path", "command"), ALL, ids=[" ".join(p) or "cumulo" for p, _ in ALL])
def test_every_option_is_described(path: tuple[str, ...], command: click.Command) -> None:
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"cumulo {' '.join(path)} {param.opts[0]} has no help"
    assert command.help, f"cumulo {' '.join(path)} has no help"
    help_of(path)  # renders


def test_the_key_option_names_its_fallback() -> None:
    text = " ".join(help_of(()).split())
    assert (
        "--key KEY API key of the client commands (env CUMULO_API_KEY, else CUMULO_ADMIN_KEY)"
        in text
    )


def test_an_exit_code_asked_by_a_command_is_the_process_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`cumulo batch create --wait` on a batch that did not complete must exit non-zero: an
    `Exit(1)` raised by a command reaches the shell although click runs without standalone
    mode."""
    entry = importlib.import_module("cumulo.cli.main")

    @cli.command(name="exit-three", hidden=True)
    def exit_three() -> None:
        raise click.exceptions.Exit(3)

    monkeypatch.setattr("sys.argv", ["cumulo", "exit-three"])
    try:
        with pytest.raises(SystemExit) as stopped:
            entry.main()
        assert stopped.value.code == 3
    finally:
        cli.commands.pop("exit-three", None)
