"""Item 7: the edge half without torch (issue 12): install size, import, memory, latency.

- venv: the device install of docs/edge-device.md (``INSTALL``: a venv made
  ``--without-pip``, filled by this venv's pip with ``--no-compile``; the
  project's sources copied, no build leftovers) against the research venv
  running this benchmark, in MB on disk (file sizes), measured after the edge's
  first run (which writes the bytecode of what it imports). Also: the size
  right after the install, the files the edge really loads (the floor of any
  install of these wheels) and the same install with ``onnxruntime==SMALL_ORT``.
- import: the ONNX edge's imports (numpy, onnxruntime, ``collabvit.onnx_edge``,
  ``collabvit.client``) in a fresh process of the edge venv, median of 5, against
  the torch edge's (``collabvit.models``, ``collabvit.pipeline``, ``collabvit.client``).
- RSS: peak resident memory (``ru_maxrss``) of a process that loads the edge
  model and decides one real photo: ONNX Runtime in the edge venv against torch.
- latency: ms per image at batch 1 (a photo at a time, as a camera sends them),
  ONNX Runtime fp32 and int8 against the torch probe (``forward_with_scores``),
  the same number of threads, timed in rotation in this process. The decisions
  of both ONNX models are compared with the torch edge's on the timed photos.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collabvit.client.runtimes import OnnxRuntimeEdge, TorchEdge
from collabvit.commands.export import export
from collabvit.data import discover
from collabvit.models import forward_with_scores
from collabvit.onnx_edge import load_edge
from collabvit.pipeline import OperatingPoint

from .common import REPO, Context, Result, median, ratio_of_medians, short_name, time_interleaved

__all__ = ["GOALS", "run"]

GOALS = {"venv_mb": 150.0, "import_s": 0.5, "rss_mb": 250.0, "latency": 1.1}
EDGE_SEED = 0
# the device install, as docs/edge-device.md and the README show it (pip >= 22.3 outside)
INSTALL = (
    "python3 -m venv --without-pip edge-env && python3 -m pip --python edge-env/bin/python "
    "install --no-compile 'collabvit[edge]'"
)
SMALL_ORT = "1.28.0"  # the newest onnxruntime whose x86-64 wheel keeps the install <= 150 MB

IMPORT_ONNX = "import numpy, onnxruntime, collabvit.onnx_edge, collabvit.client"
IMPORT_TORCH = "import collabvit.models, collabvit.pipeline, collabvit.client"
TIMED = "import time\nt = time.perf_counter()\n{imports}\nprint(time.perf_counter() - t)\n"

# NOTE: VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a child of this
# (torch-loaded) process would report the parent's size
PEAK = """
def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""
DECIDE = """
import sys
from collabvit.onnx_edge import EdgePoint, decide, load_edge, pixels_from_file
edge = load_edge(sys.argv[1], threads=1)
pixels = pixels_from_file(sys.argv[2], edge.metadata)[None]
decide(edge, pixels, [0], EdgePoint())
"""
# the files of the venv a decision really loads: imported modules and mapped shared libraries
USED = (
    DECIDE
    + """
import collabvit.client
from pathlib import Path
prefix = Path(sys.prefix).resolve()
files = {Path(m.__file__).resolve() for m in list(sys.modules.values())
         if getattr(m, "__file__", None)}
files |= {Path(line.split()[5]).resolve() for line in open("/proc/self/maps")
          if len(line.split()) >= 6 and line.split()[5].startswith("/")}
print(sum(f.stat().st_size for f in files if f.is_relative_to(prefix) and f.is_file()) / 1e6)
"""
)
RSS_ONNX = PEAK + DECIDE + "print(peak_kib())\n"
RSS_TORCH = (
    PEAK
    + """
import sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from collabvit.data import Sample, load_image, preprocess
from collabvit.models import load_model
from collabvit.pipeline import OperatingPoint, decide_on_edge
edge = load_model(sys.argv[1], random_init=0)
pixels = preprocess(load_image(Path(sys.argv[2]), 3), edge.preprocessing)[None]
decide_on_edge(edge, pixels, [Sample(0, "x", None, -1)], OperatingPoint())
print(peak_kib())
"""
)


def _megabytes(folder: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                total += path.stat().st_size
    return total / 1e6


def _largest(site: Path, count: int = 8) -> dict[str, float]:
    """The biggest entries of a site-packages folder, MB."""
    sizes = {
        p.name: _megabytes(p) if p.is_dir() else p.stat().st_size / 1e6 for p in site.iterdir()
    }
    return {k: round(v, 1) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:count]}


def _edge_venv(folder: Path, *pins: str) -> Path:
    """``INSTALL`` into folder/venv (the project's copied sources, plus pins); its python."""
    source = folder.parent / "source"
    if not source.exists():
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
        shutil.copytree(REPO / "src", source / "src", ignore=ignore)
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            shutil.copy(REPO / name, source / name)
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile"]
    subprocess.run([*pip, f"{source}[edge]", *pins], check=True, timeout=900, capture_output=True)
    return python


