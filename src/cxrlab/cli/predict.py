"""Model commands: predict, evaluate (external validation), export."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cxrlab.cli.app import BatchOpt, NoProgressOpt, app, console, err_console, shown
from cxrlab.cli.train import print_point_result, write_card
from cxrlab.errors import CxrlabError

if TYPE_CHECKING:
    from cxrlab.records import Evaluation


@app.command()
def predict(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help=(
                "A cxrlab model checkpoint (model.pt of a run), "
                "or its .onnx export (run by ONNX Runtime)."
            )
        ),
    ],
    images: Annotated[
        list[Path], typer.Argument(help="Image files or folders (searched recursively).")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help=(
                "CSV file for the probabilities "
                "(never an input, nor inside an input or dataset folder)."
            ),
        ),
    ] = Path("predictions.csv"),
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help=(
                "Overwrite an existing --out that is not a previous cxrlab predictions CSV "
                "(inputs and dataset folders stay protected)."
            ),
        ),
    ] = False,
    batch_size: BatchOpt = 32,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    no_progress: NoProgressOpt = False,
) -> None:
    (
        """Class probabilities for images, printed and written as CSV (unreadable files in """
        """folders are listed, not fatal; a file named here that cannot be read is an error)."""
    )
    from cxrlab.evaluation.predict import expand_image_paths, predict_files
    from cxrlab.outputs import check_output

    files = expand_image_paths(images)
    check_output(out, kind="predictions", inputs=[checkpoint, *images, *files], force=force)
    result = predict_files(checkpoint, files, batch_size=batch_size or 32, device=device)
    for item in images:  # a film named on the command line must be read: one line, nothing written
        if str(item) in result.errors:
            raise CxrlabError(result.errors[str(item)])
    result.write_csv(out)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {shown(note)}")
    runtime = " (ONNX Runtime)" if result.runtime == "ONNX Runtime" else ""
    table = Table(title=f"{len(result.paths)} image(s), {result.arch}{runtime}")
    table.add_column("image", overflow="fold")
    table.add_column("predicted")
    decisions = result.decisions
    if decisions is not None:
        table.add_column("decision")
    for name in result.classes:
        table.add_column(f"p({shown(name)})", justify="right")
    for i, (path, row) in enumerate(list(zip(result.paths, result.probs))[:25]):
        decision = [shown(decisions[i])] if decisions is not None else []
        table.add_row(
            shown(path),
            shown(result.classes[int(row.argmax())]),
            *decision,
            *(f"{v:.3f}" for v in row),
        )
    console.print(table)
    if len(result.paths) > 25:
        console.print(f"... {len(result.paths) - 25} more in {shown(out)}")
    if result.point is not None:
        console.print(
            f"decision: the run's operating point {shown(result.point.target)}, "
            f"p({shown(result.point.label)}) >= "
            f"{result.point.threshold:.3f} (chosen on its validation split); "
            "predicted: the most probable class",
            soft_wrap=True,
        )
    for _path, error in result.errors.items():
        err_console.print(f"skipped {shown(error)}", highlight=False, soft_wrap=True)
    console.print(f"Probabilities written to {shown(out)}")


def print_evaluation(evaluation: Evaluation, out: Path) -> None:
    """The external result beside the run's own test split, per present class."""
    ev, internal = evaluation, evaluation.internal
    absent = f"; absent: {', '.join(ev.absent)}" if ev.absent else ""
    recalls = Table(
        title=shown(
            f"{ev.arch} on {ev.name}: {ev.n} films (present: {', '.join(ev.present)}{absent})"
        )
    )
    for column in (
        "class",
        "films",
        "recall [95% CI]",
        *(["own test split (gap)"] if internal else []),
    ):
        recalls.add_column(column, justify="left" if column == "class" else "right")
    for name, result in ev.per_class.items():
        gap = (
            [f"{internal.recall[name]:.3f} ({result.recall.value - internal.recall[name]:+.3f})"]
            if internal
            else []
        )
        recalls.add_row(shown(name), str(result.n), str(result.recall), *gap)
    console.print(recalls)
    called = Table(title="How each class is called")
    called.add_column("class")
    for name in ev.classes:
        called.add_column(shown(name), justify="right")
    called.add_column("precision [95% CI]", justify="right")
    for name, result in ev.per_class.items():
        called.add_row(
            shown(name), *(str(result.called[c]) for c in ev.classes), str(result.precision)
        )
    console.print(called)
    own = (
        f" (own test split: {internal.balanced_accuracy:.3f}, "
        f"gap {ev.balanced_accuracy.value - internal.balanced_accuracy:+.3f})"
        if internal
        else ""
    )
    console.print(f"balanced accuracy over the present classes: {ev.balanced_accuracy}{own}")
    before = (
        f" (without the temperature {ev.temperature:.3f}: {ev.ece_uncalibrated:.3f})"
        if ev.ece_uncalibrated is not None
        else ""
    )
    console.print(f"accuracy: {ev.accuracy}; ECE {ev.ece:.3f}{before}")
    if ev.point is not None and ev.at_point is not None:
        console.print(
            f"Operating point {shown(ev.point.target)}: "
            f"p({shown(ev.point.label)}) >= {ev.point.threshold:.3f}, "
            "chosen on the run's validation split"
        )
        print_point_result(ev.name, ev.at_point)
        if internal is not None and internal.at_point is not None:
            print_point_result("own test split", internal.at_point)
    if ev.macro_f1 is None:
        console.print(
            f"macro-F1 and macro AUC: not defined here ({shown(', '.join(ev.absent))} absent)"
        )
    else:
        console.print(f"macro-F1 {ev.macro_f1:.3f}; macro AUC {ev.macro_auc:.3f}")
    for _path, why in list(ev.skipped.items())[:20]:
        err_console.print(f"skipped {shown(why)}", highlight=False, soft_wrap=True)
    console.print(f"Predictions and metrics in {shown(out)}/ (predictions.csv, metrics.json)")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="A run folder, its model.pt, or its .onnx export.")],
    data: Annotated[
        Path,
        typer.Argument(
            help=(
                "A labelled folder: Kaggle layout (its test split) or <CLASS>/ folders; "
                "may hold a subset of the model's classes."
            )
        ),
    ],
    split: Annotated[
        str | None,
        typer.Option("--split", help="Split of DATA to score \\[default: test if there is one]."),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Name of the set \\[default: DATA's folder name].")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder \\[default: RUN/external/<NAME>].")
    ] = None,
    target_recall: Annotated[
        str | None,
        typer.Option(
            "--target-recall",
            help=(
                "CLASS=RECALL: score at a threshold chosen for that recall on the run's "
                "validation split \\[default: the run's own operating point]."
            ),
        ),
    ] = None,
    batch_size: BatchOpt = 32,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    no_progress: NoProgressOpt = False,
) -> None:
    (
        """Score a finished model on another labelled set (external validation), beside its """
        """own test split."""
    )
    from cxrlab.evaluation.external import evaluate_model, resolve_model

    evaluation, written = evaluate_model(
        model,
        data,
        split=split,
        name=name,
        out=out,
        batch_size=batch_size or 32,
        device=device,
        target_recall=target_recall,
    )
    print_evaluation(evaluation, written)
    run_dir = resolve_model(model)[1]
    if run_dir is not None:  # the run's card now holds this result too
        write_card(run_dir)


