"""The papers' metric tables from per-run result files (`RUN/eval/<task>.json`, format "i2i-eval" version 1).

Rows are groups of runs (by default the `method` field); each cell is mean ± std (sample std, ddof=1) over the runs of
a group that share the column's `data_frac`. A table is data: a `TableSpec` lists the metric columns (their path in
`metrics`, digits, and which result fields name the network behind the number); tables for new tasks are new specs.

Every cell carries its backbone: in the header when a whole column shares it, otherwise in the cell. Cells computed with
a proxy backbone are marked † and cells computed with random (uncalibrated) weights ‡; footnotes explain both.

    python -m evaluators.tables runs/* --format md          # Table 1 for AFHQ runs, etc.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics as stats
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from i2i.cli import user_errors

FORMAT = "i2i-eval"
VERSION = 1
FORMATS = ("md", "csv", "json")
PROXY_MARK, UNCALIBRATED_MARK = "†", "‡"
BACKBONE_SHORT = {"torchvision": "tv", "pytorch-fid": "pf"}


@dataclass(frozen=True)
class Metric:
    """One column: `path` inside result["metrics"]; `backbone_key`/`calibrated_key` are the result fields naming the
    network behind the number and whether it had official weights (`default_backbone` when the field is absent;
    a missing calibrated field falls back to the run-level `calibrated`)."""

    label: str
    path: tuple[str, ...]
    digits: int = 2
    backbone_key: str = "backbone"
    default_backbone: str | None = None
    calibrated_key: str = "calibrated"


@dataclass(frozen=True)
class TableSpec:
    task: str
    title: str
    metrics: tuple[Metric, ...]
    split_by: str | None = "data_frac"  # one block of columns per value of this result field (None: one block)


def _fid(mode: str) -> Metric:
    return Metric(f"{mode} FID", (mode, "fid"), digits=2)


def _lpips(mode: str) -> Metric:
    return Metric(f"{mode} LPIPS", (mode, "lpips"), digits=4, backbone_key="lpips_backbone", default_backbone="alex",
                  calibrated_key="lpips_calibrated")


def _proxy_metric(mode: str, key: str, label: str, network: str) -> Metric:
    return Metric(f"{mode} {label}", (mode, key), digits=3, backbone_key=network, default_backbone="proxy",
                  calibrated_key=f"{network}_calibrated")


TABLES: dict[str, TableSpec] = {
    "afhq": TableSpec("afhq", "Table 1: AFHQ (StarGAN v2), FID ↓ / LPIPS ↑ / target acc ↑ / content ↑, latent- and "
                              "reference-guided",
                      (_fid("latent"), _lpips("latent"), _proxy_metric("latent", "domain_accuracy", "acc", "classifier"),
                       _proxy_metric("latent", "content", "content", "pose_regressor"),
                       _fid("reference"), _lpips("reference"),
                       _proxy_metric("reference", "domain_accuracy", "acc", "classifier"),
                       _proxy_metric("reference", "content", "content", "pose_regressor"))),
    "nirvis": TableSpec("nirvis", "Table 2: CASIA NIR-VIS 2.0, recognition via generation (%) ↑",
                        (Metric("Rank-1", ("rank1",), backbone_key="recognizer", default_backbone="lightcnn29v2"),
                         Metric("VR@FAR=1%", ("vr_far_1e-2",), backbone_key="recognizer", default_backbone="lightcnn29v2"),
                         Metric("VR@FAR=0.1%", ("vr_far_1e-3",), backbone_key="recognizer",
                                default_backbone="lightcnn29v2"))),
    "cityscapes": TableSpec("cityscapes", "Table 3: Cityscapes (SPADE), mIoU ↑ / accu ↑ / FID ↓",
                            (Metric("mIoU", ("miou",), backbone_key="segmenter", default_backbone="drn_d_105",
                                    calibrated_key="segmenter_calibrated"),
                             Metric("accu", ("accuracy",), backbone_key="segmenter", default_backbone="drn_d_105",
                                    calibrated_key="segmenter_calibrated"),
                             Metric("FID", ("fid",)))),
}


# ----------------------------------------------------------------------------------------------------------------------
# Reading results


def validate_result(result: Any, source: str) -> dict:
    """Checks the i2i-eval header fields; `source` (file or run) names the offender in errors."""
    if not isinstance(result, dict):
        raise ValueError(f"{source}: a result must be a JSON object, got {type(result).__name__}")
    if result.get("format") != FORMAT or result.get("version") != VERSION:
        raise ValueError(f"{source}: not an {FORMAT} v{VERSION} result (format={result.get('format')!r}, "
                         f"version={result.get('version')!r})")
    missing = [k for k in ("task", "method", "metrics", "backbone", "calibrated") if k not in result]
    if missing:
        raise ValueError(f"{source}: result lacks the fields {missing}")
    return result


def load_results(paths: Iterable[str | Path]) -> list[dict]:
    """Result dicts from JSON files and run folders (every i2i-eval file in `RUN/eval/`), each read once."""
    files: dict[Path, None] = {}
    for path in map(Path, paths):
        if path.is_file():
            files[path.resolve()] = None
        elif path.is_dir():
            found = sorted((path / "eval").glob("*.json"))
            found = [f for f in found if _is_result_file(f)]
            if not found:
                raise FileNotFoundError(f"no {FORMAT} result files in '{path / 'eval'}' (expected RUN/eval/<task>.json)")
            files.update((f.resolve(), None) for f in found)
        else:
            raise FileNotFoundError(f"result file or run folder not found: '{path}'")
    results = []
    for file in files:
        try:
            result = json.loads(file.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"'{file}' is not valid JSON: {error}") from error
        results.append(validate_result(result, f"'{file}'"))
    return results


def _is_result_file(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return False


# ----------------------------------------------------------------------------------------------------------------------
# Aggregation


@dataclass(frozen=True)
class Cell:
    mean: float | None
    std: float | None
    n: int
    backbone: str | None
    calibrated: bool

    @property
    def mark(self) -> str:
        if self.n == 0:
            return ""
        if self.backbone == "proxy":
            return PROXY_MARK
        return "" if self.calibrated else UNCALIBRATED_MARK

    def text(self, digits: int, with_backbone: bool) -> str:
        if self.n == 0:
            return "–"
        value = f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.std is not None else "")
        tag = f" ({BACKBONE_SHORT.get(self.backbone, self.backbone)})" if with_backbone else ""
        return value + tag + self.mark


@dataclass(frozen=True)
class Column:
    split: Any
    metric: Metric

    def header(self, split_by: str | None) -> str:
        if split_by is None:
            return self.metric.label
        return f"{self.metric.label} ({_split_text(split_by, self.split)})"


def _split_text(split_by: str, value: Any) -> str:
    if split_by == "data_frac" and isinstance(value, (int, float)):
        return f"{100 * value:g}%"
    return f"{split_by}={value}"


def _split_order(value: Any) -> tuple:
    """Numbers ascending, then anything else by its text (a run without the field sorts last)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _metric_value(result: dict, metric: Metric, source: str) -> float | None:
    node: Any = result["metrics"]
    for key in metric.path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    if not isinstance(node, (int, float)) or isinstance(node, bool) or not math.isfinite(node):
        raise ValueError(f"{source}: metrics.{'.'.join(metric.path)} is {node!r}, expected a finite number")
    return float(node)


