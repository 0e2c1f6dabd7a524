"""The CLI takes its choices from the method's tables: one entry there is one choice here."""

from __future__ import annotations

import numpy as np
import pytest

from collabvit import gating, selection
from collabvit.attention import SCORES
from collabvit.cli import main


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_every_table_entry_is_a_choice(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help("evaluate", capsys)
    for name in (*selection.RULES, *gating.MEASURES, *SCORES):
        assert name in text, name


def test_a_rule_added_to_the_table_is_a_choice_and_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def first_two(scores: object, _k: float, _options: object) -> np.ndarray:
        s = selection.as_numpy(scores)
        mask = np.zeros(s.shape, dtype=bool)
        mask[:, :2] = True
        return mask

    monkeypatch.setitem(
        selection.RULES, "first-two", selection.Rule("first-two", first_two, "", label="first 2")
    )
    assert "first-two" in _help("evaluate", capsys)
    sel = selection.select_patches(np.full((3, 5), 0.2), "first-two")
    assert sel.num_patches.tolist() == [2, 2, 2]


def test_a_measure_added_to_the_table_is_a_choice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def top_logit(logits: object) -> np.ndarray:
        return np.asarray(selection.as_numpy(logits).max(axis=-1), dtype=np.float64)

    monkeypatch.setitem(gating.MEASURES, "top-logit", gating.Measure("top-logit", top_logit))
    assert "top-logit" in _help("evaluate", capsys)
    sent = gating.transmit_mask(
        gating.uncertainty(np.array([[0.0, 3.0], [1.0, 0.5]]), "top-logit"), "top-logit", 2.0
    )
    assert sent.tolist() == [True, False]
