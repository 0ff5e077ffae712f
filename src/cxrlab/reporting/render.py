"""HTML from the Jinja2 templates in ``cxrlab/reporting/templates/``, and embedded figures.

Autoescape is on for every ``.html`` template. Every value a template prints goes through
:func:`cxrlab.fileio.html_escape` (the ``finalize`` hook), so undecodable file-name bytes show as
``\\xe9`` and ``< > & " '`` as entities; :class:`~markupsafe.Markup` (already rendered HTML, such
as a table) is printed as it is. Join lists of names in Python, not with Jinja's ``join`` filter:
that filter escapes by itself and would skip the hook.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from cxrlab.fileio import html_escape


def _shown(value: object) -> Markup:
    """What a template prints for ``value``: rendered HTML as it is, anything else escaped."""
    return value if isinstance(value, Markup) else Markup(html_escape(value))


ENVIRONMENT = Environment(
    loader=PackageLoader("cxrlab.reporting"),
    autoescape=select_autoescape(),
    finalize=_shown,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(template: str, **context: object) -> Markup:
    """The HTML of ``templates/<template>`` with ``context`` (no trailing line break)."""
    return Markup(ENVIRONMENT.get_template(template).render(**context).rstrip("\n"))


@dataclass(frozen=True)
class Figure:
    """A PNG shown in the page, inlined as a base64 data URI, with its caption."""

    path: Path
    caption: str

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.path.read_bytes()).decode("ascii")

    def html(self) -> Markup:
        return render("figure.html", figure=self)
