"""``cxrlab audit``: find what is wrong with a dataset, without touching it.

Reads every file once (:mod:`cxrlab.data.scan`), then reports unreadable, empty, non-image
and too-small files, exact and near duplicates (:mod:`cxrlab.data.duplicates`), copies that
leak across splits or carry two labels, and format shortcuts (:mod:`cxrlab.data.shortcuts`).

It writes, into its output folder only:

* ``manifest.csv``: one row per file: ``status`` (``ok``, ``warning`` or ``excluded``),
  ``reasons`` and the measured properties. Later commands read it (``--manifest``) to skip
  excluded files.
* ``audit.json`` and ``audit.md``: the summary, every duplicate group, the shortcut check
  (an :class:`~cxrlab.data.audit_records.AuditReport`; ``audit.md`` is rendered from it).
* ``duplicates.png`` and ``shortcuts.png``.

Exclusion policy: unreadable and too-small files are excluded. Blank (constant) films, films
over :data:`LARGE_SIDE` px a side and files a symbolic link reads from outside the dataset are
kept and flagged (``warning``). Of a group of copies, the
copy in the most final split is kept (test over val over train), so that leaked copies are
removed from *training* and the test set stays as published; within one split the first
copy is kept. Copies with different labels are excluded from train/val (which label is
right is unknown) and flagged in test.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxrlab.data.audit_records import (
    AuditConfig,
    AuditReport,
    AuditSummary,
    DuplicateGroup,
    Problem,
    ShortcutReport,
    SourceCheck,
)
from cxrlab.data.discover import SPLIT_ORDER, DatasetIndex, natural_key
from cxrlab.data.duplicates import exact_pairs, group_pairs, near_pairs
from cxrlab.data.scan import ImageRecord, scan_dataset
from cxrlab.data.shortcuts import FEATURES, shortcut_check
from cxrlab.data.sources import source_check
from cxrlab.errors import CxrlabError
from cxrlab.fileio import (
    atomic_open,
    atomic_write_text,
    csv_dict_reader,
    csv_dict_writer,
    markdown_escape,
    markdown_table,
    open_text,
)

MANIFEST_NAME = "manifest.csv"
BLANK_STD = 1.0  # a film whose pixels (0..255) vary less than this shows nothing
LARGE_SIDE = 5000  # px a side: beyond the largest chest X-ray detectors (about 4300 px)
MANIFEST_FIELDS = (
    "path", "split", "class", "source", "status", "reasons", "duplicate_group", "file_format",
    "mode", "width", "height", "file_size", "mean", "std", "border_fraction", "pixel_hash",
)  # fmt: skip


@dataclass
class AuditResult:
    """Everything the audit found; ``statuses``/``reasons`` are aligned with ``records``."""

    root: str
    classes: list[str]
    config: AuditConfig
    records: list[ImageRecord]
    statuses: list[str]
    reasons: list[list[str]]
    groups: list[DuplicateGroup]
    group_of: dict[int, int]
    shortcut: ShortcutReport | None
    summary: AuditSummary
    path_of: Callable[[str], Path]  # a film's key -> its file (DatasetIndex.path_of)
    sources: SourceCheck | None = None  # a set of several sources

    def problems(self) -> list[Problem]:
        """The files that are not ``ok``, in record order."""
        return [
            Problem(path=r.path, status=s, reasons=why)
            for r, s, why in zip(self.records, self.statuses, self.reasons)
            if s != "ok"
        ]

    def report(self) -> AuditReport:
        """What ``audit.json`` holds (everything but the per-file measurements)."""
        return AuditReport(
            root=self.root,
            classes=self.classes,
            config=self.config,
            summary=self.summary,
            shortcut=self.shortcut,
            duplicate_groups=self.groups,
            problems=self.problems(),
            sources=self.sources,
        )


def _split_rank(split: str) -> int:
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else -1


def _resolve_groups(
    records: list[ImageRecord],
    classes: list[str],
    groups: list[list[int]],
    similarity: dict[tuple[int, int], float],
    statuses: list[str],
    reasons: list[list[str]],
) -> list[DuplicateGroup]:
    resolved = []
    for group in groups:
        group = sorted(
            group, key=lambda i: (-_split_rank(records[i].split), natural_key(records[i].path))
        )
        labels = {records[i].label for i in group}
        splits = {records[i].split for i in group}
        sims = [similarity[(a, b)] for (a, b) in similarity if a in group and b in group]
        conflict, cross = len(labels) > 1, len(splits) > 1
        cross_source = len({records[i].source for i in group}) > 1
        keeper = group[0]
        keeper_split = records[keeper].split
        for i in group:
            record = records[i]
            others = ", ".join(
                f"{records[j].path} ({classes[records[j].label]})" for j in group if j != i
            )
            if conflict:
                reasons[i].append(f"label_conflict: same image as {others}")
                if record.split != "test":
                    statuses[i] = "excluded"
                elif statuses[i] == "ok":
                    statuses[i] = "warning"
            if i == keeper:
                continue
            if cross_source and record.source != records[keeper].source:
                reasons[i].append(
                    f"cross_source: the film {records[keeper].path} of source "
                    f"{records[keeper].source} (a film two sources share)"
                )
            if record.split != keeper_split:
                reasons[i].append(f"leakage: copy of {keeper_split} file {records[keeper].path}")
            else:
                kind = (
                    "duplicate"
                    if record.pixel_hash == records[keeper].pixel_hash
                    else "near_duplicate"
                )
                reasons[i].append(f"{kind}: copy of {records[keeper].path}")
            statuses[i] = "excluded"
        resolved.append(
            DuplicateGroup(
                members=[records[i].path for i in group],
                splits=[records[i].split for i in group],
                classes=[classes[records[i].label] for i in group],
                exact=len({records[i].pixel_hash for i in group}) == 1,
                min_similarity=float(min(sims)) if sims else 1.0,
                cross_split=cross,
                label_conflict=conflict,
                sources=[records[i].source for i in group],
                cross_source=cross_source,
            )
        )
    return resolved


def _warnings(root: Path, record: ImageRecord) -> list[str]:
    """Why a readable film deserves a look (status ``warning``, kept): blank, far larger than
    any chest detector gives, or read through a symbolic link from outside the dataset."""
    found = []
    if record.std < BLANK_STD:
        found.append(
            f"blank: almost one value throughout (mean {record.mean:.1f}, std {record.std:.2f})"
        )
    if max(record.width, record.height) > LARGE_SIDE:
        found.append(
            f"very_large: {record.width}x{record.height}, over {LARGE_SIDE} px a side (chest "
            "detectors give up to about 4300); shrunk to the training size, it may be a scan "
            "of something else"
        )
    target = Path(os.path.realpath(root / record.path))  # (Path.resolve raises on a loop)
    if not target.is_relative_to(os.path.realpath(root)):
        found.append(f"outside: a symbolic link read from outside the dataset ({target})")
    return found


def audit_records(
    index: DatasetIndex, records: list[ImageRecord], config: AuditConfig
) -> AuditResult:
    """Judge scanned records: statuses, reasons, duplicate groups and the shortcut check."""
    statuses = ["ok"] * len(records)
    reasons: list[list[str]] = [[] for _ in records]
    for i, record in enumerate(records):
        if not record.ok:
            statuses[i] = "excluded"
            reasons[i].append(f"unreadable: {record.status}: {record.error}")
        elif min(record.width, record.height) < config.min_size:
            statuses[i] = "excluded"
            reasons[i].append(
                f"too_small: {record.width}x{record.height} below {config.min_size} px"
            )
        if flags := _warnings(index.root, record):
            statuses[i] = "warning" if statuses[i] == "ok" else statuses[i]
            reasons[i].extend(flags)
    pairs = exact_pairs(records) + near_pairs(records, config.near_threshold)
    similarity = {(p.first, p.second): p.similarity for p in pairs}
    groups_idx = group_pairs(len(records), pairs)
    groups = _resolve_groups(records, index.classes, groups_idx, similarity, statuses, reasons)
    group_of = {i: g for g, members in enumerate(groups_idx) for i in members}

    kept = [r for r, status in zip(records, statuses) if status != "excluded"]
    train = [r for r in kept if r.split == "train"]
    test = [r for r in kept if r.split == "test"]
    shortcut = shortcut_check(train, index.classes, test, folds=config.folds, seed=config.seed)
    sources = None
    if index.is_multi_source:
        sources = source_check(
            records,
            [status != "excluded" for status in statuses],
            index.classes,
            index.source_roots,
            shortcut.cv_balanced_accuracy if shortcut else None,
            folds=config.folds,
            seed=config.seed,
        )
    return AuditResult(
        root=str(index.root),
        classes=index.classes,
        config=config,
        records=records,
        statuses=statuses,
        reasons=reasons,
        groups=groups,
        group_of=group_of,
        shortcut=shortcut,
        summary=summarize(records, statuses, reasons, groups, shortcut),
        path_of=index.path_of,
        sources=sources,
    )


def summarize(
    records: list[ImageRecord],
    statuses: list[str],
    reasons: list[list[str]],
    groups: list[DuplicateGroup],
    shortcut: ShortcutReport | None,
) -> AuditSummary:
    """Counts a person reads first (``statuses`` and ``reasons`` aligned with ``records``)."""
    unreadable: dict[str, int] = {}
    for record in records:
        if not record.ok:
            unreadable[record.status] = unreadable.get(record.status, 0) + 1

    def count(prefix: str) -> int:
        return sum(any(r.startswith(prefix) for r in why) for why in reasons)

    exact = [g for g in groups if g.exact]
    near = [g for g in groups if not g.exact]
    leaking = [g for g in groups if g.cross_split]
    kept = {
        split: sum(1 for r, s in zip(records, statuses) if r.split == split and s != "excluded")
        for split in SPLIT_ORDER
        if any(r.split == split for r in records)
    }
    return AuditSummary(
        files=len(records),
        status={s: statuses.count(s) for s in ("ok", "warning", "excluded")},
        kept_per_split=kept,
        unreadable=unreadable,
        too_small=count("too_small"),
        exact_duplicate_groups=len(exact),
        exact_duplicate_files=sum(len(g.members) for g in exact),
        near_duplicate_groups=len(near),
        near_duplicate_files=sum(len(g.members) for g in near),
        leakage_groups=len(leaking),
        leakage_files=sum(len(g.members) for g in leaking),
        label_conflict_groups=sum(g.label_conflict for g in groups),
        excluded_as_duplicate=count("duplicate") + count("near_duplicate"),
        excluded_as_leakage=count("leakage"),
        shortcut_level=shortcut.level if shortcut else "not run",
    )


def write_manifest(result: AuditResult, path: Path) -> None:
    """One CSV row per file; later commands read ``path`` and ``status``."""
    with atomic_open(path, newline="") as handle:
        writer = csv_dict_writer(handle, MANIFEST_FIELDS)
        writer.writeheader()
        for i, record in enumerate(result.records):
            writer.writerow(
                {
                    "path": record.path,
                    "split": record.split,
                    "class": result.classes[record.label],
                    "source": record.source,
                    "status": result.statuses[i],
                    "reasons": " | ".join(result.reasons[i]),
                    "duplicate_group": result.group_of.get(i, ""),
                    "file_format": record.file_format,
                    "mode": record.mode,
                    "width": record.width,
                    "height": record.height,
                    "file_size": record.file_size,
                    "mean": f"{record.mean:.2f}",
                    "std": f"{record.std:.2f}",
                    "border_fraction": f"{record.border_fraction:.4f}",
                    "pixel_hash": record.pixel_hash,
                }
            )


def read_manifest(path: str | Path) -> dict[str, str]:
    """``{relative path: status}`` from a manifest written by :func:`write_manifest`."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise CxrlabError(f"{path}: manifest not found (run 'cxrlab audit DATA --out DIR' first)")
    with open_text(path) as handle:
        reader = csv_dict_reader(handle)
        if not reader.fieldnames or not {"path", "status"} <= set(reader.fieldnames):
            raise CxrlabError(f"{path}: not a cxrlab manifest (needs 'path' and 'status' columns)")
        return {row["path"]: row["status"] for row in reader}


