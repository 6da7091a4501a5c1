"""Sweep report: every job of one or more Hydra multiruns in one table and one plot.

``python -m gmcnn.report MULTIRUN_DIR [--out DIR]`` finds every job directory below MULTIRUN_DIR
(recursively: one sweep or a parent of several; a job directory is one with
``.hydra/overrides.yaml``), reads its ``metrics.json``, overrides and composed config, and writes
to DIR (default MULTIRUN_DIR):

* ``report.csv``: one row per job, every metric;
* ``report.md``: experiment, model, swept overrides, parameters, test metric, epochs, status;
* ``report.png``: test metric against parameter count (log axis), one series per experiment and
  model: GM-CNN against its baselines;
* ``comparison.md``, ``comparison.csv``: one row per experiment, model and setting (the swept
  overrides other than ``seed``): the number of finished runs, the parameters and, for every test
  metric, the mean and the sample standard deviation (n - 1) over the finished runs (the seeds);
* ``comparison_steps.png`` (dynamics): the mean over seeds of each row's test RMSE per roll-out
  step (``test_*_rmse_per_step``), ± one standard deviation shaded, one panel per test set.

The test metric is ``test_acc`` for classification and the ``test_*rmse`` scores (e.g.
``test_future_rmse``, ``test_domain_rmse``) for regression. A job's status is the one its
metrics.json records: ``finished``, ``failed`` (with the error), ``interrupted``; ``summary``
(``summary_only=true``: parameters, no training); ``incomplete`` (no metrics.json: running, killed
or crashed). :func:`summary_table` is the table ``runner.py -m`` ends a sweep with (gmcnn/cli.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from gmcnn.training.rundir import RunFiles

log = logging.getLogger(__name__)

Row = dict[str, Any]
FIRST_COLUMNS = ["job", "experiment", "model", "swept", "num_params", "status", "error"]
FILES = ("report.csv", "report.md", "report.png", "comparison.md", "comparison.csv")
STEP_CURVES = "comparison_steps.png"  # written only for roll-out metrics
REPEAT_KEYS = {"seed"}  # overrides that repeat a setting rather than change it


def find_jobs(root: Path) -> list[Path]:
    """Every run directory (one with ``.hydra/overrides.yaml``) at or below ``root``."""
    return sorted(path.parent.parent for path in root.rglob(RunFiles(root).overrides.name)
                  if RunFiles(path.parent.parent).overrides == path)


def _load_yaml(path: Path) -> Any:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as error:  # a broken file costs its job a column, not the report
        log.warning("cannot read %s: %s", path, error)
        return None


def override_key(override: str) -> str:
    """The key a command-line override sets: ``+model.x=1`` -> ``model.x``."""
    return override.split("=", 1)[0].lstrip("+~")


def _sweep_root(job: Path, stop: Path) -> Path:
    """The directory with the job's multirun.yaml (its sweep), else the job's parent."""
    for parent in [job, *job.parents]:
        if (parent / "multirun.yaml").is_file():
            return parent
        if parent == stop:
            break
    return job.parent


def _swept_keys(sweep: Path, jobs: list[Path]) -> set[str]:
    """Keys given as sweeps on the command line (multirun.yaml), plus any that differ between
    the sweep's jobs."""
    keys: set[str] = set()
    multirun = _load_yaml(sweep / "multirun.yaml") if (sweep / "multirun.yaml").is_file() else None
    task = (((multirun or {}).get("hydra") or {}).get("overrides") or {}).get("task") or []
    if task:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        try:
            parsed = OverridesParser.create().parse_overrides(task)
            keys |= {override_key(o.input_line or "") for o in parsed if o.is_sweep_override()}
        except Exception as error:
            log.warning("cannot parse the overrides in %s: %s", sweep / "multirun.yaml", error)
    per_job = [{override_key(o): o for o in _load_yaml(RunFiles(job).overrides) or []}
               for job in jobs]
    every = {key for overrides in per_job for key in overrides}
    return keys | {key for key in every if len({o.get(key) for o in per_job}) > 1}


