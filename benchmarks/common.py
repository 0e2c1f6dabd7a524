"""Shared pieces of the benchmark harness: sizes, timing, workloads, machine, report.

Every figure is a ratio of two things measured side by side in one run: the
cases are timed in rotation (A B, then B A, ...), a warm-up round first, and
the ratio is taken between the medians of the repeats. On the CPU the clock is
this process's CPU time (``time.process_time``), which a busy machine (other
jobs on the same cores) inflates far less than wall-clock time; the wall-clock
ratio is recorded next to it. On CUDA the clock is wall-clock time after
``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "PAPER_MEAN_PATCHES",
    "PAPER_SD_PATCHES",
    "REPO",
    "Context",
    "Result",
    "ServerCase",
    "Sizes",
    "Timings",
    "cpu_bf16",
    "cpu_model",
    "imagenet_dir",
    "machine_info",
    "median",
    "ratio_of_medians",
    "short_name",
    "spread_counts",
    "spread_keep_mask",
    "stratified_subset",
    "time_interleaved",
    "write_report",
]

REPO = Path(__file__).resolve().parents[1]

# The attention-sum spread of the paper's operating point: DeiT-Tiny, delta_sum = 0.97
# keeps 147.24 of 196 patches on average (Table II); sd ~25 (our choice, seeded).
PAPER_MEAN_PATCHES = 147.0
PAPER_SD_PATCHES = 25.0
PAPER_NUM_PATCHES = 196


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class ServerCase:
    """One server architecture of items 1-2.

    ``loop_images``: how many of the ``images`` go through the one-at-a-time
    loop (a stratified subset; its time is scaled by ``images / loop_images``);
    0 means all of them.
    """

    model: str
    images: int = 64
    loop_images: int = 0
    repeats: int = 2
    tokens: bool = True  # also time every image at all patches (item 2)


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is; :meth:`full` and :meth:`quick` are the presets."""

    server_cases: tuple[ServerCase, ...]
    warmup_images: int = 2
    edge_model: str = "deit_tiny_patch16_224"
    edge_batch: int = 32
    edge_repeats: int = 8
    sweep_edge: str = "deit_tiny_patch16_224"
    sweep_server: str = "deit_small_patch16_224"
    sweep_images: int = 256
    sweep_eval_points: int = 70  # evaluate runs actually timed (<= 70; extrapolated to 70)
    sweep_batch: int = 64
    serve_edge: str = "deit_tiny_patch16_224"
    serve_server: str = "deit_small_patch16_224"
    serve_images: int = 64
    serve_seconds: float = 20.0
    serve_concurrency: int = 8
    bytes_edge: str = "deit_tiny_patch16_224"
    bytes_images: int = 0  # 0: every image of the data set
    bytes_batch: int = 32
    bytes_workers: int = 4  # threads, each with its own copy of the edge model
    onnx_images: int = 16  # photos timed one at a time (ONNX Runtime vs torch)
    onnx_venv: bool = True  # build a fresh collabvit[edge] venv (pip, from PyPI) to measure
    label: str = "full"

    @classmethod
    def full(cls) -> Sizes:
        """The reported run: about 6 minutes on an idle 2-core CPU, 15 on a busy one."""
        return cls(
            server_cases=(
                ServerCase("deit_small_patch16_224", 64, loop_images=16, repeats=2),
                ServerCase("deit_base_patch16_224", 64, loop_images=8, repeats=1, tokens=False),
            ),
            edge_repeats=10,
            sweep_images=12,
            sweep_eval_points=2,
            serve_images=32,
            serve_seconds=8.0,
        )

    @classmethod
    def quick(cls) -> Sizes:
        """About a minute: the same code paths on small sizes (figures are indicative only)."""
        return cls(
            server_cases=(ServerCase("deit_small_patch16_224", 8, loop_images=4, repeats=1),),
            warmup_images=1,
            edge_batch=8,
            edge_repeats=6,
            sweep_images=4,
            sweep_eval_points=1,
            serve_images=8,
            serve_seconds=4.0,
            serve_concurrency=4,
            bytes_images=32,
            bytes_batch=32,
            onnx_images=4,
            label="quick",
        )


# --------------------------------------------------------------------------- context


