"""The ``cxrlab`` command line: a thin layer over the library.

Every command prints a one-line ``error: ...`` naming the file or option at fault and exits
with status 2 on bad input; ``cxrlab --debug COMMAND`` shows the traceback instead.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from cxrlab import __version__
from cxrlab.errors import CxrlabError

app = typer.Typer(
    name="cxrlab",
    help="Chest X-ray classification with CNNs: audit and analyse data, compare pretrained models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

DataArg = Annotated[Path, typer.Argument(help="Dataset folder (Kaggle layout Data/train/<CLASS>, or <CLASS>/ folders).")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="Decoding processes.")]
NoProgressOpt = Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")]


def default_out(data: Path, what: str) -> Path:
    return Path("runs") / (data.resolve().name or "data") / what


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        console.print(f"cxrlab {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        console.print(ctx.get_help())


@app.command()
def download(
    out: Annotated[Path, typer.Option("--out", help="Where to put the dataset.")] = Path("data/chest-xray-covid19-pneumonia"),
    handle: Annotated[str, typer.Option("--handle", help="Kaggle dataset handle.")] = "prashant268/chest-xray-covid19-pneumonia",
    force: Annotated[bool, typer.Option("--force", help="Download again even if cached.")] = False,
) -> None:
    """Download the Kaggle dataset with kagglehub (needs internet)."""
    from cxrlab.data.download import download_dataset

    index = download_dataset(out, handle, force=force)
    console.print(f"Downloaded to {index.root}: {len(index.samples)} files, classes {', '.join(index.classes)}")


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to write the synthetic dataset into.")] = Path("data/demo"),
    train_per_class: Annotated[int, typer.Option(help="Training images per class.")] = 40,
    test_per_class: Annotated[int, typer.Option(help="Test images per class.")] = 15,
    size: Annotated[int, typer.Option(help="Approximate image side in pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    defects: Annotated[bool, typer.Option(help="Add a few broken, duplicate and leaked files for the audit to find.")] = True,
) -> None:
    """Write a small synthetic chest X-ray dataset (Kaggle layout) that needs no download."""
    from cxrlab.data.synthetic import make_demo_dataset

    root = make_demo_dataset(
        out, train_per_class=train_per_class, test_per_class=test_per_class, size=size, seed=seed, defects=defects
    )
    console.print(f"Demo dataset in {root}")


def print_audit(result, out: Path) -> None:  # noqa: ANN001 (AuditResult, imported lazily)
    s = result.summary
    table = Table(title=f"Audit of {result.root}", show_header=True)
    table.add_column("check")
    table.add_column("result", justify="right")
    table.add_row("files", str(s["files"]))
    table.add_row("kept per split", ", ".join(f"{k} {v}" for k, v in s["kept_per_split"].items()))
    table.add_row("unreadable", ", ".join(f"{k} {v}" for k, v in s["unreadable"].items()) or "0")
    table.add_row(f"too small (< {result.config.min_size} px)", str(s["too_small"]))
    table.add_row("exact duplicates: groups (files)", f"{s['exact_duplicate_groups']} ({s['exact_duplicate_files']})")
    table.add_row("near duplicates: groups (files)", f"{s['near_duplicate_groups']} ({s['near_duplicate_files']})")
    table.add_row("LEAKAGE across splits: groups (files)", f"{s['leakage_groups']} ({s['leakage_files']})")
    table.add_row("label conflicts (groups)", str(s["label_conflict_groups"]))
    table.add_row("excluded (see manifest)", str(s["status"]["excluded"]))
    console.print(table)
    if s["leakage_groups"]:
        leaks = [g for g in result.groups if g.cross_split]
        lines = [" <-> ".join(g.members) for g in leaks[:10]]
        more = f"\n... and {len(leaks) - 10} more (audit.md)" if len(leaks) > 10 else ""
        console.print(Panel(escape("\n".join(lines)) + more, title=f"LEAKAGE: {len(leaks)} image(s) in two splits; train copies excluded", border_style="red"))
    if s["label_conflict_groups"]:
        conflicts = [g for g in result.groups if g.label_conflict]
        lines = [" <-> ".join(f"{m} ({c})" for m, c in zip(g.members, g.classes)) for g in conflicts[:10]]
        console.print(Panel(escape("\n".join(lines)), title="Same image with different labels", border_style="yellow"))
    sc = result.shortcut
    if sc is not None:
        style = {"high": "red", "moderate": "yellow", "low": "green"}[sc.level]
        body = (
            f"Format-only classifier (size, aspect, file size, intensity, border), {sc.folds}-fold CV on train:\n"
            f"accuracy {sc.cv_accuracy:.1%} (majority class {sc.majority_rate:.1%}), "
            f"balanced accuracy {sc.cv_balanced_accuracy:.1%} (chance {sc.chance_balanced:.1%})"
        )
        if sc.test_accuracy is not None:
            body += f"\ntrained on train, scored on test: accuracy {sc.test_accuracy:.1%}"
        if sc.explanation:
            body += "\n" + "\n".join(f"- {line}" for line in sc.explanation)
        console.print(Panel(escape(body), title=f"Shortcut check: {sc.level.upper()}", border_style=style))
    console.print(f"Manifest, report and plots in {out}/ (audit.md, manifest.csv, duplicates.png, shortcuts.png)")


@app.command()
def audit(
    data: DataArg,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder [default: runs/<DATA>/audit].")] = None,
    min_size: Annotated[int, typer.Option("--min-size", min=1, help="Smallest acceptable image side in pixels.")] = 64,
    near_threshold: Annotated[float, typer.Option("--near-threshold", min=0.5, max=1.0, help="64x64 NCC above which two images are copies.")] = 0.98,
    workers: WorkersOpt = 2,
    no_progress: NoProgressOpt = False,
) -> None:
    """Find unreadable files, duplicates, leakage across splits and format shortcuts (read-only)."""
    from cxrlab.data.audit import AuditConfig, run_audit
    from cxrlab.data.discover import discover

    started = time.perf_counter()
    index = discover(data)
    out = out or default_out(data, "audit")
    config = AuditConfig(min_size=min_size, near_threshold=near_threshold, workers=workers)
    result = run_audit(index, out, config, progress=not no_progress)
    print_audit(result, out)
    console.print(f"audit took {time.perf_counter() - started:.1f} s")


@app.command()
def analyze(
    data: DataArg,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder [default: runs/<DATA>/analysis].")] = None,
    samples_per_class: Annotated[int, typer.Option(min=1, help="Images per class in the sample grid.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed for picking sample images.")] = 0,
    workers: WorkersOpt = 2,
    no_progress: NoProgressOpt = False,
) -> None:
    """Class balance, image sizes, intensities and sample images, as plots and a summary."""
    from cxrlab.data.analyze import analyze_dataset, summary_table
    from cxrlab.data.discover import discover
    from cxrlab.data.scan import scan_dataset

    started = time.perf_counter()
    index = discover(data)
    out = out or default_out(data, "analysis")
    records = scan_dataset(index, workers=workers, progress=not no_progress)
    summary = analyze_dataset(index, records, out, samples_per_class=samples_per_class, seed=seed)
    console.print(summary_table(summary))
    for finding in summary.get("findings", []):
        console.print(f"- {escape(finding)}")
    console.print(f"Plots and summary in {out}/ (summary.md, summary.json, *.png)")
    console.print(f"analyze took {time.perf_counter() - started:.1f} s")


@app.command()
def cache(
    data: DataArg,
    image_size: Annotated[int, typer.Option("--image-size", help="Side of the cached square images.")] = 224,
    resize: Annotated[str, typer.Option("--resize", help="squash (stretch to square) or pad (keep aspect, pad black).")] = "squash",
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Cache root [default: $CXRLAB_CACHE or ~/.cache/cxrlab].")] = None,
    workers: WorkersOpt = 2,
    no_progress: NoProgressOpt = False,
) -> None:
    """Decode and resize every image once into a memory-mapped cache that training reads."""
    from cxrlab.data.cache import CacheSpec, build_cache
    from cxrlab.data.discover import discover

    started = time.perf_counter()
    built = build_cache(
        discover(data), CacheSpec(image_size, resize), cache_root=cache_dir, workers=workers, progress=not no_progress
    )
    console.print(
        f"Cache {built.folder}: {len(built.paths)} images at {image_size}px ({resize}); "
        f"{built.rebuilt} decoded now, {len(built.errors)} unreadable; {time.perf_counter() - started:.1f} s"
    )
    for path, error in list(built.errors.items())[:20]:
        err_console.print(f"skipped {escape(error)}", highlight=False)


@app.command()
def split(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", help="CSV file to write (path,class,subset).")] = Path("split.csv"),
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of train held out for validation.")] = 0.15,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    manifest: Annotated[Path | None, typer.Option("--manifest", help="Audit manifest (or its folder): excluded files are left out.")] = None,
) -> None:
    """Carve a stratified, seeded validation split from train and write it as CSV."""
    from cxrlab.data.datasets import make_split
    from cxrlab.data.discover import discover

    index = discover(data)
    subsets = make_split(index, val_fraction=val_fraction, seed=seed, manifest=manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    from cxrlab.data.split import save_split

    save_split(out, subsets)
    console.print(f"Split written to {out}: " + ", ".join(f"{k} {len(v)}" for k, v in subsets.items()))


@app.command()
def demo(
    out: Annotated[Path, typer.Argument(help="Folder for the demo data and every output.")] = Path("runs/demo"),
    no_progress: NoProgressOpt = False,
) -> None:
    """The quick start: synthetic data, then audit, analyze, cache and split on it."""
    data = out / "data"
    demo_data(data)
    audit(data, out=out / "audit", no_progress=no_progress)
    analyze(data, out=out / "analysis", no_progress=no_progress)
    cache(data, cache_dir=out / "cache", image_size=128, no_progress=no_progress)
    split(data, out=out / "split.csv", manifest=out / "audit")


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status; errors become one line on stderr."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        app(args=argv, prog_name="cxrlab")  # standalone: usage errors print and raise SystemExit
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except CxrlabError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if debug:
            raise
        err_console.print(
            f"[bold red]error:[/] {type(exc).__name__}: {escape(str(exc))} (run with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        return 1
    return 0


def main() -> None:
    sys.exit(run())
