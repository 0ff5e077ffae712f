"""One exception type for every failure a user can fix.

The CLI prints a :class:`CxrlabError` as one line (no traceback unless ``--debug``);
every message names the file or the option at fault.
"""

from __future__ import annotations

import re
from collections.abc import Callable


class CxrlabError(Exception):
    """A user-facing error: bad input, a missing folder, a wrong option."""


class ImageReadError(CxrlabError):
    """An image file that cannot be decoded; ``kind`` says why (empty, not_image, corrupt, ...)."""

    def __init__(self, path: object, kind: str, detail: str) -> None:
        self.path = str(path)
        self.kind = kind
        self.detail = detail
        super().__init__(f"{self.path}: {kind.replace('_', ' ')}: {detail}")


_NAME = re.compile(r"\{([a-z][a-z0-9_]*)\}")


class ConfigError(CxrlabError):
    """A bad value of a run's setting, named by its field (``epochs``, ``run_dir``), not by a
    command-line option: the library speaks in fields, and the CLI alone maps them to options
    (``cxrlab.cli.options``).

    ``message`` may name other settings as ``{field}`` (``"resume it ({resume})"``); a renderer
    writes each name as its reader knows it: the field itself here, the option in the CLI.
    ``value``, when given, is written after the name (``image_size 32: ...``). ``origin`` says
    where the value came from when a resolver knows it (``typed``, ``file``, ``preset``,
    ``stored``), and ``where`` names that file or preset.
    """

    def __init__(
        self,
        field: str | None,
        message: str,
        *,
        value: object = None,
        origin: str | None = None,
        where: str | None = None,
    ) -> None:
        self.field, self.message, self.value = field, message, value
        self.origin, self.where = origin, where
        super().__init__(self.render(lambda name: name))

    def render(self, name_of: Callable[[str], str]) -> str:
        """The one-line message with every setting written by ``name_of``."""
        text = _NAME.sub(lambda m: name_of(m.group(1)), self.message)
        if self.field is None:  # no one setting is at fault; the message names what to change
            return text
        head = name_of(self.field) + ("" if self.value is None else f" {self.value}")
        return f"{head}: {text}"

    def came_from(self, origin: str, where: str | None = None) -> ConfigError:
        """This error, knowing where its value came from."""
        return ConfigError(self.field, self.message, value=self.value, origin=origin, where=where)
