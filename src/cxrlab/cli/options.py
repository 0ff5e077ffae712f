"""The one map between settings and command-line options.

The library names a setting by its field (``image_size``, ``run_dir``); a command declares each
option once, as a parameter named like the field it sets (``--image-size`` is ``image_size``),
but for the few in :data:`PARAMS`. From that declaration this module reads the fields typed on a
command line (:func:`typed_fields`) and writes a library error as the option that set the value
(:func:`error_line`), so no module below ``cli/`` spells an option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from cxrlab.errors import ConfigError

# A setting whose parameter is named otherwise: field (or library name) -> parameter.
PARAMS = {
    "pretrained": "no_pretrained",  # --no-pretrained sets pretrained=False
    "sources": "add_source",  # --add-source NAME=DIR (repeatable) fills the sources mapping
    "run_dir": "out",
    "cache_root": "cache_dir",
    "preset": "preset_name",
}


def is_typed(ctx: typer.Context, param: str) -> bool:
    """Whether ``param`` was typed on the command line (not its default)."""
    source = ctx.get_parameter_source(param)
    return source is not None and source.name == "COMMANDLINE"


def typed_fields(
    ctx: typer.Context, *, leave_out: frozenset[str] = frozenset()
) -> dict[str, object]:
    """The :class:`~cxrlab.config.RunConfig` fields typed on this command line, by field (paths
    as text); ``leave_out``: fields whose like-named parameter means something else here."""
    from cxrlab.config import FIELDS
    from cxrlab.data.discover import parse_sources

    typed: dict[str, object] = {}
    for field in sorted(FIELDS - leave_out):
        param = PARAMS.get(field, field)
        if param not in ctx.params or not is_typed(ctx, param):
            continue
        value = ctx.params[param]
        if field == "pretrained":
            value = not value
        elif field == "sources":
            value = {name: str(folder) for name, folder in parse_sources(value or []).items()}
        typed[field] = str(value) if isinstance(value, Path) else value
    return typed


def flag_of(command: TyperCommand | None, name: str) -> str:
    """The option (or argument) of ``command`` that sets ``name``; the name itself when the
    command has none. A field set per run by a plural option (``--models``) is that option."""
    params = {p.name: p for p in command.params} if command else {}
    for candidate in (name, PARAMS.get(name), f"{name}s"):
        param = params.get(candidate) if candidate else None
        if isinstance(param, TyperOption):
            return param.opts[0]
        if param is not None:
            return (param.name or name).upper()
    return name


def error_line(error: ConfigError, command: TyperCommand | None) -> str:
    """A library error in the command's words: the option that set the value, or the recipe
    file, preset or stored run it came from."""
    if error.origin == "file":
        return f"{flag_of(command, 'config_file')} {error.where}: {error.render(str)}"
    if error.origin == "preset":
        return f"{flag_of(command, 'preset')} {error.where}: {error.render(str)}"
    if error.origin == "stored":
        return f"{error.where}: {error.render(str)}"
    return error.render(lambda name: flag_of(command, name))


def several_values(*params: str) -> type[TyperCommand]:
    """A command class whose repeatable options ``params`` take several values after one flag
    (``--models a b c``, as ``--models a --models b --models c``): click reads one per flag."""

    class SeveralValues(TyperCommand):
        def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # click's own Context
            flags = {
                flag
                for p in self.params
                if p.name in params and isinstance(p, TyperOption)
                for flag in p.opts
            }
            spread: list[str] = []
            current: str | None = None
            for token in args:
                if token.startswith("-"):
                    current = token if token in flags else None
                elif current is not None and spread[-1] != current:
                    spread.append(current)
                spread.append(token)
            return super().parse_args(ctx, spread)

    return SeveralValues


def hides_progress(app: typer.Typer, argv: list[str]) -> bool:
    """Whether ``argv`` gives its command's ``--no-progress``: progress bars are the process's
    setting (:func:`cxrlab.progress.progress_bars`), not a parameter of the library."""
    from cxrlab.cli.app import NO_PROGRESS

    if NO_PROGRESS not in argv:  # (no need to build the commands to know)
        return False
    command = invoked_command(app, argv)
    return command is not None and flag_of(command, "no_progress") == NO_PROGRESS


def invoked_command(app: typer.Typer, argv: list[str]) -> TyperCommand | None:
    """The command ``argv`` runs (``lungs train`` included), or None when it names none."""
    command = typer.main.get_command(app)
    for token in argv:
        if not isinstance(command, TyperGroup):
            break
        if not token.startswith("-"):
            command = command.commands.get(token)
    return command if isinstance(command, TyperCommand) else None
