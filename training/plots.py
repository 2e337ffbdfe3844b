"""Figures people would rather look at than read: training curves here, and the one way every figure of posformer
(attention maps, the position-encoding study) is written to a PNG."""

import io
from collections.abc import Mapping
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..modeling.atomic_io import atomic_write_bytes
from .run_folder import read_metrics

# metrics.jsonl keys drawn by `plot_training_curves`, with their legend labels.
LOSS_SERIES = {"train_loss": "training", "eval_loss": "validation"}
SCORE_SERIES = {"eval_bleu": "BLEU", "eval_chrf": "chrF"}


def write_png(figure: Figure, path: Path) -> Path:
    """Render `figure` (a matplotlib `Figure`, no pyplot state involved) to the PNG `path`, written atomically."""
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return atomic_write_bytes(Path(path), buffer.getvalue())


def _plot_series(axes: Axes, records: list[dict], labels: Mapping[str, str], ylabel: str, title: str) -> None:
    """One line per key of `labels` that the records contain, against `step`; dots where points are sparse."""
    for key, label in labels.items():
        points = [(record["step"], record[key]) for record in records if record.get(key) is not None]
        if points:
            steps, values = zip(*points, strict=True)
            axes.plot(steps, values, label=label, marker="o" if len(points) <= 30 else None, markersize=4)
    axes.set(xlabel="step", ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend()
    else:
        axes.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=axes.transAxes, color="gray")


def training_curves_figure(records: list[dict], title: str) -> Figure:
    """Two panels: training and validation loss vs step; validation BLEU and chrF vs step."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    loss_axes, score_axes = figure.subplots(1, 2)
    _plot_series(loss_axes, records, LOSS_SERIES, "loss", "Loss")
    _plot_series(score_axes, records, SCORE_SERIES, "score (0-100)", "Validation scores")
    figure.suptitle(title)
    return figure


def plot_training_curves(metrics_jsonl: Path, out_png: Path, *, title: str | None = None) -> Path:
    """Draw the curves of a metrics log (`run_folder.read_metrics`) to a PNG, written atomically; return `out_png`.

    Training records look like `{"step": 10, "train_loss": 3.2, "learning_rate": 1e-4}`, evaluation records like
    `{"step": 50, "eval_loss": 3.0, "eval_bleu": 1.2, "eval_chrf": 20.1}`; other keys are ignored. The title defaults to
    "Training curves: <the folder holding the log>" (the run).
    """
    metrics_jsonl = Path(metrics_jsonl)
    title = title or f"Training curves: {metrics_jsonl.resolve().parent.name}"
    return write_png(training_curves_figure(read_metrics(metrics_jsonl), title), out_png)
