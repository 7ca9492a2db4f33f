"""A PNG of generated samples next to held-out data."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

from epochal.io import atomic_write_bytes


def plot_samples(samples: np.ndarray, data: np.ndarray, path: Path, title: str = "") -> Path | None:
    """Scatter the first two dimensions of ``data`` and ``samples`` side by side, on shared axes.

    Drawn on an Agg canvas of its own, without pyplot, so it neither needs a display
    nor changes matplotlib's global backend. matplotlib is optional (the ``plots``
    extra): without it the figure is skipped with one warning line and None returned.
    """
    if samples.ndim != 2 or data.ndim != 2 or samples.shape[1] != data.shape[1]:
        raise ValueError(f"plot_samples needs (n, dim) arrays of one dim, got {samples.shape} and {data.shape}")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print(f"warning: {Path(path).name} not drawn: matplotlib is missing; pip install 'epochal[plots]'",
              file=sys.stderr)
        return None
    if samples.shape[1] == 1:
        samples, data = (np.hstack([a, np.zeros_like(a)]) for a in (samples, data))
    figure = Figure(figsize=(9, 4.5))
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, sharex=True, sharey=True)
    for axes, points, name, colour in ((left, data, "data (test)", "tab:blue"), (right, samples, "samples", "tab:orange")):
        axes.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5, color=colour, linewidths=0)
        axes.set_title(f"{name}, n = {len(points)}")
        axes.set_aspect("equal", adjustable="box")
    if data.shape[1] > 2:
        title = f"{title} (first 2 of {data.shape[1]} dims)".strip()
    figure.suptitle(title)
    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    return path
