"""`hfpipe report RUN_DIR...`: what happened in one or several runs, as PNG plots and a one-page summary.

Reads only what a run directory holds (recipe.yaml, metrics.jsonl, metrics.json); imports no torch.
Plots (matplotlib, headless): loss (train solid, evaluation dashed with markers), learning rate, and
every evaluation metric, one colour per run so runs overlay. The summary (summary.md, and summary.html
with the plots inside, one file to share) has the runs, their final metrics, their run time and the
recipe keys that differ between them.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from hfpipe import io
from hfpipe.errors import RunError
from hfpipe.formatting import fmt_compact, fmt_seconds

# Keys every run has its own value for: not what makes runs differ.
NOT_A_DIFFERENCE = ("output_dir", "name")


@dataclass
class Run:
    path: Path
    name: str
    recipe: dict
    summary: dict  # metrics.json ({} while a run is still training)
    train: list[dict] = field(default_factory=list)  # metrics.jsonl "train" records
    evals: list[dict] = field(default_factory=list)  # metrics.jsonl "eval" records


def load_run(path: str | Path) -> Run:
    import yaml

    path = Path(path)
    log = path / io.METRICS_LOG
    if not (path / io.RECIPE).exists():
        raise RunError(f"no {io.RECIPE}: not an hfpipe run directory", file=str(path))
    recipe = yaml.safe_load((path / io.RECIPE).read_text(encoding="utf-8")) or {}
    summary = json.loads((path / io.METRICS).read_text()) if (path / io.METRICS).exists() else {}
    run = Run(path, recipe.get("name") or path.name, recipe, summary)
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []  # nothing logged yet
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # a line cut by a crash mid-write: the rest of the log still tells the story
            raise RunError(f"line {number} is not JSON", file=str(log)) from None
        {"train": run.train, "eval": run.evals}.get(record.get("type"), []).append(record)
    # hfpipe cuts a resumed run's log back to its checkpoint; should a step still come twice (a log
    # concatenated by hand), the later record wins. In step order.
    run.train = sorted({r["step"]: r for r in run.train}.values(), key=lambda r: r["step"])
    run.evals = sorted({r["step"]: r for r in run.evals}.values(), key=lambda r: r["step"])
    return run


def _unique_names(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        if run.name in seen:
            seen[run.name] += 1
            run.name = f"{run.name} ({run.path})"
        else:
            seen[run.name] = 1


def eval_metrics(runs: list[Run]) -> list[str]:
    """Evaluation metrics (without loss) in the order the runs log them."""
    names: dict[str, None] = {}
    for run in runs:
        for record in run.evals:
            for key, value in record.items():
                if key.startswith("eval_") and key != "eval_loss" and isinstance(value, (int, float)):
                    names[key.removeprefix("eval_")] = None
    return list(names)


def figures(runs: list[Run]) -> dict[str, object]:
    """{file name: matplotlib Figure}: loss.png, lr.png and metrics.png (when runs evaluate metrics)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: files, never a window
    import matplotlib.pyplot as plt

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^v<>p*h"  # a shape per run too: runs that evaluate alike stay apart
    out = {}

    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    for i, run in enumerate(runs):
        colour = colours[i % len(colours)]
        if run.train:
            ax.plot(
                [r["step"] for r in run.train],
                [r["loss"] for r in run.train],
                color=colour,
                label=f"{run.name} train",
            )
        points = [r for r in run.evals if "eval_loss" in r]
        if points:
            ax.plot(
                [r["step"] for r in points],
                [r["eval_loss"] for r in points],
                color=colour,
                linestyle="--",
                marker=markers[i % len(markers)],
                label=f"{run.name} eval",
            )
    ax.set(title="Loss", xlabel="step", ylabel="loss")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    out["loss.png"] = fig

    fig, ax = plt.subplots(figsize=(8, 3.5), layout="constrained")
    for i, run in enumerate(runs):
        ax.plot(
            [r["step"] for r in run.train],
            [r["lr"] for r in run.train],
            color=colours[i % len(colours)],
            label=run.name,
        )
    ax.set(title="Learning rate", xlabel="step", ylabel="lr")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    out["lr.png"] = fig

    metrics = eval_metrics(runs)
    if metrics:
        columns = min(len(metrics), 3)
        rows = -(-len(metrics) // columns)
        fig, axes = plt.subplots(
            rows, columns, figsize=(4.2 * columns, 3.2 * rows), layout="constrained", squeeze=False
        )
        for ax, metric in zip(axes.flat, metrics, strict=False):
            for i, run in enumerate(runs):
                points = [r for r in run.evals if f"eval_{metric}" in r]
                if points:
                    ax.plot(
                        [r["step"] for r in points],
                        [r[f"eval_{metric}"] for r in points],
                        color=colours[i % len(colours)],
                        marker=markers[i % len(markers)],
                        markersize=7 - min(i, 3),
                        label=run.name,
                    )
            ax.set(title=f"eval {metric}", xlabel="step")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(metrics) :]:
            ax.set_visible(False)
        axes.flat[0].legend(fontsize="small")
        out["metrics.png"] = fig
    return out


