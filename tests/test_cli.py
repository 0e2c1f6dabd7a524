"""``collabvit evaluate`` on bad inputs, as a user runs it: a subprocess per case.

Every user error must end the process with a non-zero status and exactly one
line on stderr, ``collabvit evaluate: error: ...``, never a traceback. Unreadable
files are skipped (counted in the JSON), odd image modes converted.

Importing torch and timm takes most of a process's time (10-20 s on a busy
2-core machine), so one driver process imports ``collabvit.cli`` once and forks a
child per case; each child has its own stdout/stderr files and exit status and
runs ``collabvit.cli.main(argv)`` exactly as ``python -m collabvit.cli`` does.
Without ``os.fork`` every case is its own ``python -m collabvit.cli`` process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

PREFIX = "collabvit evaluate: error: "
TQDM_LINE = re.compile(r"^evaluate:\s")  # the progress bar's description
SKIP_WARNING = re.compile(
    r"^(skipping .*: not a readable image|\d+ file\(s\) skipped as unreadable)"
)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    folder: Path

    def error_lines(self) -> list[str]:
        """stderr lines without progress-bar redraws."""
        lines = re.split(r"[\r\n]+", self.stderr)
        return [line for line in lines if line.strip() and not TQDM_LINE.match(line)]


def _photos(imagenet_dir: Path, count: int) -> list[Path]:
    rows = (imagenet_dir / "labels.csv").read_text().splitlines()[1 : count + 1]
    return [imagenet_dir / "images" / row.split(",")[0] for row in rows]


def _cases(
    small_pair: tuple[Path, Path], imagenet_dir: Path, root: Path
) -> dict[str, tuple[list[str], Path]]:
    edge, server = (str(p) for p in small_pair)
    photos = _photos(imagenet_dir, 2)

    good = root / "good"
    good.mkdir()
    for p in photos:
        shutil.copy(p, good / p.name)

    empty = root / "empty"
    empty.mkdir()

    labelled = root / "labelled"
    labelled.mkdir()
    shutil.copy(photos[0], labelled / "present.jpg")
    (labelled / "labels.csv").write_text("file,label\npresent.jpg,1\nmissing-photo.jpg,2\n")

    mixed = root / "mixed"
    mixed.mkdir()
    rgb = Image.open(photos[0]).convert("RGB")
    rgb.save(mixed / "rgb.jpg")
    rgb.convert("L").save(mixed / "grey.jpg")
    rgb.convert("CMYK").save(mixed / "cmyk.jpg")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(mixed / "palette.png")
    rgb.convert("RGBA").save(mixed / "rgba.png")
    (mixed / "notes.jpg").write_text("not an image\n")
    data = (mixed / "rgb.jpg").read_bytes()
    (mixed / "truncated.jpg").write_bytes(data[: len(data) // 3])

    unreadable = root / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.jpg").write_text("nothing\n")
    (unreadable / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")

    corrupt = root / "corrupt.pth"
    corrupt.write_bytes(os.urandom(2048))

    models = ["--edge", edge, "--server", server]

    def cmd(*extra: str, data: Path = good, model_args: list[str] = models) -> list[str]:
        return [*model_args, "--data", str(data), *extra]

    unknown = ["--edge", "deit_tiniest_patch16_224", "--server", server]
    return {
        "unknown-model": (cmd(model_args=unknown), good),
        "missing-checkpoint": (cmd("--edge-checkpoint", str(root / "absent.pth")), good),
        "corrupt-checkpoint": (cmd("--server-checkpoint", str(corrupt)), good),
        "other-architecture": (
            cmd("--edge-checkpoint", str(small_pair[1].with_suffix(".safetensors"))),
            good,
        ),
        "empty-folder": (cmd(data=empty), empty),
        "labels-missing-files": (
            cmd("--labels", str(labelled / "labels.csv"), data=labelled),
            labelled,
        ),
        "no-such-folder": (cmd(data=root / "no-such-folder"), root),
        "all-unreadable": (cmd(data=unreadable), unreadable),
        "mixed": (
            cmd(
                "--json",
                str(mixed / "summary.json"),
                "--records",
                str(mixed / "records.csv"),
                data=mixed,
            ),
            mixed,
        ),
    }


DRIVER = r"""
import importlib, json, os, sys, traceback

import collabvit.cli

for command in collabvit.cli.COMMANDS:  # every command module once, before the forks
    try:
        importlib.import_module(f"collabvit.commands.{command}")
    except ModuleNotFoundError:
        pass

codes = {}
for name, case in json.loads(sys.stdin.read()).items():
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        with open(case["stdout"], "w") as out, open(case["stderr"], "w") as err:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
        try:
            code = collabvit.cli.main(case["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    codes[name] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(codes))
"""


def _run_all(cases: dict[str, tuple[list[str], Path]], root: Path) -> dict[str, Run]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = {name: ["evaluate", *args] for name, (args, _) in cases.items()}
    if not hasattr(os, "fork"):
        done = {}
        for name, (_, folder) in cases.items():
            command = [sys.executable, "-m", "collabvit.cli", *argv[name]]
            p = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
            done[name] = Run(p.returncode, p.stdout, p.stderr, folder)
        return done
    streams = {
        name: {
            "argv": argv[name],
            "stdout": str(root / f"{name}.out"),
            "stderr": str(root / f"{name}.err"),
        }
        for name in cases
    }
    driver = subprocess.run(
        [sys.executable, "-c", DRIVER],
        input=json.dumps(streams),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert driver.returncode == 0, driver.stderr
    codes = json.loads(driver.stdout.strip().splitlines()[-1])
    return {
        name: Run(
            codes[name],
            Path(streams[name]["stdout"]).read_text(),
            Path(streams[name]["stderr"]).read_text(),
            folder,
        )
        for name, (_, folder) in cases.items()
    }


@pytest.fixture(scope="module")
def runs(
    small_pair: tuple[Path, Path], imagenet_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("cli")
    return _run_all(_cases(small_pair, imagenet_dir, root), root)


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("unknown-model", "deit_tiniest_patch16_224"),
        ("missing-checkpoint", "does not exist"),
        ("corrupt-checkpoint", "corrupt"),
        ("other-architecture", "does not fit"),
        ("empty-folder", "holds no images"),
        ("labels-missing-files", "missing-photo.jpg"),
        ("no-such-folder", "does not exist"),
        ("all-unreadable", "no image could be read"),
    ],
)
def test_user_error_is_one_line_without_traceback(
    runs: dict[str, Run], case: str, says: str
) -> None:
    run = runs[case]
    assert run.returncode != 0, run.stdout
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.error_lines()
    if case == "all-unreadable":  # the skip warnings come first, then the error
        lines = [line for line in lines if not SKIP_WARNING.match(line)]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(PREFIX), run.stderr
    assert says in lines[0], lines[0]


def test_unreadable_files_are_skipped_and_counted(runs: dict[str, Run]) -> None:
    run = runs["mixed"]
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert "notes.jpg" in run.stderr and "truncated.jpg" in run.stderr  # warned about
    summary = json.loads((run.folder / "summary.json").read_text())
    assert summary["skipped_files"] == 2
    assert summary["images"] == 5


def test_odd_image_modes_are_converted(runs: dict[str, Run]) -> None:
    run = runs["mixed"]
    assert run.returncode == 0, run.stderr
    rows = (run.folder / "records.csv").read_text().splitlines()[1:]
    files = sorted(row.split(",")[1] for row in rows)
    assert files == ["cmyk.jpg", "grey.jpg", "palette.png", "rgb.jpg", "rgba.png"]