def _env() -> dict[str, str]:
    # a device writes bytecode (Python's default): this environment may say otherwise
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _output(python: Path | str, code: str, *args: str) -> float:
    done = subprocess.run(
        [str(python), "-c", code, *args], check=True, capture_output=True, text=True, env=_env()
    )
    return float(done.stdout.strip().splitlines()[-1])


def _measure_install(python: Path, model: Path, photo: str) -> dict[str, Any]:
    """Sizes of a fresh edge venv: installed, after the first import and decision, used."""
    venv = python.parents[1]
    installed = _megabytes(venv)
    cold_s = _output(python, TIMED.format(imports=IMPORT_ONNX))  # compiles, writes bytecode
    used = _output(python, USED, str(model), photo)  # the first decision, bytecode written
    after = _megabytes(venv)
    site = next((venv / "lib").glob("*/site-packages"))
    return {
        "mb": round(after, 1),
        "installed_mb": round(installed, 1),
        "bytecode_mb": round(after - installed, 1),
        "loaded_mb": round(used, 1),
        "first_import_s": round(cold_s, 3),
        "largest_mb": _largest(site),
        "versions": dict(
            p.name[: -len(".dist-info")].split("-", 1) for p in site.glob("*.dist-info")
        ),
    }


def _import_seconds(python: Path | str, imports: str, runs: int = 5) -> float:
    return median([_output(python, TIMED.format(imports=imports)) for _ in range(runs)])


def _decisions(batches: Any, n: int) -> np.ndarray:
    """One row per image: (prediction, sent, keep mask ...) for comparing runtimes."""
    rows = []
    for b in batches:
        for j in range(len(b.samples)):
            mask = b.masks.get(j)
            keep = np.zeros(n, bool) if mask is None else mask
            rows.append(np.concatenate([[b.edge_pred[j], mask is not None], keep]))
    return np.asarray(rows)


def _latency(ctx: Context, edge: Any, files: dict[str, Path], photos: list[Any]) -> dict:
    threads = torch.get_num_threads()
    fp32 = load_edge(files["fp32"], threads=threads)
    int8 = load_edge(files["int8"], threads=threads)
    point = OperatingPoint()
    torch_batches = list(TorchEdge(edge, point).batches(photos, 1, None))
    pixels = [b.pixels for b in torch_batches]  # (1, C, H, W) uint8 each

    def torch_case() -> None:
        for p in pixels:
            x = edge.normalise(torch.from_numpy(p).to(ctx.device))
            forward_with_scores(edge, x, ("mean",))

    cases = {
        "torch-fp32": torch_case,
        "onnx-fp32": lambda: [fp32.forward(p) for p in pixels],
        "onnx-int8": lambda: [int8.forward(p) for p in pixels],
    }
    with torch.inference_mode():
        t = time_interleaved(ctx, cases, ctx.sizes.edge_repeats, label="onnx")
    n = edge.num_patches
    want = _decisions(torch_batches, n)
    agree = {
        name: float(
            (_decisions(OnnxRuntimeEdge(m, point).batches(photos, 1, None), n) == want)
            .all(1)
            .mean()
        )
        for name, m in (("fp32", fp32), ("int8", int8))
    }
    med = t.medians()
    return {
        "threads": threads,
        "images": len(pixels),
        "ms_per_image": {k: round(1000 * v / len(pixels), 2) for k, v in med.items()},
        "ratio_fp32": ratio_of_medians(t, "onnx-fp32", "torch-fp32"),
        "ratio_int8": ratio_of_medians(t, "onnx-int8", "torch-fp32"),
        "ratio_fp32_wall": ratio_of_medians(t, "onnx-fp32", "torch-fp32", "wall"),
        "decisions_agree": agree,
        "timings": t.to_dict(),
    }


def _row(ctx: Context, name: str, figure: str, measured: str, goal: str, **kw: Any) -> Result:
    return Result(name, figure, measured, goal, command=ctx.command("onnx"), **kw)


def _venv_row(ctx: Context, install: dict[str, Any], small: dict[str, Any]) -> Result:
    research_mb = _megabytes(Path(sys.prefix))
    mb = install["mb"]
    return _row(
        ctx,
        "onnx-venv",
        "Edge install size: the device install of docs/edge-device.md vs the research venv",
        f"{mb:.0f} MB (research {research_mb:,.0f} MB; onnxruntime=={SMALL_ORT}: "
        f"{small['mb']:.0f} MB)",
        f"<= {GOALS['venv_mb']:g} MB",
        met=mb <= GOALS["venv_mb"],
        ratio=mb / research_mb,
        details={
            "install": INSTALL,
            "edge": install,
            f"edge_onnxruntime_{SMALL_ORT}": small,
            "research_mb": round(research_mb, 1),
        },
        notes=[
            f"File sizes of the whole venv after its first decision: {INSTALL}. Right after "
            f"the install {install['installed_mb']:.0f} MB; the first run writes "
            f"{install['bytecode_mb']:.1f} MB of bytecode; the files a decision loads "
            f"(modules and shared libraries) are {install['loaded_mb']:.0f} MB of it. "
            f"With onnxruntime=={SMALL_ORT} pinned: {small['mb']:.0f} MB."
        ],
    )


