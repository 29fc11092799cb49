"""Every registered method says what its model keeps, how it grows and how its scores
become probabilities (`retaincl list`, the API)."""

from retaincl.cli import main
from retaincl.practitioner.facts import FACTS, GROWTH_KINDS, SCORE_KINDS, facts
from retaincl.registry import METHODS


def test_every_method_has_its_facts():
    missing = sorted(name for name, _ in METHODS.items() if name not in FACTS)
    assert not missing, f"add these methods to retaincl.practitioner.facts.FACTS: {missing}"
    for name, cls in METHODS.items():
        f = facts(name, cls)
        assert f.scores in SCORE_KINDS and f.growth in GROWTH_KINDS
        # a method that keeps past samples says so, whichever side declares it
        assert f.exemplars == (bool(cls.uses_exemplars) or FACTS[name].exemplars)


def test_list_shows_exemplars_and_growth(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "exemplars" in out and "model grows" in out
    row = next(line for line in out.splitlines() if line.split()[:1] == ["er"])
    assert row.split()[1:3] == ["yes", "fixed"]
    row = next(line for line in out.splitlines() if line.split()[:1] == ["simplecil"])
    assert row.split()[1:4] == ["no", "per", "class"]
