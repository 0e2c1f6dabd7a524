"""Per-image panels in the style of the paper's Figs. 3-6: the drawing half.

For one image: the preprocessed input, the edge model's patch-importance
heat-map, the patches the selection rule keeps (the rest greyed out) and the
prediction lines; optionally (Figs. 5-6) the server's own score map and its
selection. :func:`render_panel` takes arrays and writes a PNG (or PDF);
running the models is :func:`collabvit.visualize.visualize_image`. matplotlib
is imported when a panel is drawn, through its object-oriented API on the Agg
canvas.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError

__all__ = ["PanelText", "render_panel"]


@dataclass(frozen=True)
class PanelText:
    """The words of a panel: title and one line per model."""

    title: str
    edge: str
    server: str | None = None
    note: str | None = None


def _host(x: Any) -> npt.NDArray[Any]:
    """A numpy array of an array or a (CPU or GPU) tensor, without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_hwc(pixels: Any) -> npt.NDArray[np.uint8]:
    array = _host(pixels)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[0] not in (1, 3):
        raise ConfigError("pixels must be a (C, H, W) uint8 array with C = 1 or 3")
    return np.ascontiguousarray(array.transpose(1, 2, 0))


def _patch_map(values: npt.NDArray[Any], grid: tuple[int, int], patch: int) -> npt.NDArray[Any]:
    """(N,) per-patch values -> (H, W) image, each patch a constant block."""
    return np.kron(values.reshape(grid), np.ones((patch, patch), dtype=values.dtype))


def _grey_out(image: npt.NDArray[np.uint8], keep: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint8]:
    out = image.astype(np.float32)
    faded = 0.12 * out + 0.88 * 200.0
    out = np.where(keep[:, :, None], out, faded)
    return out.clip(0, 255).astype(np.uint8)


def _show(ax: Any, image: npt.NDArray[np.uint8]) -> None:
    if image.shape[2] == 1:
        ax.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_box(ax: Any, box: tuple[int, int, int, int]) -> None:
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = box  # pixel edges: pixel i spans i - 0.5 .. i + 0.5 in imshow
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.2))


class _Panel:
    """One figure of 3 (or 5) axes for one image."""

    def __init__(self, image: npt.NDArray[np.uint8], patch: int, ncols: int, score: str) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        h, w = image.shape[:2]
        if h % patch or w % patch:
            raise ConfigError(f"image {h}x{w} is not a whole number of {patch}-pixel patches")
        self.image = image
        self.patch = patch
        self.grid = (h // patch, w // patch)
        self.n = self.grid[0] * self.grid[1]
        self.score = score
        self.fig = Figure(figsize=(3.3 * ncols + 0.6, 4.4), layout="constrained")
        FigureCanvasAgg(self.fig)
        self.axes = self.fig.subplots(1, ncols)
        self.grey = image.mean(axis=2, keepdims=True).astype(np.uint8)

    def vector(self, v: Any, dtype: Any) -> npt.NDArray[Any]:
        a = _host(v).reshape(-1).astype(dtype)
        if a.size != self.n:
            raise ConfigError(f"expected {self.n} patch values, got {a.size}")
        return a

    def heat(self, ax: Any, values: npt.NDArray[np.float64], title: str) -> None:
        _show(ax, self.grey)
        im = ax.imshow(_patch_map(values, self.grid, self.patch), cmap="inferno", alpha=0.65)
        bar = self.fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        bar.set_label(f"{self.score} score (image sums to 1)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
        ax.set_title(title, fontsize=9)

    def kept(self, ax: Any, mask: npt.NDArray[np.bool_], title: str) -> None:
        _show(ax, _grey_out(self.image, _patch_map(mask, self.grid, self.patch)))
        ax.set_title(title, fontsize=9)


def render_panel(
    pixels: Any,
    scores: Any,
    keep_mask: Any,
    patch_size: int,
    text: PanelText,
    out_path: str | Path,
    server_scores: Any | None = None,
    server_keep_mask: Any | None = None,
    score_name: str = "mean attention",
    dpi: int = 130,
    box: tuple[int, int, int, int] | None = None,
) -> Path:
    """Draw one image's panel and save it as PNG (or PDF, by suffix).

    Args:
        pixels: (C, H, W) uint8 preprocessed image (array or tensor).
        scores: (N,) edge patch scores, row-major.
        keep_mask: (N,) bool, the patches sent to the server.
        patch_size: patch side P (N = (H/P) * (W/P)).
        text: title and prediction lines.
        out_path: where to write.
        server_scores, server_keep_mask: the server's own scores and selection
            (Figs. 5-6), drawn as two more panels when given.
        score_name: how the colour bars name the score.
        box: the object's box ``(x0, y0, x1, y1)`` in pixels (exclusive ends), drawn
            on every image panel.
    """
    image = _as_hwc(pixels)
    extra = server_scores is not None
    panel = _Panel(image, patch_size, 5 if extra else 3, score_name)
    s = panel.vector(scores, np.float64)
    keep = panel.vector(keep_mask, bool)
    axes = panel.axes
    h, w = image.shape[:2]
    _show(axes[0], image)
    axes[0].set_title(f"input ({w}x{h})", fontsize=9)
    panel.heat(axes[1], s, f"edge {score_name}")
    panel.kept(axes[2], keep, f"edge selection: {int(keep.sum())}/{panel.n} patches")
    if extra:
        panel.heat(axes[3], panel.vector(server_scores, np.float64), f"server {score_name}")
        if server_keep_mask is not None:
            sk = panel.vector(server_keep_mask, bool)
            panel.kept(axes[4], sk, f"server selection: {int(sk.sum())}/{panel.n} patches")
        else:
            axes[4].axis("off")
    if box is not None:
        for ax in axes:
            _draw_box(ax, box)
    lines = [text.title, text.edge] + [t for t in (text.server, text.note) if t]
    panel.fig.suptitle("\n".join(lines), fontsize=9)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    panel.fig.savefig(out, bbox_inches="tight", dpi=dpi)
    return out
