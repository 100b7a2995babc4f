"""The planted-bug lists (``tests/**/mutants_*.py``, run by ``tests/planted_bugs.py``) still
match the code: each snippet occurs exactly once in its file, so every mutant applies. A
change to a line a mutant names fails here until the list is updated."""

import importlib
from pathlib import Path

import pytest

from tests import planted_bugs

LISTS = sorted(Path(planted_bugs.ROOT, "tests").rglob("mutants_*.py"))


def test_there_are_planted_bug_lists():
    assert {p.stem for p in LISTS} >= {"mutants_trainer", "mutants_data"}


@pytest.mark.parametrize("path", LISTS, ids=lambda p: p.stem)
def test_every_snippet_occurs_once(path):
    rel = path.relative_to(planted_bugs.ROOT).with_suffix("")
    module = importlib.import_module(".".join(rel.parts))
    assert module.MUTANTS, f"{rel}: no mutants"
    for index, (file, old, new) in enumerate(module.MUTANTS):
        assert old != new, f"{rel} mutant {index}: the replacement equals the snippet"
        count = (planted_bugs.ROOT / file).read_text().count(old)
        assert count == 1, f"{rel} mutant {index}: {count} occurrences in {file}: {old!r}"