EXPORT_FORMATS = ("--onnx (an ONNX model for ONNX Runtime)",)


@app.command("export")
def export_model(
    checkpoint: Annotated[
        Path, typer.Argument(help="A cxrlab model checkpoint (model.pt of a run).")
    ],
    onnx: Annotated[
        bool,
        typer.Option(
            "--onnx", help="Write an ONNX model for ONNX Runtime (the one format so far)."
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output file \\[default: CHECKPOINT with suffix .onnx]."),
    ] = None,
    opset: Annotated[
        int | None, typer.Option("--opset", min=7, help="ONNX opset \\[default: the exporter's].")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help=(
                "Overwrite an existing --out that is not a previous cxrlab ONNX export "
                "(the checkpoint and images stay protected)."
            ),
        ),
    ] = False,
) -> None:
    (
        """Export a checkpoint for deployment, checked against PyTorch """
        """(`cxrlab predict` runs the .onnx)."""
    )
    if not onnx:
        raise CxrlabError(
            f"export: no format given; formats: {', '.join(EXPORT_FORMATS)}; "
            f"e.g. cxrlab export {checkpoint} --onnx"
        )
    from cxrlab.models.export import TOLERANCE, OnnxModel, export_onnx
    from cxrlab.outputs import check_output

    out = out or checkpoint.with_suffix(".onnx")
    check_output(out, kind="onnx", inputs=[checkpoint], force=force)
    started = time.perf_counter()
    path = export_onnx(checkpoint, out, opset=opset)
    exported = OnnxModel(path)
    size_mb = path.stat().st_size / 1e6
    console.print(
        f"ONNX model: {shown(path)} ({size_mb:.1f} MB, {exported.arch}, "
        f"{exported.image_size} px, {len(exported.classes)} classes)",
        soft_wrap=True,
    )
    console.print(
        f"checked against PyTorch: max |probability difference| {exported.max_abs_diff:.1e} "
        f"(limit {TOLERANCE:.0e}); "
        f"export took {time.perf_counter() - started:.1f} s",
        soft_wrap=True,
    )
    for note in exported.notes:
        console.print(f"[yellow]note:[/] {shown(note)}")
