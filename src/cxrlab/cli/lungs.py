"""``cxrlab segment`` (lung masks of films) and ``cxrlab lungs train`` (the segmenter itself)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from cxrlab.cli.app import NoProgressOpt, app, console, err_console, shown
from cxrlab.errors import CxrlabError

lungs_app = typer.Typer(help="The learned lung segmenter: train it on the lung masks available.")
app.add_typer(lungs_app, name="lungs")

SHARED = Path("..") / "shared"


@app.command()
def segment(
    images: Annotated[
        list[Path], typer.Argument(help="Image files or folders (searched recursively).")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the masks, masks.csv and contact_sheet.png.")
    ] = Path("lung-masks"),
    no_progress: NoProgressOpt = False,
) -> None:
    """Lung masks of films (PNG, one per film, the film's size), whether each is a plausible
    two-lung mask, the lung box, and a contact sheet (unreadable files in folders are listed)."""
    from cxrlab.data.reader import decode_image
    from cxrlab.evaluation.predict import expand_image_paths
    from cxrlab.outputs import check_output_folder, dataset_folders
    from cxrlab.pipelines.segment import segment_files

    files = expand_image_paths(images)
    protected = [p for p in images if p.is_dir()] + sorted(dataset_folders(files))
    check_output_folder(out, protected)
    for item in images:  # a film named on the command line must be read: checked before writing
        if item.is_file():
            decode_image(item)
    result = segment_files(files, out)
    for error in result.errors.values():
        err_console.print(f"skipped {shown(error)}", highlight=False, soft_wrap=True)
    n = len(result.masks)
    console.print(
        f"{result.found} of {n} film(s) have a plausible two-lung mask ({shown(result.segmenter)})"
    )
    console.print(
        f"Masks, {shown(result.table.name)} and {shown(result.sheet.name)} in {shown(out)}"
    )


@lungs_app.command("train")
def lungs_train(
    txv_masks: Annotated[
        Path,
        typer.Option(
            "--txv-masks",
            help="The torchxrayvision wheel (pip download torchxrayvision --no-deps) or its "
            "semantic_masks_v7labs_lungs.zip.",
        ),
    ],
    kaggle: Annotated[
        Path, typer.Option("--kaggle", help="The Kaggle dataset (with MANIFEST.csv).")
    ] = SHARED / "data" / "chest-xray-covid19-pneumonia",
    adult_extra: Annotated[Path, typer.Option("--adult-extra", help="adult-extra's films.")] = (
        SHARED / "data" / "adult-extra"
    ),
    adult_extra_masks: Annotated[
        Path, typer.Option("--adult-extra-masks", help="adult-extra's NORMAL lung masks.")
    ] = SHARED / "data" / "adult-extra-masks",
    encoder_weights: Annotated[
        Path | None,
        typer.Option("--encoder-weights", help="ImageNet mobilenet_v2 state dict for the encoder."),
    ] = SHARED / "weights" / "mobilenet_v2-imagenet-dequantized.pth",
    out: Annotated[
        Path, typer.Option("--out", help="The weights file to write (its card beside it).")
    ] = Path("runs") / "lungs" / "lungs_unet_mobilenet_v2.pt",
    image_size: Annotated[
        int, typer.Option("--image-size", min=64, max=512, help="The network's input side.")
    ] = 192,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")] = 30,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split and the training.")] = 0,
    no_progress: NoProgressOpt = False,
) -> None:
    """Train the lung segmenter on every film with a lung mask (held-out test masks per source)
    and write its weights and card (Dice per source on the held-out masks)."""
    from cxrlab.data.lung_masks import collect_masks, load_pairs
    from cxrlab.fileio import check_writable
    from cxrlab.lungs.card import write_card
    from cxrlab.lungs.network import save_segmenter
    from cxrlab.training.lungs import DICE_SIZE, SegmenterRecipe, train_segmenter

    if encoder_weights is not None and not encoder_weights.is_file():
        raise CxrlabError(f"--encoder-weights: {encoder_weights}: no such file")
    check_writable(out.parent, "out", out)
    mask_set = collect_masks(kaggle, adult_extra, adult_extra_masks, txv_masks, split_seed=seed)
    items, films, masks = load_pairs(mask_set, DICE_SIZE)
    for reason, count in mask_set.left_out.items():
        console.print(f"left out {count} mask(s): {reason}")
    command = "cxrlab " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "cxrlab lungs train"
    network, meta = train_segmenter(
        items,
        films,
        masks,
        SegmenterRecipe(input_size=image_size, epochs=epochs, seed=seed),
        encoder_weights=encoder_weights,
        command=command,
        log=console.print,
    )
    save_segmenter(network, meta, out)
    card = write_card(meta, out, mask_set.left_out)
    for source, scores in meta.test.items():
        console.print(
            f"{shown(source)}: Dice {scores.dice:.4f} ± {scores.dice_std:.4f} "
            f"on {scores.films} held-out masks"
        )
    console.print(f"Weights written to {shown(out)}, card {shown(card)}")
