"""Each equation of the paper that the code computes is cited on the function that computes it,
and the README's equation index names the same functions."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

EQUATIONS = {
    "1": ["collabvit.models._vit:embed_patches", "collabvit.models._vit:forward_tokens"],
    "5": ["collabvit.attention:cls_attention"],
    "6": ["collabvit.attention:cls_attention"],
    "9": ["collabvit.cost:vit_flops"],
    "10": ["collabvit.attention:mean_attention_score"],
    "11": ["collabvit.gating:transmit_mask"],
    "12": ["collabvit.gating:shannon_entropy"],
    "13": ["collabvit.gating:min_entropy"],
}
README = Path(__file__).parents[1] / "README.md"


def _cites(doc: str, number: str) -> bool:
    # "Eq. 10", "eq. 10", "Eqs. 5-6", "eqs. 11-13"
    for match in re.finditer(r"[Ee]qs?\. (\d+)(?:-(\d+))?", doc):
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if low <= int(number) <= high:
            return True
    return False


@pytest.mark.parametrize("number", sorted(EQUATIONS, key=int))
def test_equation_is_cited_where_it_is_computed(number: str) -> None:
    for target in EQUATIONS[number]:
        module, name = target.split(":")
        doc = getattr(importlib.import_module(module), name).__doc__ or ""
        assert _cites(doc, number), f"{target} does not cite eq. {number}"


def test_readme_lists_every_equation_with_its_function() -> None:
    text = README.read_text()
    for number, targets in EQUATIONS.items():
        lines = [
            line for line in text.splitlines() if re.search(rf"\b[Ee]qs?\. .*\b{number}\b", line)
        ]
        names = {t.split(":")[1] for t in targets}
        assert any(any(n in line for n in names) for line in lines), f"eq. {number} not indexed"