@dataclass
class Context:
    """What every benchmark gets: device, clock, sizes, data, and shared state."""

    device: torch.device
    sizes: Sizes
    data_dir: Path
    selected: tuple[str, ...]
    clock: str = "cpu"  # cpu (process CPU time) | wall
    base_command: str = "python -m benchmarks"
    log: Callable[[str], None] = print
    cache: dict[str, Any] = field(default_factory=dict)

    def command(self, name: str) -> str:
        quick = " --quick" if self.sizes.label == "quick" else ""
        dev = "" if self.device.type == "cpu" else f" --device {self.device.type}"
        return f"{self.base_command}{quick}{dev} --only {name}"

    def model(self, name: str, seed: int) -> Any:
        """A randomly initialised model (loaded once per run)."""
        from collabvit.models import load_model

        key = f"model:{name}:{seed}"
        if key not in self.cache:
            self.cache[key] = load_model(name, random_init=seed, device=self.device)
        return self.cache[key]

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@dataclass
class Result:
    """One row of the report."""

    name: str
    figure: str
    measured: str  # the figure as shown in the table
    goal: str
    met: bool | None  # None: no goal, or not measured
    command: str
    ratio: float | None = None
    status: str = "measured"  # measured | not available | failed
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    mode: str = "full"
    measured_at: str = ""


# --------------------------------------------------------------------------- timing


@dataclass
class Timings:
    """Per-case samples of both clocks, warm-up excluded."""

    cpu: dict[str, list[float]]
    wall: dict[str, list[float]]
    clock: str

    def primary(self) -> dict[str, list[float]]:
        return self.cpu if self.clock == "cpu" else self.wall

    def medians(self, clock: str | None = None) -> dict[str, float]:
        src = self.primary() if clock is None else getattr(self, clock)
        return {k: median(v) for k, v in src.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "clock": self.clock,
            "cpu_s": {k: [round(x, 4) for x in v] for k, v in self.cpu.items()},
            "wall_s": {k: [round(x, 4) for x in v] for k, v in self.wall.items()},
        }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio_of_medians(t: Timings, num: str, den: str, clock: str | None = None) -> float:
    m = t.medians(clock)
    return m[num] / m[den] if m[den] > 0 else float("nan")


def time_interleaved(
    ctx: Context,
    cases: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: Mapping[str, Callable[[], object]] | None = None,
    label: str = "",
) -> Timings:
    """Time each case ``repeats`` times in rotation, after one warm-up round.

    The order alternates (A B C, C B A, ...) so that a slow drift in machine
    load falls on every case alike. ``warmup`` (default: the cases themselves)
    runs once, untimed; pass smaller versions of expensive cases.
    """
    names = list(cases)
    for name, fn in (warmup or cases).items():
        fn()
        ctx.sync()
        ctx.log(f"  {label} warm-up {name} done")
    cpu: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            ctx.sync()
            c0, w0 = time.process_time(), time.perf_counter()
            cases[name]()
            ctx.sync()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
            ctx.log(
                f"  {label} repeat {r + 1}/{repeats} {name}: "
                f"cpu {cpu[name][-1]:.2f}s wall {wall[name][-1]:.2f}s"
            )
    return Timings(cpu, wall, ctx.clock)


# --------------------------------------------------------------------------- workloads


def spread_counts(num_images: int, num_patches: int, seed: int = 0) -> list[int]:
    """Patch counts like the attention-sum rule's at delta_sum 0.97, clipped to 1..N.

    A normal with mean 147/196 and sd 25/196 of ``num_patches`` (147 and 25 at
    196 patches), rounded, seeded.
    """
    rng = np.random.default_rng(seed)
    scale = num_patches / PAPER_NUM_PATCHES
    draws = rng.normal(PAPER_MEAN_PATCHES * scale, PAPER_SD_PATCHES * scale, num_images)
    return [int(c) for c in np.clip(np.round(draws), 1, num_patches)]


def spread_keep_mask(counts: Sequence[int], num_patches: int, seed: int = 0) -> torch.Tensor:
    """(B, N) bool: ``counts[i]`` patches of image i at seeded random positions."""
    rng = np.random.default_rng(seed + 1)
    mask = torch.zeros(len(counts), num_patches, dtype=torch.bool)
    for i, c in enumerate(counts):
        mask[i, torch.from_numpy(rng.permutation(num_patches)[:c])] = True
    return mask


