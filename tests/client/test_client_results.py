"""The client's summary: metrics.summarise's numbers plus sources, bytes and latency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collabvit.client import SOURCES, ImageResult, JsonlWriter, read_jsonl, summarise, write_jsonl
from collabvit.metrics import summarise as summarise_metrics


def result(
    source: str, label: int | None, pred: int | None, edge: int | None, **kw: object
) -> ImageResult:
    values: dict[str, object] = {
        "file": f"{source}-{label}-{pred}.jpg",
        "label": label,
        "prediction": pred,
        "class_name": None if pred is None else str(pred),
        "source": source,
        "uncertainty": None if pred is None else 0.5,
        "patches_sent": 0,
        "bytes_sent": 0,
        "rtt_ms": None,
        "edge_prediction": edge,
    }
    values.update(kw)
    return ImageResult(**values)  # type: ignore[arg-type]


RESULTS = [
    result("edge", 1, 1, 1),
    result("server", 2, 2, 0, patches_sent=10, bytes_sent=1000, rtt_ms=4.0),
    result("server", 3, 0, 0, patches_sent=6, bytes_sent=600, rtt_ms=2.0, full_jpeg_bytes=5000),
    result("edge-fallback", 4, 4, 4, patches_sent=8, bytes_sent=800, error="down"),
    result("edge", None, 5, 5),  # unlabelled
    result("unreadable", 6, None, None),
]


def test_summary_numbers_are_metrics_summarise() -> None:
    s = summarise(RESULTS, patches_per_image=16)
    answered = 5
    assert s["images"] == 6 and s["answered"] == answered
    assert s["sources"] == {"edge": 2, "server": 2, "edge-fallback": 1, "unreadable": 1}
    assert set(s["sources"]) == set(SOURCES)
    assert s["accuracy"] == 3 / 4  # 4 labelled answered images; the server missed one
    assert s["edge_accuracy"] == 2 / 4
    assert s["transmit_ratio"] == 3 / answered  # a fallback was transmitted too
    assert s["communication_cost"] == (10 + 6 + 8) / (answered * 16)
    assert s["mean_patches_transmitted"] == (10 + 6 + 8) / 3
    assert s["mean_bytes_per_image"] == (1000 + 600) / answered  # server-answered payloads
    assert s["mean_full_jpeg_bytes"] == 5000
    assert s["mean_rtt_ms"] == 3.0
    expected = summarise_metrics(
        labels=[1, 2, 3, 4, -1],
        edge_pred=[1, 0, 0, 4, 5],
        final_pred=[1, 2, 0, 4, 5],
        transmitted=[False, True, True, True, False],
        num_patches=[0, 10, 6, 8, 0],
        patches_per_image=16,
    )
    for key in ("accuracy", "edge_accuracy", "transmit_ratio", "communication_cost"):
        assert s[key] == getattr(expected, key), key


def test_summary_without_patch_count_or_answers() -> None:
    assert summarise(RESULTS)["communication_cost"] is None
    empty = summarise([result("unreadable", 1, None, None)], patches_per_image=16)
    assert empty["answered"] == 0
    assert empty["accuracy"] is None and empty["edge_accuracy"] is None
    assert empty["transmit_ratio"] == 0.0 and empty["mean_bytes_per_image"] == 0.0
    assert empty["mean_full_jpeg_bytes"] is None and empty["mean_rtt_ms"] is None


def test_write_jsonl_one_line_per_image_without_the_index(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    write_jsonl(RESULTS, out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [line["file"] for line in lines] == [r.file for r in RESULTS]
    assert "index" not in lines[0]
    assert lines[3]["error"] == "down" and lines[5]["prediction"] is None
    assert lines[2]["full_jpeg_bytes"] == 5000


@pytest.mark.parametrize("source", SOURCES)
def test_every_source_round_trips(source: str, tmp_path: Path) -> None:
    out = tmp_path / "one.jsonl"
    write_jsonl([result(source, 1, 1, 1)], out)
    assert json.loads(out.read_text())["source"] == source


def test_jsonl_writer_puts_each_line_on_disk_at_once(tmp_path: Path) -> None:
    """Item 8: a reader (or a crash) sees every answer given so far, not nothing."""
    out = tmp_path / "live.jsonl"
    with JsonlWriter(out) as sink:
        for i, r in enumerate(RESULTS, 1):
            sink.write(r)
            lines = out.read_text().splitlines()  # while the file is still open
            assert [json.loads(x)["file"] for x in lines] == [x.file for x in RESULTS[:i]]
    with JsonlWriter(out, append=True) as sink:
        sink.write(result("edge", 9, 9, 9))
    assert len(out.read_text().splitlines()) == len(RESULTS) + 1


def test_read_jsonl_round_trips_and_leaves_out_a_torn_line(tmp_path: Path) -> None:
    out = tmp_path / "killed.jsonl"
    write_jsonl(RESULTS, out)
    with open(out, "a") as fh:
        fh.write('{"file": "half-written.jpg", "lab')  # kill -9 mid-line
    back = read_jsonl(out)
    assert [r.to_json() for r in back] == [r.to_json() for r in RESULTS]
    write_jsonl(back, out)
    assert "half-written" not in out.read_text()
    assert not list(tmp_path.glob("*.partial"))  # replaced whole