def recipe_diff(runs: list[Run]) -> list[tuple[str, list]]:
    """(dotted key, one value per run) for every recipe key whose value differs between the runs."""
    flat = [io.flatten(run.recipe) for run in runs]
    keys = sorted({k for f in flat for k in f} - set(NOT_A_DIFFERENCE))
    missing = object()
    rows = []
    for key in keys:
        values = [f.get(key, missing) for f in flat]
        if any(v != values[0] for v in values[1:]):
            rows.append((key, ["(not set)" if v is missing else v for v in values]))
    return rows


def summary_rows(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "task", "model", "parameters", "steps", "run time", "training", "best step"]
    rows = []
    for run in runs:
        model = run.recipe.get("model") or {}
        train = run.summary.get("train") or {}
        params = (run.summary.get("parameters") or {}).get("total")
        rows.append(
            [
                run.name,
                str(run.recipe.get("task", "?")),
                str(model.get("name_or_path") or f"{model.get('architecture')} from config"),
                f"{params:,}" if params else "-",
                str(train.get("steps", run.train[-1]["step"] if run.train else "-")),
                fmt_seconds(train.get("runtime_s")),
                fmt_seconds(train.get("train_s")),
                str(run.summary.get("best_step") or "-"),
            ]
        )
    return header, rows


def metric_rows(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    keys: dict[tuple[str, str], None] = {}
    for run in runs:
        for split in ("validation", "test"):
            for name in run.summary.get(split) or {}:
                keys[(split, name)] = None
    header = ["split", "metric", *(run.name for run in runs)]
    rows = [
        [split, name, *(fmt_compact((run.summary.get(split) or {}).get(name, "-")) for run in runs)]
        for split, name in keys
    ]
    return header, rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


def write_report(run_dirs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Plots and summary of the runs in `out_dir`; returns the files written (summary.md last but one,
    summary.html last)."""
    runs = [load_run(path) for path in run_dirs]
    _unique_names(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    import matplotlib.pyplot as plt

    images = {}
    for name, fig in figures(runs).items():
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        images[name] = (out_dir / name).read_bytes()

    title = "hfpipe report: " + ", ".join(run.name for run in runs)
    run_header, run_rows = summary_rows(runs)
    metric_header, metric_rows_ = metric_rows(runs)
    diff = recipe_diff(runs)
    diff_header = ["recipe key", *(run.name for run in runs)]
    diff_rows = [[key, *(fmt_compact(v) for v in values)] for key, values in diff]

    md = [f"# {title}", "", "## Runs", "", *_markdown_table(run_header, run_rows), ""]
    md += ["Run directories: " + ", ".join(f"`{run.path}`" for run in runs), ""]
    md += ["## Final metrics", ""]
    md += _markdown_table(metric_header, metric_rows_) if metric_rows_ else ["(no final metrics yet)"]
    if len(runs) > 1:
        md += ["", "## Recipe differences", ""]
        md += _markdown_table(diff_header, diff_rows) if diff_rows else ["The recipes are the same."]
    md += ["", "## Curves", ""] + [f"![{name}]({name})" for name in images] + [""]
    (out_dir / "summary.md").write_text("\n".join(md), encoding="utf-8")

    def html_table(header, rows) -> str:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}",
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;"
        "text-align:left;font-size:.9em}th{background:#f3f3f3}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><h2>Runs</h2>",
        html_table(run_header, run_rows),
        "<h2>Final metrics</h2>",
        html_table(metric_header, metric_rows_) if metric_rows_ else "<p>(no final metrics yet)</p>",
    ]
    if len(runs) > 1:
        parts += [
            "<h2>Recipe differences</h2>",
            html_table(diff_header, diff_rows) if diff_rows else "<p>The recipes are the same.</p>",
        ]
    parts.append("<h2>Curves</h2>")
    for name, data in images.items():
        encoded = base64.b64encode(data).decode()
        parts.append(f"<p><img alt='{name}' src='data:image/png;base64,{encoded}'></p>")
    parts.append("</body></html>")
    (out_dir / "summary.html").write_text("".join(parts), encoding="utf-8")
    return [out_dir / name for name in images] + [out_dir / "summary.md", out_dir / "summary.html"]