def _cell(results: list[dict], metric: Metric) -> Cell:
    values, backbones, calibrated = [], set(), True
    for result in results:
        source = f"run '{result.get('run', '?')}'"
        value = _metric_value(result, metric, source)
        if value is None:
            continue
        values.append(value)
        backbones.add(result.get(metric.backbone_key, metric.default_backbone))
        calibrated &= bool(result.get(metric.calibrated_key, result["calibrated"]))
    if len(backbones) > 1:
        runs = sorted(str(r.get("run")) for r in results)
        raise ValueError(f"{metric.label}: runs {runs} were scored with different networks {sorted(map(str, backbones))}; "
                         "their numbers cannot be averaged (group or filter them)")
    if not values:
        return Cell(None, None, 0, None, True)
    std = stats.stdev(values) if len(values) > 1 else None
    return Cell(stats.fmean(values), std, len(values), backbones.pop(), calibrated)


@dataclass(frozen=True)
class Table:
    spec: TableSpec
    group_by: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[str, tuple[Cell, ...]], ...]

    def column_backbone(self, index: int) -> str | None:
        """The backbone shared by every filled cell of a column, or None when they differ."""
        backbones = {cells[index].backbone for _, cells in self.rows if cells[index].n}
        return backbones.pop() if len(backbones) == 1 else None


def build_table(results: Sequence[dict], spec: TableSpec, group_by: str = "method") -> Table:
    """Aggregates `results` (all of `spec.task`) into rows by `group_by` and columns by split value x metric."""
    for result in results:
        if group_by not in result:
            raise ValueError(f"run '{result.get('run', '?')}' has no field '{group_by}' to group by")
    splits = sorted({r.get(spec.split_by) for r in results}, key=_split_order) if spec.split_by else [None]
    columns = tuple(Column(split, metric) for split in splits for metric in spec.metrics)
    groups: dict[str, list[dict]] = {}
    for result in results:
        groups.setdefault(str(result[group_by]), []).append(result)
    rows = []
    for name in sorted(groups):
        cells = tuple(_cell([r for r in groups[name] if spec.split_by is None or r.get(spec.split_by) == column.split],
                            column.metric) for column in columns)
        rows.append((name, cells))
    # metrics no run has (e.g. content preservation on data without recorded poses) get no column
    kept = [i for i in range(len(columns)) if any(cells[i].n for _, cells in rows)] or list(range(len(columns)))
    return Table(spec, group_by, tuple(columns[i] for i in kept),
                 tuple((name, tuple(cells[i] for i in kept)) for name, cells in rows))


# ----------------------------------------------------------------------------------------------------------------------
# Rendering


