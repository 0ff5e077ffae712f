"""The ``cxrlab`` command line: a thin layer over the library.

Every command prints a one-line ``error: ...`` naming the file or option at fault (a setting
the library names by its field is written as the option that set it: ``cxrlab.cli.options``)
and exits with status 2 on bad input; ``cxrlab --debug COMMAND`` shows the traceback instead.
"""

from __future__ import annotations

import sys

# The commands register on the app as their modules are imported, in this order (--help lists
# them so): data, then training, then models.
from cxrlab.cli import data, lungs, predict, serve, train  # noqa: F401
from cxrlab.cli.app import app, err_console, shown
from cxrlab.cli.options import error_line, hides_progress, invoked_command
from cxrlab.errors import ConfigError, CxrlabError
from cxrlab.progress import progress_bars


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status; errors become one line on stderr."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        with progress_bars(not hides_progress(app, argv)):
            app(args=argv, prog_name="cxrlab")  # standalone: usage errors print and SystemExit
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except CxrlabError as exc:
        if debug:
            raise
        line = (
            error_line(exc, invoked_command(app, argv))
            if isinstance(exc, ConfigError)
            else str(exc)
        )
        err_console.print(f"[bold red]error:[/] {shown(line)}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if debug:
            raise
        err_console.print(
            f"[bold red]error:[/] {type(exc).__name__}: {shown(exc)} "
            "(run with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        return 1
    return 0


def main() -> None:
    sys.exit(run())
