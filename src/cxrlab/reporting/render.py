"""HTML and Markdown from the Jinja2 templates in ``cxrlab/reporting/templates/`` (one
environment for both), and embedded figures.

Autoescape is on for every ``.html`` template. Every value a template prints goes through
:func:`cxrlab.fileio.html_escape` (the ``finalize`` hook), so undecodable file-name bytes show as
``\\xe9`` and ``< > & " '`` as entities; :class:`~markupsafe.Markup` (already rendered HTML, such
as a table) is printed as it is. Join lists of names in Python, not with Jinja's ``join`` filter:
that filter escapes by itself and would skip the hook.

A ``.md`` template (:func:`render_markdown`) is written the same way: every value it prints goes
through :func:`cxrlab.fileio.markdown_escape`, so a name's ``_``, ``*`` or ``|`` cannot start
Markdown; :class:`~markupsafe.Markup` is text already rendered (a bootstrap interval, a Markdown
table) and is printed as it is. The prose is the template's; numbers are formatted with the
``fmt`` filter (a Python format spec, ``{{ x|fmt(".3f") }}``) and intervals with ``ci``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from jinja2 import (
    Environment,
    PackageLoader,
    StrictUndefined,
    pass_eval_context,
    select_autoescape,
)
from jinja2.nodes import EvalContext
from markupsafe import Markup

from cxrlab.fileio import html_escape, markdown_escape
from cxrlab.records import Interval


@pass_eval_context
def _shown(context: EvalContext, value: object) -> str:
    """What a template prints for ``value``: rendered text as it is, anything else escaped for
    the template's format (HTML where autoescape is on, else Markdown)."""
    if isinstance(value, Markup):
        return value if context.autoescape else str(value)
    return Markup(html_escape(value)) if context.autoescape else markdown_escape(value)


def _fmt(value: object, spec: str) -> str:
    """``value`` in the Python format ``spec`` (the templates' number format)."""
    return format(value, spec)


def _ci(interval: Interval | None) -> Markup:
    """``0.951 [0.938, 0.962]`` (:class:`Interval`'s own form); a dash when missing."""
    return Markup("–" if interval is None else str(interval))


ENVIRONMENT = Environment(
    loader=PackageLoader("cxrlab.reporting"),
    autoescape=select_autoescape(),
    finalize=_shown,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENVIRONMENT.filters.update(fmt=_fmt, ci=_ci)


def render(template: str, **context: object) -> Markup:
    """The HTML of ``templates/<template>`` with ``context`` (no trailing line break)."""
    return Markup(ENVIRONMENT.get_template(template).render(**context).rstrip("\n"))


def render_markdown(template: str, **context: object) -> str:
    """The Markdown of ``templates/<template>`` (a ``.md`` one) with ``context`` (no trailing
    line break)."""
    return ENVIRONMENT.get_template(template).render(**context).rstrip("\n")


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