def write_audit_files(result: AuditResult, out_dir: Path) -> None:
    """audit.json, audit.md, manifest.csv and the two plots."""
    from cxrlab.data.audit_plots import plot_duplicates, plot_shortcuts
    from cxrlab.plotting import missing_glyphs_quiet

    out_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(result, out_dir / MANIFEST_NAME)
    report = result.report()
    atomic_write_text(out_dir / "audit.json", report.to_json())
    with missing_glyphs_quiet():  # file names in scripts the font lacks: boxes, no warnings
        plot_duplicates(result.groups, result.path_of, out_dir / "duplicates.png")
        plot_shortcuts(result.shortcut, out_dir / "shortcuts.png")
    atomic_write_text(out_dir / "audit.md", markdown_report(report))


def markdown_report(report: AuditReport) -> str:
    """``audit.md`` (from what ``audit.json`` holds): the summary, flagged duplicate groups, the
    shortcut check and the problem files; every file and class name escaped
    (:func:`~cxrlab.fileio.markdown_escape`)."""
    md = markdown_escape
    s, config = report.summary, report.config
    lines = [
        f"# Data audit: {md(report.root)}",
        "",
        f"{s.files} files; status: {s.status}; kept per split: {s.kept_per_split}.",
        "",
        *markdown_table(
            ["check", "count"],
            [
                ["unreadable (by kind)", f"{s.unreadable or 0}"],
                [f"too small (< {config.min_size} px)", f"{s.too_small}"],
                [
                    "exact duplicate groups (files)",
                    f"{s.exact_duplicate_groups} ({s.exact_duplicate_files})",
                ],
                [
                    f"near-duplicate groups (files), NCC >= {config.near_threshold}",
                    f"{s.near_duplicate_groups} ({s.near_duplicate_files})",
                ],
                [
                    "**groups leaking across splits (files)**",
                    f"**{s.leakage_groups} ({s.leakage_files})**",
                ],
                ["groups with conflicting labels", f"{s.label_conflict_groups}"],
            ],
        ),
        "",
    ]
    groups = report.duplicate_groups
    flagged = [g for g in groups if g.cross_split or g.label_conflict or not g.exact]
    if flagged:
        lines += [
            "## Leakage, label conflicts and near duplicates",
            "",
        ]
        lines += markdown_table(
            ["files", "splits", "classes", "min NCC"],
            [
                [
                    "<br>".join(map(md, g.members)),
                    ", ".join(g.splits),
                    md(", ".join(g.classes)),
                    f"{g.min_similarity:.4f}",
                ]
                for g in flagged
            ],
        )
        lines.append("")
    lines += ["![duplicates](duplicates.png)", ""]
    sc = report.shortcut
    if sc:
        lines += [
            "## Shortcut check",
            "",
            f"A random forest on format features only ({', '.join(FEATURES)}), "
            f"{sc.folds}-fold CV on {sc.n_train} train images:",
            "",
            f"- accuracy **{sc.cv_accuracy:.1%}** vs majority-class rate {sc.majority_rate:.1%}",
            f"- balanced accuracy **{sc.cv_balanced_accuracy:.1%}** "
            f"vs chance {sc.chance_balanced:.1%}",
            "- recall per class: "
            + md(", ".join(f"{k} {v:.0%}" for k, v in sc.per_class_recall.items())),
        ]
        if sc.test_accuracy is not None:
            lines.append(
                f"- trained on train, scored on test: accuracy {sc.test_accuracy:.1%}, "
                f"balanced {sc.test_balanced_accuracy:.1%}"
            )
        lines += [f"- level: **{sc.level}**", ""] + [f"- {md(line)}" for line in sc.explanation]
        lines += ["", "![shortcuts](shortcuts.png)", ""]
    if report.sources is not None:
        lines += sources_markdown(report.sources, report.classes)
    problems = report.problems
    if problems:
        lines += [
            "## Files excluded or flagged",
            "",
        ]
        rows = [[md(p.path), p.status, md("; ".join(p.reasons))] for p in problems[:500]]
        if len(problems) > 500:
            rows.append([f"... {len(problems) - 500} more in manifest.csv", "", ""])
        lines += markdown_table(["file", "status", "reasons"], rows)
    return "\n".join(lines) + "\n"