def _install_rows(ctx: Context, python: Path | None, venvs: list[dict[str, Any]]) -> list[Result]:
    edge_python: Path | str = python or sys.executable
    onnx_s = _import_seconds(edge_python, IMPORT_ONNX)
    torch_s = _import_seconds(sys.executable, IMPORT_TORCH)
    rows = [_venv_row(ctx, *venvs)] if venvs else []
    where = "the edge venv" if python else "this venv (no edge venv in this run)"
    rows.append(
        _row(
            ctx,
            "onnx-import",
            "Import time: the ONNX edge (numpy, onnxruntime, onnx_edge, client) vs the torch edge",
            f"{onnx_s:.2f} s (torch edge {torch_s:.2f} s)",
            f"<= {GOALS['import_s']:g} s",
            met=onnx_s <= GOALS["import_s"],
            ratio=onnx_s / torch_s,
            details={
                "onnx_s": round(onnx_s, 3),
                "torch_s": round(torch_s, 3),
                "where": where,
                "first_import_s": venvs[0]["first_import_s"] if venvs else None,
            },
            notes=[
                f"Median of 5 fresh processes, the import statements only, in {where}"
                + (
                    f"; the very first import (compiling the bytecode that --no-compile "
                    f"left out) took {venvs[0]['first_import_s']:.2f} s."
                    if venvs
                    else "."
                )
            ],
        )
    )
    return rows


def _rss_row(ctx: Context, onnx_mb: float, torch_mb: float) -> Result:
    return _row(
        ctx,
        "onnx-rss",
        f"Peak RSS deciding one photo: ONNX vs torch edge ({short_name(ctx.sizes.edge_model)})",
        f"{onnx_mb:.0f} MB (torch {torch_mb:.0f} MB)",
        f"<= {GOALS['rss_mb']:g} MB",
        met=onnx_mb <= GOALS["rss_mb"],
        ratio=onnx_mb / torch_mb,
        details={"onnx_mb": round(onnx_mb, 1), "torch_mb": round(torch_mb, 1)},
        notes=["Peak RSS (VmHWM) of a fresh process that loads the model and decides one photo."],
    )


def _latency_row(ctx: Context, lat: dict[str, Any]) -> Result:
    ms, agree = lat["ms_per_image"], lat["decisions_agree"]
    return _row(
        ctx,
        "onnx-latency",
        "ms per image (batch 1): ONNX Runtime fp32 / int8 vs torch fp32 "
        f"({short_name(ctx.sizes.edge_model)})",
        f"fp32 {lat['ratio_fp32']:.2f}x, int8 {lat['ratio_int8']:.2f}x "
        f"({ms['onnx-fp32']:.1f} / {ms['onnx-int8']:.1f} vs {ms['torch-fp32']:.1f} ms)",
        f"<= {GOALS['latency']:g}x torch fp32",
        met=lat["ratio_fp32"] <= GOALS["latency"],
        ratio=lat["ratio_fp32"],
        details=lat,
        notes=[
            f"{lat['threads']} thread(s) each. Decisions equal to the torch edge's on "
            f"{agree['fp32']:.0%} (fp32) and {agree['int8']:.0%} (int8) of the "
            f"{lat['images']} timed photos."
        ],
    )


def run(ctx: Context) -> list[Result]:
    sizes = ctx.sizes
    edge = ctx.model(sizes.edge_model, EDGE_SEED)
    photos, _ = discover(ctx.data_dir / "images", ctx.data_dir / "labels.csv", sizes.onnx_images)
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        folder = Path(tmp)
        files = {"fp32": folder / "fp32.onnx", "int8": folder / "int8.onnx"}
        export(edge, files["fp32"])
        export(edge, files["int8"], quantize="int8")
        photo = str(photos[0].path)
        python, venvs = None, []
        if sizes.onnx_venv:
            ctx.log(f"[onnx] the device install: {INSTALL}; and with onnxruntime=={SMALL_ORT}")
            python = _edge_venv(folder / "edge")
            venvs.append(_measure_install(python, files["fp32"], photo))
            small = _edge_venv(folder / "small", f"onnxruntime=={SMALL_ORT}")
            venvs.append(_measure_install(small, files["fp32"], photo))
        rows = _install_rows(ctx, python, venvs)
        rss_onnx = _output(python or sys.executable, RSS_ONNX, str(files["fp32"]), photo)
        rss_torch = _output(sys.executable, RSS_TORCH, sizes.edge_model, photo)
        rows.append(_rss_row(ctx, rss_onnx / 1024, rss_torch / 1024))  # KiB -> MB
        rows.append(_latency_row(ctx, _latency(ctx, edge, files, photos)))
    return rows
