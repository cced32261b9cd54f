"""Rules as data: the paper's compositions, custom strings, and clear errors for bad input."""
import pytest

from models.rules import PRIMITIVES, RULES, Rule, get_rule, parse_terms


def test_rule_compositions_follow_table_2():
    composition = {name: set(rule.terms) for name, rule in RULES.items()}
    assert composition == {
        "bp": set(), "fa": set(), "wm": {"amp", "decay"}, "ia": {"amp", "decay", "null"},
        "sa": {"self", "decay"}, "aa": {"amp", "sparse"}, "kp": {"angle", "decay"},
    }
    assert RULES["bp"].tied and not any(r.tied for n, r in RULES.items() if n != "bp")
    assert RULES["kp"].transport_updates and not RULES["kp"].needs_alignment_loss
    assert {n for n, r in RULES.items() if r.needs_alignment_loss} == {"wm", "ia", "sa", "aa"}
    assert [n for n, r in RULES.items() if not r.tied and r.local] == ["fa", "wm", "ia", "kp"]
    assert {n for n, p in PRIMITIVES.items() if not p.local} == {"sparse", "self"}


def test_default_weights_from_the_paper():
    assert dict(RULES["sa"].terms) == {"self": 1e-3, "decay": 2e-3}  # Appendix B.2
    assert dict(RULES["aa"].terms) == {"amp": 1e-3, "sparse": 2e-3}
    wm = RULES["wm"].terms
    assert wm["amp"] / wm["decay"] == pytest.approx(15.6607, rel=1e-5)  # Table 5, R_WM^TPE alpha/beta
    ia = RULES["ia"].terms
    assert ia["decay"] == 7.9990 and ia["null"] == 3.1610e-6
    assert ia["amp"] / ia["decay"] == pytest.approx(129.1123, rel=1e-5)


def test_custom_rule_from_string():
    rule = get_rule("amp=1, decay=0.5,null=1e-3")
    assert dict(rule.terms) == {"amp": 1.0, "decay": 0.5, "null": 1e-3}
    assert rule.needs_alignment_loss and rule.needs_output and not rule.tied
    assert get_rule("SA") is RULES["sa"]
    assert get_rule(rule) is rule
    assert get_rule("self=-1,decay=1").terms["self"] == -1.0  # signed weights are fine where bounded


@pytest.mark.parametrize("text,match", [
    ("amp=x", "primitive=number"),
    ("amp", "primitive=number"),
    ("amp=1,,decay=1", "primitive=number"),
    ("amp=1,amp=2", "more than once"),
    ("decay=-1", "must be >= 0"),
    ("null=-0.1,amp=1", "must be >= 0"),
])
def test_malformed_custom_strings_are_rejected(text, match):
    with pytest.raises(ValueError, match=match) as info:
        parse_terms(text)
    assert repr(text) in str(info.value)  # names the offending string


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(KeyError) as info:
        get_rule("feedback")
    assert "bp, fa, wm, ia, sa, aa, kp" in str(info.value)
    with pytest.raises(KeyError) as info:
        get_rule("amp=1,mirror=2")
    assert "'mirror'" in str(info.value) and "decay, amp, null, sparse, self" in str(info.value)
    with pytest.raises(ValueError, match="transport"):
        get_rule("angle=1")
    with pytest.raises(ValueError, match="tied"):
        Rule("odd", {"amp": 1.0}, tied=True)
    with pytest.raises(TypeError):
        get_rule(3)


def test_rules_are_immutable_and_hashable():
    rule = RULES["wm"]
    with pytest.raises(TypeError):
        rule.terms["amp"] = 2.0
    assert {rule: 1}[Rule("wm", dict(rule.terms))] == 1


def test_cli_lists_and_shows_rules(capsys):
    from flows.cli import main

    assert main(["rules"]) == 0
    listing = capsys.readouterr().out
    for name in list(RULES) + list(PRIMITIVES):
        assert name in listing
    assert "non-local" in listing and "-tr(B_l W_l)" in listing
    assert "--rule" not in listing  # no such option: the listing says how custom rules are really used
    assert "neuralign rules show 'amp=1,decay=0.5'" in listing and 'rule = "amp=1,decay=0.5"' in listing
    assert main(["rules", "list"]) == 0
    assert capsys.readouterr().out == listing
    assert main(["rules", "show", "sa"]) == 0
    shown = capsys.readouterr().out
    assert "0.001 * self" in shown and "non-local" in shown
    assert main(["rules", "show", "amp=1,decay=2"]) == 0
    assert "1 * amp + 2 * decay" in capsys.readouterr().out
    assert main(["rules", "show", "nonsense"]) == 2
    assert "rules: error: unknown rule 'nonsense'; valid rules" in capsys.readouterr().err  # no KeyError quotes


def test_cli_show_prints_preset_values_and_survives_missing_presets(capsys, monkeypatch):
    import sys
    import types

    from flows.cli import main

    class FakeConfig:
        rule = "wm"
        terms = {"amp": 2.0, "decay": 0.25}

        def model_dump(self):
            return {"rule": self.rule, "terms": self.terms, "lr": 0.125, "alternating": True}

    fake = types.ModuleType("models.presets")
    fake.PRESETS = ("wm_custom",)
    fake.load_preset = lambda name: FakeConfig()
    import models

    monkeypatch.setitem(sys.modules, "models.presets", fake)
    monkeypatch.setattr(models, "presets", fake, raising=False)
    assert main(["rules", "show", "wm_custom"]) == 0
    shown = capsys.readouterr().out
    assert "2 * amp + 0.25 * decay" in shown and "lr = 0.125" in shown and "alternating = True" in shown
    assert main(["rules", "show", "nothing"]) == 2
    assert "presets: wm_custom" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "models.presets", None)  # import fails: rules still shown
    monkeypatch.delattr(models, "presets")
    assert main(["rules", "show", "aa"]) == 0
    assert "0.001 * amp + 0.002 * sparse" in capsys.readouterr().out