def sources_markdown(check: SourceCheck, classes: list[str]) -> list[str]:
    """The audit's Sources section: per source, files per class, formats, sizes and intensities;
    then whether the source can name the class."""
    md = markdown_escape
    rows = []
    for name, p in check.sources.items():
        rows.append(
            [
                md(name),
                *(str(p.kept.get(c, 0)) for c in classes),
                md(", ".join(f"{k} {n}" for k, n in p.formats.items())),
                f"{p.median_width:.0f}x{p.median_height:.0f}",
                f"{p.square_share:.0%}",
                f"{p.mean_intensity:.0f} / {p.mean_contrast:.0f}",
                f"{p.border_fraction:.2f}",
            ]
        )
    fmt = lambda x: "n/a" if x is None else f"{x:.1%}"  # noqa: E731
    single = ", ".join(f"{n} ({c})" for n, c in check.single_class.items())
    lines = [
        "## Sources",
        "",
        "Films kept per class (all splits), and what the readable files look like:",
        "",
        *markdown_table(
            [
                "source",
                *map(md, classes),
                "formats",
                "median size",
                "square",
                "mean intensity / contrast",
                "border",
            ],  # fmt: skip
            rows,
        ),
        "",
        f"- source and class: Cramér's V **{check.cramers_v:.2f}** (0 independent, 1 the source "
        "names the class)",
        f"- the format-only classifier tells the source: balanced accuracy "
        f"**{fmt(check.format_predicts_source)}** (chance {check.source_chance:.1%})",
        f"- guessing the class from format only: {fmt(check.format_only)}; "
        f"with the source as a feature: {fmt(check.source_and_format)}",
        f"- single-class sources: **{md(single) or 'none'}**",
        f"- level: **{check.level}**",
        "",
        *(f"- {md(line)}" for line in check.explanation),
        "",
    ]
    return lines


def run_audit(
    index: DatasetIndex,
    out_dir: str | Path,
    config: AuditConfig | None = None,
) -> AuditResult:
    """Scan, judge and write the audit of ``index`` into ``out_dir``."""
    config = config or AuditConfig()
    records = scan_dataset(index, workers=config.workers)
    result = audit_records(index, records, config)
    write_audit_files(result, Path(out_dir))
    return result
