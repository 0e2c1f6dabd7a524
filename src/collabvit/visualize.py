"""Per-image panels in the style of the paper's Figs. 3-6.

For one image: the preprocessed input, the edge model's patch-importance
heat-map, the patches the selection rule keeps (the rest greyed out) and the
predictions (class names) of the edge model and of the server on the kept
patches. Optionally (Figs. 5-6) the server's own mean-attention map and the
same number of patches picked by it.

:func:`render_panel` only draws (arrays in, PNG out); :func:`visualize_image`
runs the models on one image file and calls it. matplotlib is imported when a
panel is drawn, through its object-oriented API on the Agg canvas.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from .data import load_image, preprocess
from .errors import ConfigError, DataError
from .gating import get_measure, transmit_mask, uncertainty
from .models import LoadedModel, forward_subset, forward_with_scores
from .pipeline import OperatingPoint, check_pair
from .selection import get_rule, select_patches, top_k

__all__ = ["PanelText", "read_class_names", "read_labels", "render_panel", "visualize_image"]

logger = logging.getLogger(__name__)


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file (one per line) or a TSV with ``index`` and ``name`` columns.

    For names such as ``"tench, Tinca tinca"`` the first comma-separated part is kept.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read class names {p}: {exc.strerror}") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ConfigError(f"class names file {p} is empty")
    header = [h.strip().lower() for h in lines[0].split("\t")]
    if "\t" in lines[0] and "index" in header and "name" in header:
        rows = list(csv.DictReader(lines, delimiter="\t"))
        names: dict[int, str] = {}
        for line, row in enumerate(rows, start=2):
            try:
                index = int(row.get("index") or row.get("Index") or "")
            except ValueError:
                raise ConfigError(f"{p} line {line}: index is not an integer") from None
            names[index] = (row.get("name") or row.get("Name") or "").split(",")[0].strip()
        size = max(names) + 1
        return [names.get(i, str(i)) for i in range(size)]
    return [ln.split(",")[0].strip() for ln in lines]


def read_labels(path: str | Path) -> dict[str, int]:
    """``file -> label`` from a labels CSV (``file,label`` columns, as ``--labels``)."""
    p = Path(path)
    try:
        with open(p, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"file", "label"} <= set(reader.fieldnames):
                raise ConfigError(f"labels file {p} needs 'file' and 'label' columns")
            return {row["file"]: int(row["label"]) for row in reader}
    except OSError as exc:
        raise ConfigError(f"cannot read labels file {p}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"labels file {p}: a label is not an integer") from None


@dataclass(frozen=True)
class PanelText:
    """The words of a panel: title and one line per model."""

    title: str
    edge: str
    server: str | None = None
    note: str | None = None


def _as_hwc(pixels: Any) -> npt.NDArray[np.uint8]:
    array = pixels.detach().cpu().numpy() if isinstance(pixels, torch.Tensor) else pixels
    array = np.asarray(array)
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
) -> Path:
    """Draw one image's panel and save it as PNG (or PDF, by suffix).

    Args:
        pixels: (C, H, W) uint8 preprocessed image.
        scores: (N,) edge patch scores, row-major.
        keep_mask: (N,) bool, the patches sent to the server.
        patch_size: patch side P (N = (H/P) * (W/P)).
        text: title and prediction lines.
        out_path: where to write.
        server_scores, server_keep_mask: the server's own scores and selection
            (Figs. 5-6), drawn as two more panels when given.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = _as_hwc(pixels)
    h, w = image.shape[:2]
    if h % patch_size or w % patch_size:
        raise ConfigError(f"image {h}x{w} is not a whole number of {patch_size}-pixel patches")
    grid = (h // patch_size, w // patch_size)
    n = grid[0] * grid[1]

    def vec(v: Any, dtype: Any) -> npt.NDArray[Any]:
        a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        a = a.reshape(-1).astype(dtype)
        if a.size != n:
            raise ConfigError(f"expected {n} patch values, got {a.size}")
        return a

    s = vec(scores, np.float64)
    keep = vec(keep_mask, bool)
    extra = server_scores is not None
    ncols = 5 if extra else 3
    fig = Figure(figsize=(3.3 * ncols + 0.6, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    _show(axes[0], image)
    axes[0].set_title(f"input ({w}x{h})", fontsize=9)

    grey = image.mean(axis=2, keepdims=True).astype(np.uint8)

    def heat(ax: Any, values: npt.NDArray[np.float64], title: str) -> None:
        _show(ax, grey)
        im = ax.imshow(_patch_map(values, grid, patch_size), cmap="inferno", alpha=0.65)
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        bar.set_label(f"{score_name} score (image sums to 1)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
        ax.set_title(title, fontsize=9)

    def kept(ax: Any, mask: npt.NDArray[np.bool_], title: str) -> None:
        _show(ax, _grey_out(image, _patch_map(mask, grid, patch_size)))
        ax.set_title(title, fontsize=9)

    heat(axes[1], s, f"edge {score_name}")
    kept(axes[2], keep, f"edge selection: {int(keep.sum())}/{n} patches")
    if extra:
        ss = vec(server_scores, np.float64)
        heat(axes[3], ss, f"server {score_name}")
        if server_keep_mask is not None:
            sk = vec(server_keep_mask, bool)
            kept(axes[4], sk, f"server selection: {int(sk.sum())}/{n} patches")
        else:
            axes[4].axis("off")
    lines = [text.title, text.edge]
    if text.server:
        lines.append(text.server)
    if text.note:
        lines.append(text.note)
    fig.suptitle("\n".join(lines), fontsize=9)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight", dpi=dpi)
    return out


def _top1(logits: torch.Tensor) -> tuple[int, float]:
    p = logits.double().softmax(-1)[0]
    i = int(p.argmax())
    return i, float(p[i])


def _name(names: Sequence[str] | None, index: int) -> str:
    if names and 0 <= index < len(names):
        return f"'{names[index]}' ({index})"
    return f"class {index}"


@torch.no_grad()
def visualize_image(
    path: str | Path,
    edge: LoadedModel,
    server: LoadedModel | None,
    out_path: str | Path,
    point: OperatingPoint | None = None,
    class_names: Sequence[str] | None = None,
    label: int | None = None,
    compare_server: bool = False,
    image_id: int = 0,
) -> Path:
    """Run the edge (and server) on one image file and draw its panel.

    Args:
        path: an image file.
        edge, server: the models (server optional).
        out_path: the PNG to write.
        point: score, rule, threshold, gate (default: mean, attention-sum 0.97,
            min-entropy 0.8); the gate decision is reported, the server's
            prediction is shown either way.
        class_names: names by class index (default: the edge model's).
        label: the true class, when known.
        compare_server: also draw the server's own attention map and the same
            number of patches chosen by it (Figs. 5-6).
        image_id: the image's id for the seeded ``random`` rule.
    """
    point = point or OperatingPoint()
    prep = edge.preprocessing
    image = load_image(Path(path), prep.channels)
    if image is None:
        raise DataError(f"{path} is not a readable image")
    pixels = preprocess(image, prep)  # (C, H, W) uint8
    names = list(class_names) if class_names else edge.class_names
    x = pixels[None].to(edge.device)
    logits, scores = forward_with_scores(edge, edge.normalise(x), (point.score,))
    s = scores[point.score]
    sel = select_patches(
        s, point.rule, point.threshold, point.include_crossing, point.seed, torch.tensor([image_id])
    )
    keep = sel.keep_mask
    e_idx, e_p = _top1(logits)
    value = uncertainty(logits, point.measure)
    sent = bool(transmit_mask(value, point.measure, point.eta)[0])
    n = edge.num_patches
    k = int(keep.sum())
    if point.measure == "none":
        gate = "no gate: sent to the server"
    else:
        high = get_measure(point.measure).high_transmits
        ops = {True: ">=", False: "<"} if high else {True: "<=", False: ">"}
        op = ops[sent]
        where = "sent to the server" if sent else "kept on the edge"
        gate = f"{point.measure} {float(value[0]):.3f} {op} eta {point.eta:g}: {where}"
    edge_line = f"edge {edge.name}: {_name(names, e_idx)} {100 * e_p:.1f}% | {gate}"
    server_line = None
    server_scores = server_keep = None
    if server is not None:
        check_pair(edge, server)
        xs = server.normalise(x.to(server.device))
        out = forward_subset(server, xs, torch.from_numpy(keep).to(server.device))
        s_idx, s_p = _top1(out)
        full, sc = forward_with_scores(server, xs, ("mean",))
        f_idx, f_p = _top1(full)
        server_line = (
            f"server {server.name} on {k}/{n} patches: {_name(names, s_idx)} {100 * s_p:.1f}%"
            f" | on the full image: {_name(names, f_idx)} {100 * f_p:.1f}%"
        )
        if compare_server:
            server_scores = sc["mean"][0]
            server_keep = top_k(sc["mean"], k)[0]
    elif compare_server:
        raise ConfigError("--compare-server needs --server")
    rule = get_rule(point.rule)
    value_text = f"{int(point.threshold)}" if rule.count else f"{point.threshold:g}"
    rule_text = f"{rule.label} {rule.parameter} = {value_text}" if rule.parameter else rule.label
    title = f"{Path(path).name} — {rule_text}"
    if label is not None and label >= 0:
        title += f" — true class {_name(names, label)}"
    note = None
    if server_scores is not None:
        note = "server selection: the same number of patches by the server's own mean attention"
    score_label = {"mean": "mean attention"}.get(point.score, point.score)
    return render_panel(
        pixels,
        s[0],
        keep[0],
        edge.patch_size,
        PanelText(title, edge_line, server_line, note),
        out_path,
        server_scores=server_scores,
        server_keep_mask=server_keep,
        score_name=score_label,
    )


def output_names(paths: Sequence[str | Path]) -> list[str]:
    """Unique PNG names for a list of image paths (stem, then stem-2, stem-3...)."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = Path(p).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        out.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png")
    return out
