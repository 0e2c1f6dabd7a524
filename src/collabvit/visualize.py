"""Per-image panels in the style of the paper's Figs. 3-6: the compute half.

For one image: the preprocessed input, the edge model's patch-importance
heat-map, the patches the selection rule keeps (the rest greyed out) and the
predictions (class names) of the edge model and of the server on the kept
patches. Optionally (Figs. 5-6) the server's own mean-attention map and the
same number of patches picked by it.

:func:`visualize_image` runs the models on one image file (Algorithm 1's
steps for one image) and hands the arrays to
:func:`collabvit.report.panels.render_panel`, which only draws (re-exported
here with :class:`~collabvit.report.panels.PanelText`).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .attention import get_score
from .data import load_image, preprocess
from .errors import ConfigError, DataError
from .gating import get_measure, transmit_mask, uncertainty
from .models import LoadedModel, forward_subset, forward_with_scores
from .pipeline import OperatingPoint, check_pair
from .report.panels import PanelText, render_panel
from .selection import get_rule, select_patches, top_k

__all__ = [
    "PanelText",
    "output_names",
    "read_class_names",
    "read_labels",
    "render_panel",
    "visualize_image",
]

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


def _top1(logits: torch.Tensor) -> tuple[int, float]:
    p = logits.double().softmax(-1)[0]
    i = int(p.argmax())
    return i, float(p[i])


def _name(names: Sequence[str] | None, index: int) -> str:
    if names and 0 <= index < len(names):
        return f"'{names[index]}' ({index})"
    return f"class {index}"


def _gate_text(point: OperatingPoint, value: float) -> str:
    """Eq. 11 for one image, in words: the statistic, the side of eta, the decision."""
    measure = get_measure(point.measure)
    if not measure.gates:
        return "no gate: sent to the server"
    sent = bool(transmit_mask([value], point.measure, point.eta)[0])
    ops = {True: ">=", False: "<"} if measure.high_transmits else {True: "<=", False: ">"}
    where = "sent to the server" if sent else "kept on the edge"
    return f"{point.measure} {value:.3f} {ops[sent]} eta {point.eta:g}: {where}"


def _title(file: str, point: OperatingPoint, names: Sequence[str] | None, label: int | None) -> str:
    rule = get_rule(point.rule)
    value_text = f"{int(point.threshold)}" if rule.count else f"{point.threshold:g}"
    rule_text = f"{rule.label} {rule.parameter} = {value_text}" if rule.parameter else rule.label
    title = f"{file} — {rule_text}"
    if label is not None and label >= 0:
        title += f" — true class {_name(names, label)}"
    return title


def _server_side(
    server: LoadedModel,
    x: torch.Tensor,
    keep: Any,
    names: Sequence[str] | None,
    compare_server: bool,
    score: str,
) -> tuple[str, Any, Any]:
    """The server's line (on the kept patches and on the full image) and, for Figs. 5-6,
    its own attention score (the edge's ``score``) and the same number of patches chosen by it."""
    n, k = keep.shape[1], int(keep.sum())
    xs = server.normalise(x.to(server.device))
    out = forward_subset(server, xs, torch.from_numpy(keep).to(server.device))
    s_idx, s_p = _top1(out)
    full, sc = forward_with_scores(server, xs, (score,) if compare_server else ())
    f_idx, f_p = _top1(full)
    line = (
        f"server {server.name} on {k}/{n} patches: {_name(names, s_idx)} {100 * s_p:.1f}%"
        f" | on the full image: {_name(names, f_idx)} {100 * f_p:.1f}%"
    )
    if not compare_server:
        return line, None, None
    return line, sc[score][0], top_k(sc[score], k)[0]


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
    image: Image.Image | None = None,
    box: tuple[int, int, int, int] | None = None,
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
        image: the image itself (``path`` then only names it), e.g. a built-in test image.
        box: the object's box ``(x0, y0, x1, y1)`` in ``image`` pixels, drawn on every
            panel (scaled to the model's input).
    """
    point = point or OperatingPoint()
    prep = edge.preprocessing
    if image is None:
        image = load_image(Path(path), prep.channels)
        if image is None:
            raise DataError(f"{path} is not a readable image")
    elif image.mode != ("RGB" if prep.channels == 3 else "L"):
        image = image.convert("RGB" if prep.channels == 3 else "L")
    pixels = preprocess(image, prep)  # (C, H, W) uint8
    if box is not None:
        sx, sy = pixels.shape[2] / image.width, pixels.shape[1] / image.height
        box = (round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy))
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
    gate = _gate_text(point, float(value[0]))
    edge_line = f"edge {edge.name}: {_name(names, e_idx)} {100 * e_p:.1f}% | {gate}"
    server_line = server_scores = server_keep = None
    if server is not None:
        check_pair(edge, server)
        server_line, server_scores, server_keep = _server_side(
            server, x, keep, names, compare_server, point.score
        )
    elif compare_server:
        raise ConfigError("--compare-server needs --server")
    title = _title(Path(path).name, point, names, label)
    note = None
    score_label = get_score(point.score).label or point.score
    if server_scores is not None:
        note = f"server selection: the same number of patches by the server's own {score_label}"
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
        box=box,
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