def stratified_subset(counts: Sequence[int], k: int) -> list[int]:
    """``k`` positions whose counts spread like all of ``counts`` (every m-th by count)."""
    n = len(counts)
    if k <= 0 or k >= n:
        return list(range(n))
    order = sorted(range(n), key=lambda i: (counts[i], i))
    step = n / k
    return sorted(order[min(n - 1, int(step * j + step / 2))] for j in range(k))


def short_name(model: str) -> str:
    """``deit_small_patch16_224`` -> ``deit_small``; a model JSON path -> its stem."""
    stem = Path(model).stem if model.endswith(".json") else model
    return stem.removesuffix("_patch16_224")


def imagenet_dir() -> Path:
    """The 1,300 shared ImageNet validation photos (``COLLABVIT_SHARED`` overrides)."""
    env = os.environ.get("COLLABVIT_SHARED")
    if env:
        return Path(env) / "data" / "imagenet-val-1300"
    for parent in REPO.parents:  # shared/ beside the checkout or above it
        if (parent / "shared" / "data" / "imagenet-val-1300").is_dir():
            return parent / "shared" / "data" / "imagenet-val-1300"
    return REPO.parent / "shared" / "data" / "imagenet-val-1300"


# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16() -> str:
    """The CPU's bf16 matrix instructions: AMX tiles, AVX-512 BF16 dot products, or none.

    AMX multiplies bf16 matrices several times faster than fp32 FMA; AVX-512
    BF16 (``vdpbf16ps``) at most twice as fast.
    """
    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        return "unknown"
    if "amx_bf16" in flags:
        return "AMX (amx_bf16)"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16, no AMX"
    return "no bf16 instructions"


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def busy_processes(limit: int = 5) -> list[str]:
    """The other processes using the most CPU right now (``ps``), for the report."""
    try:
        out = subprocess.run(
            ["ps", "-eo", "pid,pcpu,etime,args", "--sort=-pcpu", "--no-headers"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4 or int(parts[0]) == os.getpid() or parts[3].startswith("ps "):
            continue
        if float(parts[1]) < 5.0:
            break
        rows.append(f"{parts[1]}% cpu: {parts[3][:90]}")
        if len(rows) == limit:
            break
    return rows


def machine_info(device: torch.device) -> dict[str, Any]:
    import timm

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_bf16": cpu_bf16(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "intra_op_threads": torch.get_num_threads(),
        "inter_op_threads": torch.get_num_interop_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "device": device.type,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def conditions() -> dict[str, Any]:
    return {
        "time": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "load_average": _load_average(),
        "busy_processes": busy_processes(),
    }


# --------------------------------------------------------------------------- report

SCHEMA = 2


def _fmt_met(r: Result) -> str:
    if r.status != "measured":
        return r.status
    if r.met is None:
        return "n/a"
    return "yes" if r.met else "**no**"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Mapping[str, Any]) -> str:
    m = report["machine"]
    clock = report["clock"]
    clock_text = (
        "this process's CPU time (`time.process_time`); wall-clock ratios are in the details"
        if clock == "cpu"
        else "wall-clock time (after device synchronisation)"
    )
    lines = [
        "# Benchmarks",
        "",
        "Regenerate with `python -m benchmarks` (about 7 minutes of CPU time: 6 minutes on "
        "an idle 2-core CPU, longer when other jobs share it; `--quick` for a short check with "
        "small sizes, `--only NAME` for one item, `--device cuda` on a GPU). Each figure is a "
        "ratio of two things measured side by "
        "side in this run: cases timed in rotation after a warm-up, medians over the repeats. "
        "Models have random weights (no pretrained weights offline).",
        "",
        f"Clock: {clock_text}; {m['intra_op_threads']} intra-op thread(s) (`--threads`). "
        + (
            f"Rows come from {len(report['runs'])} runs (listed below)."
            if len(report["runs"]) > 1
            else f"One {report['runs'][0]['mode']} run, {report['runs'][0]['time']}."
        ),
        "",
        "| # | Figure | Measured | Goal | Met | Command |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(report["results"], start=1):
        lines.append(
            f"| {i} | {_cell(r['figure'])} | {_cell(r['measured'])} | {_cell(r['goal'])} | "
            f"{_fmt_met(Result(**r))} | `{r['command']}` |"
        )
    lines += [
        "",
        "## Machine and conditions",
        "",
        f"- CPU (the last run's): {m['cpu_model']}"
        + (f" ({m['cpu_bf16']})" if m.get("cpu_bf16") else "")
        + f", {m['logical_cores']} logical cores "
        f"({m['usable_cores']} usable)" + (f"; GPU: {m['gpu']}" if m.get("gpu") else ""),
        f"- torch {m['torch']} (MKL {m['mkl']}, oneDNN {m['mkldnn']}), timm {m['timm']}, "
        f"Python {m['python']}, {m['platform']}",
        f"- threads: {m['intra_op_threads']} intra-op, {m['inter_op_threads']} inter-op",
    ]
    for run in report["runs"]:
        lines.append(
            f"- run of {run['time']} ({run['mode']} sizes; {', '.join(run['items'])}"
            + (f"; CPU {run['cpu']}" if run.get("cpu") else "")
            + "): "
            f"{run['elapsed_s']:.0f} s wall-clock, {run['cpu_s']:.0f} s of CPU time in the "
            "harness process and its children (the load-test server); load average "
            f"(1, 5, 15 min) {run['load_start']} at the start, {run['load_end']} at the end"
        )
        busy = run.get("busy_processes") or []
        if busy:
            lines.append("  - other processes using the CPU when it started:")
            lines += [f"    - `{p}`" for p in busy]
    lines += ["", "## Details", ""]
    for i, r in enumerate(report["results"], start=1):
        lines += [f"### {i}. {r['figure']}", ""]
        lines.append(
            f"Status: {r['status']}; mode {r['mode']}; measured {r['measured_at']}; "
            f"took {r['seconds']:.0f} s."
        )
        lines.append("")
        lines += [f"- {n}" for n in r["notes"]]
        if r["notes"]:
            lines.append("")
        summary = {k: v for k, v in r["details"].items() if not k.startswith("_")}
        if summary:
            lines += ["```json", json.dumps(summary, indent=1)[:6000], "```", ""]
    return "\n".join(lines)


def asdict_rows(results: Sequence[Result]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]


def write_report(
    results: Sequence[Result],
    machine: Mapping[str, Any],
    start: Mapping[str, Any],
    end: Mapping[str, Any],
    out_md: Path,
    mode: str,
    clock: str,
    merge: bool,
    elapsed_s: float | None = None,
    cpu_s: float | None = None,
) -> dict[str, Any]:
    """Write ``out_md`` and the JSON next to it; with ``merge`` keep rows not rerun."""
    out_json = out_md.with_suffix(".json")
    rows = asdict_rows(results)
    order = ["subset", "precision", "tokens", "edge", "sweep", "sweep-cpu", "loader"]
    order += ["serve", "serve-paper", "bytes"]
    old_runs: list[dict[str, Any]] = []
    if merge and out_json.is_file():
        try:
            old = json.loads(out_json.read_text())
        except ValueError:
            old = {}
        if old.get("schema") == SCHEMA and old.get("clock") == clock:
            fresh = {r["name"] for r in rows}
            rows += [r for r in old.get("results", []) if r.get("name") not in fresh]
            old_runs = list(old.get("runs", []))
    rows.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    run = {
        "time": start["time"],
        "mode": mode,
        "clock": clock,
        "cpu": f"{machine.get('cpu_model')} ({machine.get('cpu_bf16', 'bf16 unknown')})",
        "items": [r["name"] for r in asdict_rows(results)],
        "elapsed_s": round(elapsed_s or 0.0, 1),
        "cpu_s": round(cpu_s or 0.0, 1),
        "load_start": start.get("load_average"),
        "load_end": end.get("load_average"),
        "busy_processes": start.get("busy_processes") or [],
    }
    # an old run stays listed while a row it measured last is still in the report
    fresh_names = set(run["items"])
    supplied: set[int] = set()
    for name in {r["name"] for r in rows} - fresh_names:
        last = [i for i, old_run in enumerate(old_runs) if name in old_run["items"]]
        supplied.update(last[-1:])
    runs = [old_run for i, old_run in enumerate(old_runs) if i in supplied] + [run]
    report = {
        "schema": SCHEMA,
        "generated": start["time"],
        "clock": clock,
        "machine": dict(machine),
        "runs": runs,
        "results": rows,
    }
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2) + "\n")
    out_md.write_text(render_markdown(report))
    return report