def _footnotes(table: Table) -> list[str]:
    marks = {cell.mark for _, cells in table.rows for cell in cells}
    notes = [f"Mean ± sample std over the runs of each {table.group_by} (no ± for a single run)."]
    used = sorted({c.backbone for _, cells in table.rows for c in cells if c.n} & set(BACKBONE_SHORT))
    if used:
        notes.append("Backbones: " + ", ".join(f"{BACKBONE_SHORT[b]} = {b}" for b in used) + ".")
    if PROXY_MARK in marks:
        notes.append(f"{PROXY_MARK} proxy backbone trained on this data set: comparable only between runs scored with "
                     "the same proxy, not with published numbers.")
    if UNCALIBRATED_MARK in marks:
        notes.append(f"{UNCALIBRATED_MARK} uncalibrated: not computed with the official pretrained weights (random "
                     "weights in tests/demo, or a run scored with a proxy); not comparable with published numbers.")
    return notes


def _markdown(table: Table) -> str:
    headers, digits = [table.group_by], []
    for index, column in enumerate(table.columns):
        shared = table.column_backbone(index)
        tag = f" [{BACKBONE_SHORT.get(shared, shared)}]" if shared else ""
        headers.append(column.header(table.spec.split_by) + tag)
        digits.append((column.metric.digits, shared is None))
    lines = [f"**{table.spec.title}**", "", "| " + " | ".join(headers) + " |",
             "|" + "|".join([":---"] + [":---:"] * len(table.columns)) + "|"]
    for name, cells in table.rows:
        texts = [cell.text(d, with_backbone) for cell, (d, with_backbone) in zip(cells, digits)]
        lines.append("| " + " | ".join([name] + texts) + " |")
    return "\n".join(lines + [""] + _footnotes(table))


def _records(table: Table) -> list[dict]:
    """One record per filled cell (the tidy form behind csv and json)."""
    records = []
    for name, cells in table.rows:
        for column, cell in zip(table.columns, cells):
            if cell.n:
                records.append({"task": table.spec.task, table.group_by: name, table.spec.split_by or "split": column.split,
                                "metric": column.metric.label, "mean": cell.mean, "std": cell.std, "n": cell.n,
                                "backbone": cell.backbone, "calibrated": cell.calibrated, "mark": cell.mark})
    return records


def _csv(table: Table) -> str:
    records = _records(table)
    buffer = io.StringIO()
    fields = ["task", table.group_by, table.spec.split_by or "split", "metric", "mean", "std", "n", "backbone",
              "calibrated", "mark"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def _json(table: Table) -> dict:
    return {"task": table.spec.task, "title": table.spec.title, "group_by": table.group_by, "cells": _records(table),
            "footnotes": _footnotes(table)}


def render_table(results: Sequence[dict], fmt: str = "md", *, group_by: str = "method", task: str | None = None,
                 split_by: str | None = None) -> str:
    """Renders the table of every task present in `results` (or only `task`) as "md", "csv" or "json" text;
    `split_by` overrides the field whose values make the column blocks (default: the spec's, data_frac)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format '{fmt}'; expected one of {FORMATS}")
    if not results:
        raise ValueError("no results to tabulate")
    for index, result in enumerate(results):
        validate_result(result, f"result #{index} (run '{result.get('run', '?') if isinstance(result, dict) else '?'}')")
    tasks = [task] if task is not None else sorted({r["task"] for r in results})
    unknown = [t for t in tasks if t not in TABLES]
    if unknown:
        raise ValueError(f"no table defined for task(s) {unknown}; known tasks: {sorted(TABLES)}")
    specs = {t: TABLES[t] if split_by is None else replace(TABLES[t], split_by=split_by) for t in tasks}
    tables = [build_table([r for r in results if r["task"] == t], specs[t], group_by) for t in tasks]
    tables = [t for t in tables if t.rows]
    if not tables:
        raise ValueError(f"no results for task {task!r}")
    if fmt == "md":
        return "\n\n".join(_markdown(t) for t in tables) + "\n"
    if fmt == "csv":
        return "".join(_csv(t) for t in tables)
    return json.dumps([_json(t) for t in tables], indent=1, ensure_ascii=False) + "\n"


@user_errors(ValueError, FileNotFoundError)
def main(argv: list[str] | None = None, prog: str = "python -m evaluators.tables") -> int:
    parser = argparse.ArgumentParser(prog=prog,
                                     description="Metric tables (mean ± std over seeds) from run result files.")
    parser.add_argument("paths", nargs="+", help="run folders (reads RUN/eval/*.json) or result JSON files")
    parser.add_argument("--format", choices=FORMATS, default="md")
    parser.add_argument("--group-by", default="method", help="result field naming a row (default: method)")
    parser.add_argument("--task", choices=sorted(TABLES), default=None, help="only this task's table")
    parser.add_argument("--output", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    text = render_table(load_results(args.paths), args.format, group_by=args.group_by, task=args.task)
    sys.stdout.write(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