def read_job(job: Path, root: Path, swept: set[str], missing: str = "incomplete") -> Row:
    """One job's row: its identity, swept overrides, status and every number in metrics.json
    (``missing``: the status of a job without one)."""
    files = RunFiles(job)
    overrides = _load_yaml(files.overrides) or []
    config = _load_yaml(files.config) or {}
    hydra = _load_yaml(files.hydra) or {}
    choices = ((hydra.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    target = str((config.get("model") or {}).get("_target_", ""))
    metrics_path = files.metrics
    try:
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
        if metrics is not None and not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        metrics = {"status": "failed", "error": f"unreadable metrics.json: {error}"}
    row: Row = {
        "job": str(job.relative_to(root)) if job != root else ".",
        "experiment": (metrics or {}).get("name") or config.get("name") or "",
        "model": choices.get("model") or target.rsplit(".", 1)[-1],
        "swept": " ".join(o for o in overrides if override_key(o) in swept),
        "monitor": ((config.get("trainer") or {}).get("monitor")) or "",
    }
    if metrics is None:
        row.update(status=missing, error="no metrics.json (running, killed or crashed)")
        return row
    row.update({k: v for k, v in metrics.items() if k not in row and k not in ("name", "overrides")})
    if metrics.get("summary_only"):  # a summary_only sweep job: parameter count, no training
        row["status"] = "summary"
    else:
        row["status"] = metrics.get("status") or ("finished" if "epochs_completed" in metrics else "summary")
    row.setdefault("error", "")
    return row


def collect(root: Path, jobs: list[Path] | None = None, missing: str = "incomplete") -> list[Row]:
    """The rows of ``jobs`` (default: every job below ``root``), by experiment, model, size
    (unknown last), job."""
    jobs = find_jobs(root) if jobs is None else jobs
    by_sweep: dict[Path, list[Path]] = defaultdict(list)
    for job in jobs:
        by_sweep[_sweep_root(job, root)].append(job)
    rows = [read_job(job, root, _swept_keys(sweep, members), missing)
            for sweep, members in by_sweep.items() for job in members]

    def order(row: Row) -> tuple[Any, ...]:
        params = _number(row.get("num_params"))
        return row["experiment"], row["model"], params is None, params or 0, row["job"]

    return sorted(rows, key=order)


def metric_columns(rows: list[Row]) -> list[str]:
    """The test metrics present: test_acc (classification), then test_*rmse (regression)."""
    keys = {key for row in rows for key in row if _number(row.get(key)) is not None}
    rmse = sorted((k for k in keys if k.startswith("test_") and k.endswith("rmse")),
                  key=lambda k: (k != "test_future_rmse", k != "test_domain_rmse", k))
    return (["test_acc"] if "test_acc" in keys else []) + rmse


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def write_csv(rows: list[Row], path: Path) -> None:
    extra = sorted({key for row in rows for key in row} - set(FIRST_COLUMNS))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIRST_COLUMNS + extra, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    elif isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:,}"
    else:
        text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def write_markdown(rows: list[Row], path: Path) -> None:
    metrics = metric_columns(rows) or ["test_acc"]
    header = ["experiment", "model", "swept overrides", "parameters", *metrics, "epochs", "status",
              "job"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        status = row["status"] + (f": {row['error']}" if row.get("error") else "")
        cells = [row["experiment"], row["model"], row["swept"], row.get("num_params"),
                 *(row.get(m) for m in metrics), row.get("epochs_completed"), status, row["job"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def summary_table(rows: list[Row], root: Path) -> list[str]:
    """Markdown lines, one row per job in job order: swept overrides, status (with the error),
    the best value of the monitored metric, run directory."""
    monitors = {row["monitor"] for row in rows if row.get("monitor")}
    best = f"best {monitors.pop()}" if len(monitors) == 1 else "best (monitor)"
    lines = ["| job | overrides | status | " + best + " | run directory |", "|---|---|---|---|---|"]

    def number(job: str) -> tuple[Any, ...]:
        return tuple(int(p) if p.isdigit() else p for p in Path(job).parts)

    for row in sorted(rows, key=lambda row: number(row["job"])):
        value = row.get(f"best_{row.get('monitor')}")
        shown = _cell(value) if _number(value) is not None else ""
        if shown and best == "best (monitor)":
            shown = f"{row['monitor']} {shown}"
        status = row["status"] + (f": {row['error']}" if row.get("error") else "")
        cells = [row["job"], row["swept"], status, shown, str(root / row["job"])]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _setting(row: Row) -> str:
    return " ".join(o for o in str(row.get("swept", "")).split() if override_key(o) not in REPEAT_KEYS)


def comparison(rows: list[Row]) -> list[Row]:
    """One row per (experiment, model, setting), the setting being the job's swept overrides
    without those of REPEAT_KEYS: "jobs" (all), "runs" (finished), "seeds", "num_params" (a range
    "a-b" if the runs differ) and ``<metric>_mean``, ``<metric>_std`` (sample standard deviation,
    None for fewer than 2 runs) of every test metric over the finished runs."""
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in rows:
        groups[(row["experiment"], row["model"], _setting(row))].append(row)
    metrics = metric_columns(rows)
    table = []
    for (experiment, model, setting), members in sorted(groups.items()):
        finished = [row for row in members if row["status"] == "finished"]
        params = sorted({int(p) for p in (_number(row.get("num_params")) for row in members) if p is not None})
        seeds = [o.split("=", 1)[1] for row in finished for o in str(row.get("swept", "")).split()
                 if override_key(o) in REPEAT_KEYS]
        shown_params = (params[0] if len(params) == 1 else f"{params[0]}-{params[-1]}") if params else None
        entry: Row = {"experiment": experiment, "model": model, "setting": setting, "jobs": len(members),
                      "runs": len(finished), "seeds": " ".join(seeds), "num_params": shown_params}
        for metric in metrics:
            values = [row[metric] for row in finished if _number(row.get(metric)) is not None]
            entry[f"{metric}_mean"] = statistics.fmean(values) if values else None
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
        table.append(entry)
    return table


def write_comparison(rows: list[Row], out: Path) -> list[str]:
    """Write :func:`comparison` to ``out/comparison.csv`` and ``out/comparison.md`` (cells "mean ±
    std"); returns the Markdown lines."""
    table = comparison(rows)
    metrics = metric_columns(rows)
    with (out / "comparison.csv").open("w", newline="") as handle:
        fields = ["experiment", "model", "setting", "num_params", "jobs", "runs", "seeds"]
        writer = csv.DictWriter(handle, fieldnames=fields + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
        writer.writeheader()
        writer.writerows(table)
    header = ["experiment", "model", "setting", "parameters", "runs", *(f"{m} (mean ± std)" for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in table:
        cells = [_cell(entry[k]) for k in ("experiment", "model", "setting", "num_params")]
        cells.append(f"{entry['runs']} of {entry['jobs']}" if entry["runs"] != entry["jobs"] else str(entry["runs"]))
        for metric in metrics:
            mean, std = entry[f"{metric}_mean"], entry[f"{metric}_std"]
            cells.append("" if mean is None else _cell(mean) + ("" if std is None else f" ± {_cell(std)}"))
        lines.append("| " + " | ".join(cells) + " |")
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    write_step_curves(rows, out / STEP_CURVES)
    return lines


def write_step_curves(rows: list[Row], path: Path) -> bool:
    """The mean (± std shaded) per-step test curves of every (experiment, model, setting) over its
    finished runs, one panel per ``*_per_step`` metric; False, writing nothing, if there are none."""
    curves: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for key, values in row.items():
            if key.endswith("_per_step") and isinstance(values, list) and values and row["status"] == "finished":
                label = f"{row['experiment']}: {row['model']} {_setting(row)}".strip()
                curves[key][label].append(values)
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gmcnn.training.diagnostics import finish_step_figure

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.5), squeeze=False)
    panels = sorted(curves, key=lambda k: (k != "test_future_rmse_per_step", k))  # as metric_columns
    for axis, metric in zip(axes[0], panels):
        groups = curves[metric]
        for label, runs in sorted(groups.items()):
            length = min(len(run) for run in runs)
            values = np.array([run[:length] for run in runs])
            steps = np.arange(1, length + 1)
            mean = values.mean(0)
            line, = axis.plot(steps, mean, marker="o", markersize=3, label=f"{label} ({len(runs)} runs)")
            if len(runs) > 1:
                std = values.std(0, ddof=1)
                axis.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    finish_step_figure(fig, list(axes[0]), [metric.removesuffix("_per_step") for metric in panels], path)
    return True


def write_plot(rows: list[Row], path: Path) -> None:
    """Test metrics against parameters, one panel per metric, one series per experiment and
    model; every job a marker, the line through the mean at each parameter count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[tuple[str, str], list[tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(list))
    for row in rows:
        params = _number(row.get("num_params"))
        for metric in metric_columns([row]) if row["status"] == "finished" and params else []:
            series[metric][(row["experiment"], row["model"])].append((params, row[metric]))
    panels = sorted(series, key=lambda m: m != "test_acc") or ["test_acc"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for axis, metric in zip(axes[0], panels):
        for (experiment, model), points in sorted(series[metric].items()):
            by_size: dict[float, list[float]] = defaultdict(list)
            for params, value in points:
                by_size[params].append(value)
            sizes = sorted(by_size)
            line, = axis.plot(sizes, [sum(by_size[s]) / len(by_size[s]) for s in sizes],
                              label=f"{experiment}: {model}")
            axis.scatter(*zip(*points), color=line.get_color(), s=18)
        if not series[metric]:
            axis.text(0.5, 0.5, "no finished jobs", ha="center", va="center",
                      transform=axis.transAxes)
        else:
            axis.set_xscale("log")
            axis.legend(fontsize=8)
        axis.set_xlabel("parameters")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(root: Path, out: Path | None = None) -> list[Row]:
    """Write report.csv, report.md, report.png and comparison.{md,csv} for the jobs below ``root``
    to ``out``."""
    out = out or root
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(root)
    log.info("%d jobs under %s", len(rows), root)
    write_csv(rows, out / "report.csv")
    write_markdown(rows, out / "report.md")
    write_plot(rows, out / "report.png")
    write_comparison(rows, out)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gmcnn.report",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("multirun_dir", type=Path, help="a sweep directory or a parent of several")
    parser.add_argument("--out", type=Path, help="where to write the report (default: there)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if not args.multirun_dir.is_dir():
        parser.error(f"{args.multirun_dir} is not a directory")
    if not find_jobs(args.multirun_dir):
        parser.error(f"no runs (directories with .hydra/overrides.yaml) under {args.multirun_dir}")
    rows = report(args.multirun_dir, args.out)
    counts = Counter(row["status"] for row in rows)
    out = args.out or args.multirun_dir
    print(f"{len(rows)} jobs (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f"): {', '.join(str(out / name) for name in FILES)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
