"""The CLI reference of the README, generated from the commands themselves.

Each command is its synopsis (arguments and every option, as `--help` shows them) and the
first line of its help. `make docs` writes it into the README between the markers below;
a test fails when the README and the commands drift apart.

    python -m cumulo.cli.reference                 print the reference
    python -m cumulo.cli.reference --write FILE    replace the one in FILE
    python -m cumulo.cli.reference --check FILE    exit 1 when FILE's is not up to date
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import click

BEGIN = "<!-- CLI reference: generated from the commands by `make docs`; do not edit -->"
END = "<!-- end of the CLI reference -->"
WIDTH = 96


def _metavar(param: click.Parameter) -> str:
    if param.metavar:
        return param.metavar
    if isinstance(param.type, click.Choice):
        return "|".join(str(c) for c in param.type.choices)
    return param.type.name.upper()


def _option(option: click.Option) -> str:
    names = "|".join([option.opts[-1], *option.secondary_opts])
    text = names if option.is_flag else f"{names} {_metavar(option)}"
    return f"[{text}]" + ("..." if option.multiple else "")


def _argument(argument: click.Argument) -> str:
    text = (argument.metavar or (argument.name or "").upper()) + (
        "..." if argument.nargs == -1 else ""
    )
    return text if argument.required else f"[{text}]"


def _words(command: click.Command) -> list[str]:
    words = []
    for param in command.params:
        if isinstance(param, click.Argument):
            words.append(_argument(param))
        elif isinstance(param, click.Option) and param.name not in ("help", "version"):
            words.append(_option(param))
    return words


def _leaves(group: click.Group, path: list[str]) -> Iterator[tuple[list[str], click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        if isinstance(command, click.Group):
            yield from _leaves(command, [*path, name])
        else:
            yield [*path, name], command


def reference(cli: click.Group) -> str:
    """The reference: the global synopsis, then each command, in `--help` order."""
    blocks = [_synopsis(["cumulo"], [*_words(cli), "COMMAND", "..."], None)]
    for path, command in _leaves(cli, ["cumulo"]):
        blocks.append(_synopsis(path, _words(command), command.get_short_help_str(limit=200)))
    return "\n".join(blocks)


def _synopsis(path: list[str], words: list[str], summary: str | None) -> str:
    # Wrap between words only: a `[--option VALUE]` never breaks.
    line = " ".join(path)
    lines = []
    for word in words:
        if len(line) + 1 + len(word) > WIDTH:
            lines.append(line)
            line = " " * 8 + word
        else:
            line += " " + word
    lines.append(line)
    if summary:
        lines += textwrap.wrap(summary, WIDTH, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines)


def readme_block(cli: click.Group) -> str:
    return f"{BEGIN}\n\n```text\n{reference(cli)}\n```\n\n{END}"


def replace_in(text: str, cli: click.Group) -> str:
    """`text` with the generated reference between the markers."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN!r} ... {END!r} are missing")
    return text[:start] + readme_block(cli) + text[end + len(END) :]


def main(argv: list[str]) -> int:
    from cumulo.cli.main import cli

    if len(argv) == 2 and argv[0] in ("--write", "--check"):
        path = Path(argv[1])
        text = path.read_text(encoding="utf-8")
        new = replace_in(text, cli)
        if argv[0] == "--check":
            if new != text:
                print(f"{path}: the CLI reference is out of date: run `make docs`")
                return 1
            return 0
        path.write_text(new, encoding="utf-8")
        return 0
    if argv:
        print(__doc__)
        return 2
    print(reference(cli))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
