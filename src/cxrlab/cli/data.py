"""Data commands: download, demo-data, audit, analyze, cache, split, and the demo."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.panel import Panel
from rich.table import Table

from cxrlab.cli.app import (
    AddSourceOpt,
    DataArg,
    NoProgressOpt,
    SourceNameOpt,
    SourceTestFractionOpt,
    WorkersOpt,
    app,
    console,
    default_out,
    err_console,
    open_sources,
    shown,
)

if TYPE_CHECKING:
    from cxrlab.data.audit import AuditResult
    from cxrlab.records import Resize


@app.command()
def download(
    out: Annotated[Path, typer.Option("--out", help="Where to put the dataset.")] = Path(
        "data/chest-xray-covid19-pneumonia"
    ),
    handle: Annotated[
        str, typer.Option("--handle", help="Kaggle dataset handle.")
    ] = "prashant268/chest-xray-covid19-pneumonia",
    force: Annotated[bool, typer.Option("--force", help="Download again even if cached.")] = False,
) -> None:
    """Download the Kaggle dataset with kagglehub (needs internet)."""
    from cxrlab.data.download import download_dataset

    index = download_dataset(out, handle, force=force)
    console.print(
        f"Downloaded to {shown(index.root)}: {len(index.samples)} files, "
        f"classes {shown(', '.join(index.classes))}"
    )


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to write the synthetic dataset into.")] = Path(
        "data/demo"
    ),
    train_per_class: Annotated[int, typer.Option(help="Training images per class.")] = 40,
    test_per_class: Annotated[int, typer.Option(help="Test images per class.")] = 15,
    size: Annotated[int, typer.Option(help="Approximate image side in pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    defects: Annotated[
        bool,
        typer.Option(help="Add a few broken, duplicate and leaked files for the audit to find."),
    ] = True,
) -> None:
    """Write a small synthetic chest X-ray dataset (Kaggle layout) that needs no download."""
    from cxrlab.data.synthetic import make_demo_dataset

    root = make_demo_dataset(
        out,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        size=size,
        seed=seed,
        defects=defects,
    )
    console.print(f"Demo dataset in {shown(root)}")


def print_audit(result: AuditResult, out: Path) -> None:
    s = result.summary
    table = Table(title=f"Audit of {shown(result.root)}", show_header=True)
    table.add_column("check")
    table.add_column("result", justify="right")
    table.add_row("files", str(s.files))
    table.add_row("kept per split", ", ".join(f"{k} {v}" for k, v in s.kept_per_split.items()))
    table.add_row("unreadable", ", ".join(f"{k} {v}" for k, v in s.unreadable.items()) or "0")
    table.add_row(f"too small (< {result.config.min_size} px)", str(s.too_small))
    table.add_row(
        "exact duplicates: groups (files)",
        f"{s.exact_duplicate_groups} ({s.exact_duplicate_files})",
    )
    table.add_row(
        "near duplicates: groups (files)",
        f"{s.near_duplicate_groups} ({s.near_duplicate_files})",
    )
    table.add_row(
        "LEAKAGE across splits: groups (files)", f"{s.leakage_groups} ({s.leakage_files})"
    )
    table.add_row("label conflicts (groups)", str(s.label_conflict_groups))
    table.add_row("excluded (see manifest)", str(s.status["excluded"]))
    table.add_row("kept with a warning (see manifest)", str(s.status["warning"]))
    console.print(table)
    if s.leakage_groups:
        leaks = [g for g in result.groups if g.cross_split]
        lines = [" <-> ".join(g.members) for g in leaks[:10]]
        more = f"\n... and {len(leaks) - 10} more (audit.md)" if len(leaks) > 10 else ""
        console.print(
            Panel(
                shown("\n".join(lines)) + more,
                title=f"LEAKAGE: {len(leaks)} image(s) in two splits; train copies excluded",
                border_style="red",
            )
        )
    if s.label_conflict_groups:
        conflicts = [g for g in result.groups if g.label_conflict]
        lines = [
            " <-> ".join(f"{m} ({c})" for m, c in zip(g.members, g.classes)) for g in conflicts[:10]
        ]
        console.print(
            Panel(
                shown("\n".join(lines)),
                title="Same image with different labels",
                border_style="yellow",
            )
        )
    sc = result.shortcut
    if sc is not None:
        style = {"high": "red", "moderate": "yellow", "low": "green"}[sc.level]
        body = (
            "Format-only classifier (size, aspect, file size, intensity, border), "
            f"{sc.folds}-fold CV on train:\n"
            f"accuracy {sc.cv_accuracy:.1%} (majority class {sc.majority_rate:.1%}), "
            f"balanced accuracy {sc.cv_balanced_accuracy:.1%} (chance {sc.chance_balanced:.1%})"
        )
        if sc.test_accuracy is not None:
            body += f"\ntrained on train, scored on test: accuracy {sc.test_accuracy:.1%}"
        if sc.explanation:
            body += "\n" + "\n".join(f"- {line}" for line in sc.explanation)
        console.print(
            Panel(shown(body), title=f"Shortcut check: {sc.level.upper()}", border_style=style)
        )
    check = result.sources
    if check is not None:
        style = {"high": "red", "moderate": "yellow", "low": "green"}[check.level]
        rows = [
            f"{name}: " + ", ".join(f"{c} {n}" for c, n in profile.kept.items() if n)
            for name, profile in check.sources.items()
        ]
        crossing = [g for g in result.groups if g.cross_source]
        rows.append(f"films two sources share: {len(crossing)} group(s) (copies excluded)")
        rows += [f"- {line}" for line in check.explanation]
        console.print(
            Panel(
                shown("\n".join(rows)), title=f"Sources: {check.level.upper()}", border_style=style
            )
        )
    console.print(
        f"Manifest, report and plots in {shown(out)}/ "
        "(audit.md, manifest.csv, duplicates.png, shortcuts.png)"
    )


@app.command()
def audit(
    data: DataArg,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder \\[default: runs/<DATA>/audit].")
    ] = None,
    min_size: Annotated[
        int, typer.Option("--min-size", min=1, help="Smallest acceptable image side in pixels.")
    ] = 64,
    near_threshold: Annotated[
        float,
        typer.Option(
            "--near-threshold",
            min=0.5,
            max=1.0,
            help="64x64 NCC above which two images are copies.",
        ),
    ] = 0.98,
    add_source: AddSourceOpt = None,
    source_name: SourceNameOpt = None,
    workers: WorkersOpt = 2,
    no_progress: NoProgressOpt = False,
) -> None:
    """Find unreadable files, duplicates, leakage across splits and sources, format shortcuts, and
    whether a source names its class (read-only)."""
    from cxrlab.data.audit import AuditConfig, run_audit
    from cxrlab.outputs import check_output_folder

    started = time.perf_counter()
    index = open_sources(data, add_source, source_name)
    out = out or default_out(data, "audit")
    check_output_folder(out, list(index.source_roots.values()))
    config = AuditConfig(min_size=min_size, near_threshold=near_threshold, workers=workers)
    result = run_audit(index, out, config)
    print_audit(result, out)
    console.print(f"audit took {time.perf_counter() - started:.1f} s")


@app.command()
def analyze(
    data: DataArg,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder \\[default: runs/<DATA>/analysis].")
    ] = None,
    samples_per_class: Annotated[
        int, typer.Option(min=1, help="Images per class in the sample grid.")
    ] = 8,
    seed: Annotated[int, typer.Option(help="Seed for picking sample images.")] = 0,
    add_source: AddSourceOpt = None,
    source_name: SourceNameOpt = None,
    workers: WorkersOpt = 2,
    no_progress: NoProgressOpt = False,
) -> None:
    """Class balance, image sizes, intensities and sample images, as plots and a summary."""
    from cxrlab.data.analyze import analyze_dataset, summary_table
    from cxrlab.data.scan import scan_dataset
    from cxrlab.outputs import check_output_folder

    started = time.perf_counter()
    index = open_sources(data, add_source, source_name)
    out = out or default_out(data, "analysis")
    check_output_folder(out, list(index.source_roots.values()))
    records = scan_dataset(index, workers=workers)
    summary = analyze_dataset(index, records, out, samples_per_class=samples_per_class, seed=seed)
    console.print(summary_table(summary))
    for finding in summary.findings:
        console.print(f"- {shown(finding)}")
    console.print(f"Plots and summary in {shown(out)}/ (summary.md, summary.json, *.png)")
    console.print(f"analyze took {time.perf_counter() - started:.1f} s")


@app.command()
def cache(
    data: DataArg,
    image_size: Annotated[
        int, typer.Option("--image-size", help="Side of the cached square images.")
    ] = 224,
    resize: Annotated[
        str,
        typer.Option(
            "--resize", help="squash (stretch to square) or pad (keep aspect, pad black)."
        ),
    ] = "squash",
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir", help="Cache root \\[default: $CXRLAB_CACHE or ~/.cache/cxrlab]."
        ),
    ] = None,
    add_source: AddSourceOpt = None,
    source_name: SourceNameOpt = None,
    workers: WorkersOpt = 2,
    no_progress: NoProgressOpt = False,
) -> None:
    """Decode and resize every image once into a memory-mapped cache that training reads."""
    from cxrlab.data.cache import CacheSpec, build_cache, default_cache_root
    from cxrlab.outputs import check_output_folder

    started = time.perf_counter()
    index = open_sources(data, add_source, source_name)
    check_output_folder(
        cache_dir or default_cache_root(), list(index.source_roots.values()), setting="cache_root"
    )
    built = build_cache(
        index,
        CacheSpec(image_size, cast("Resize", resize)),
        cache_root=cache_dir,
        workers=workers,
    )
    console.print(
        f"Cache {shown(built.folder)}: {len(built.paths)} images at {image_size}px ({resize}); "
        f"{built.rebuilt} decoded now, {len(built.errors)} unreadable; "
        f"{time.perf_counter() - started:.1f} s"
    )
    for _path, error in list(built.errors.items())[:20]:
        err_console.print(f"skipped {shown(error)}", highlight=False, soft_wrap=True)


@app.command()
def split(
    data: DataArg,
    out: Annotated[
        Path, typer.Option("--out", help="CSV file to write (path,class,subset,source).")
    ] = Path("split.csv"),
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of train held out for validation.")
    ] = 0.15,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest", help="Audit manifest (or its folder): excluded files are left out."
        ),
    ] = None,
    add_source: AddSourceOpt = None,
    source_name: SourceNameOpt = None,
    source_test_fraction: SourceTestFractionOpt = None,
    source_split_seed: Annotated[
        int, typer.Option("--source-split-seed", help="Seed of added sources' test parts.")
    ] = 0,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Overwrite an existing --out that is not a cxrlab split file."
        ),
    ] = False,
) -> None:
    """Carve a stratified, seeded validation split from train (and a test part from each added
    source without one) and write it as CSV."""
    from cxrlab.data.datasets import make_split
    from cxrlab.data.split import save_split
    from cxrlab.outputs import check_output

    index = open_sources(data, add_source, source_name)
    check_output(out, kind="split", inputs=list(index.source_roots.values()), force=force)
    subsets = make_split(
        index,
        val_fraction=val_fraction,
        seed=seed,
        manifest=manifest,
        test_fraction=0.2 if source_test_fraction is None else source_test_fraction,
        test_seed=source_split_seed,
    )
    save_split(out, subsets, index.source_of)
    console.print(
        f"Split written to {shown(out)}: " + ", ".join(f"{k} {len(v)}" for k, v in subsets.items())
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Argument(help="Folder for the demo data and every output.")] = Path(
        "runs/demo"
    ),
    no_progress: NoProgressOpt = False,
) -> None:
    """The quick start: synthetic data, its audit and analysis, then AlexNet vs ResNet-18 (from
    scratch, 64 px, 4 epochs) trained, tested and compared in one HTML report."""
    from cxrlab.cli.train import compare_models  # the training commands, registered after these

    data = out / "data"
    demo_data(data)
    audit(data, out=out / "audit", no_progress=no_progress)
    analyze(data, out=out / "analysis", no_progress=no_progress)
    compare_models(
        data,
        ["alexnet", "resnet18"],
        "finetune",
        weights=[],
        pretrained=False,
        seeds=[0],
        out=out / "compare",
        file=None,
        typed={"image_size": 64, "epochs": 4},
        head_epochs=None,
        manifest=out / "audit",
        audit=True,
        external=[],
        cache_dir=out / "cache",
        workers=2,
    )
