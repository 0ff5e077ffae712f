"""Serving commands: serve (a local web page and JSON API), ood (the "unlike the training films"
statistics of a run, and the share of a folder's films they flag)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from cxrlab.cli.app import CacheDirOpt, NoProgressOpt, WorkersOpt, app, console, err_console, shown
from cxrlab.errors import CxrlabError

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
OodDataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help=(
            "The run's dataset root (its split.csv paths are relative to it): fit the OOD "
            "statistics (RUN/ood.npz) from its train and validation films."
        ),
    ),
]


def fit_ood(
    run_dir: Path, data: Path, *, cache_dir: Path | None, workers: int, device: str
) -> None:
    """Fit and write ``RUN/ood.npz``, saying what is done and what came out."""
    from cxrlab.pipelines.ood import fit_run_ood

    console.print(
        f"Fitting the OOD statistics of {shown(run_dir)} on its split of {shown(data)} "
        "(features of its train and validation films)...",
        soft_wrap=True,
    )
    stats = fit_run_ood(
        run_dir,
        data,
        cache_root=cache_dir,
        workers=workers,
        device=device,
        say=lambda line: err_console.print(shown(line), highlight=False, soft_wrap=True),
    )
    console.print(f"OOD: {shown(stats.describe())}", soft_wrap=True)
    console.print(f"written to {shown(run_dir / 'ood.npz')}", soft_wrap=True)


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, a port that is taken (before the model is loaded)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CxrlabError(
                f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); "
                "choose another --port or --host"
            ) from None


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="A run folder, its model.pt, or its .onnx export.")],
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Address to listen on (0.0.0.0: every network of this machine)."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    max_upload_mb: Annotated[
        float,
        typer.Option(
            "--max-upload-mb", min=0.01, help="Largest request (the page sends one film each)."
        ),
    ] = 20.0,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help=(
                "Another host name requests may be addressed to, e.g. a reverse proxy's public "
                "name (repeatable; '*': any). Others are refused, as are cross-site posts."
            ),
        ),
    ] = None,
    data: OodDataOpt = None,
    device: DeviceOpt = "auto",
    cache_dir: CacheDirOpt = None,
    workers: WorkersOpt = 2,
) -> None:
    """A local web page and JSON API: drop films, see probabilities, Grad-CAM and warnings.

    Each film gets its calibrated probabilities, the decision (and the run's operating-point
    decision), a Grad-CAM overlay, a warning when it is unlike the training films, and the model
    card's known limitations. Listens on localhost unless --host says otherwise.
    """
    import uvicorn

    from cxrlab.evaluation.external import resolve_model
    from cxrlab.evaluation.ood import stats_path
    from cxrlab.serve.app import create_app

    check_port(host, port)
    model_file, run_dir = resolve_model(model)
    if data is not None:
        if run_dir is None:
            raise CxrlabError(f"--data: {model} is not in a finished run folder (no split.csv)")
        if model_file.suffix.lower() == ".onnx":
            raise CxrlabError("--data: the OOD check needs the PyTorch model; serve RUN/model.pt")
        if not stats_path(model_file).is_file():
            fit_ood(run_dir, data, cache_dir=cache_dir, workers=workers, device=device)
    web = create_app(
        model_file,
        max_upload_mb=max_upload_mb,
        device=device,
        host=host,
        allowed_hosts=allowed_host or (),
    )
    info = web.state.served.info(max_upload_mb)
    console.print(
        f"Serving {shown(info.arch)} ({info.runtime}) from {shown(model_file)}", soft_wrap=True
    )
    if info.ood.available:
        console.print(f"OOD check: {shown(info.ood.method)}", soft_wrap=True)
    else:
        console.print(f"[yellow]no OOD check:[/] {shown(info.ood.reason)}", soft_wrap=True)
    for note in info.notes:
        console.print(f"[yellow]note:[/] {shown(note)}", soft_wrap=True)
    shown_host = f"[{host}]" if ":" in host else host
    console.print(f"Open http://{shown(shown_host)}:{port}/ in a browser", soft_wrap=True)
    if host in LOCAL_HOSTS:
        console.print(
            "Listening on this machine only (localhost); to let other machines reach it, "
            "pass --host 0.0.0.0 (anyone on the network can then use the model).",
            soft_wrap=True,
        )
    else:
        from cxrlab.serve.app import served_hosts

        console.print(
            f"[yellow]Listening on {shown(host)}:[/] other machines that reach it can upload "
            "films; there is no login. Requests must be addressed to "
            f"{shown(', '.join(sorted(served_hosts(host, allowed_host or ()))))} "
            "(--allowed-host NAME adds a name or address).",
            soft_wrap=True,
        )
    if allowed_host:
        console.print(
            f"Also answering requests addressed to {shown(', '.join(allowed_host))} "
            "(--allowed-host).",
            soft_wrap=True,
        )
    uvicorn.run(web, host=host, port=port, log_level="warning")


@app.command()
def ood(
    run: Annotated[Path, typer.Argument(help="A finished run folder.")],
    data: OodDataOpt = None,
    score: Annotated[
        list[Path] | None,
        typer.Option(
            "--score",
            help="Image folders or files to score: how many does the check flag? (repeatable)",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Batch size.")] = 32,
    device: DeviceOpt = "auto",
    cache_dir: CacheDirOpt = None,
    workers: WorkersOpt = 2,
    no_progress: NoProgressOpt = False,
) -> None:
    """Fit a run's check for films unlike its training films; count what it flags in folders.

    --data DATA fits RUN/ood.npz from the run's train and validation films (DATA: its dataset);
    --score FOLDER prints "flagged k of n (x%)" for the films of FOLDER.
    """
    from cxrlab.artifacts import RunDir
    from cxrlab.evaluation.ood import OodStats, score_files, stats_path
    from cxrlab.evaluation.predict import expand_image_paths, load_predictor

    model_file = RunDir(run).model
    if not model_file.is_file():
        raise CxrlabError(f"{run}: no model.pt here (is it a finished cxrlab run folder?)")
    if data is not None:
        fit_ood(
            run,
            data,
            cache_dir=cache_dir,
            workers=workers,
            device=device,
        )
    elif not stats_path(model_file).is_file():
        raise CxrlabError(
            f"{stats_path(model_file)}: not computed yet; run `cxrlab ood {run} --data DATA` "
            "(DATA: the run's dataset)"
        )
    if not score:
        if data is None:
            stats = OodStats.load(stats_path(model_file))
            console.print(f"OOD: {shown(stats.describe())}", soft_wrap=True)
        return
    from cxrlab.evaluation.ood import load_stats_for

    predictor = load_predictor(model_file, device)
    assert predictor.model is not None  # model.pt: a PyTorch model
    stats, why = load_stats_for(predictor.model, model_file)
    if stats is None:
        raise CxrlabError(why)
    for folder in score:
        result = score_files(
            predictor.model,
            predictor.spec,
            stats,
            expand_image_paths([folder]),
            batch_size=batch_size,
        )
        console.print(f"{shown(folder)}: {result.summary()}", soft_wrap=True)
