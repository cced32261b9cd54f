"""Learning rules as data: a rule is a weighted sum of regularization primitives.

A `Rule` says which primitives (paper Table 1, plus `angle` of Appendix D.3) its layer-wise alignment loss
R sums and with which weights, whether the backward weight B simply *is* the forward weight W (`tied`,
backprop) and whether B's gradient is W's gradient (`transport_updates`, Kolen-Pollack).

Default weights (paper, "Two Routes to Scalable Credit Assignment without Weight Symmetry"):

- fa: R = 0 (B stays at its random initial value).
- wm: alpha*amp + beta*decay with alpha = 1 and the Table 5 R_WM^TPE ratio alpha/beta = 15.6607,
  i.e. beta = 1/15.6607 = 0.0639 (the TPE row lists beta = 0.0283 *together with* its own
  alignment learning rate; only the ratio is a property of the rule, the scale belongs to the optimizer).
- ia: amp + decay + null with the R_IA^TPE column of Table 5: alpha/beta = 129.1123, beta = 7.9990,
  gamma = 3.1610e-6, so alpha = 1032.78.
- sa: alpha*self + beta*decay, alpha = 1e-3, beta = 2e-3 (Appendix B.2).
- aa: alpha*amp + beta*sparse, alpha = 1e-3, beta = 2e-3 (Appendix B.2).
- kp: angle + decay realised by transport: B's gradient is W's gradient (the angle primitive's gradient,
  Appendix D.3) and the decay term is the optimizer's weight decay on B, applied like W's.
- bp: tied, no alignment loss.

A custom rule is a string "amp=1,decay=0.5,null=1e-3" (any primitive names, each at most once).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from .errors import UnknownNameError

__all__ = ["Primitive", "Rule", "PRIMITIVES", "RULES", "get_rule", "parse_terms"]


@dataclass(frozen=True)
class Primitive:
    """One regularization primitive: its formula (paper layout), gradient and locality (paper Table 2)."""

    name: str
    formula: str
    gradient: str
    local: bool
    why: str
    needs_activations: bool
    needs_output: bool


PRIMITIVES: Mapping[str, Primitive] = MappingProxyType({
    p.name: p
    for p in (
        Primitive("decay", "1/2 ||B_l||^2", "B_l", True,
                  "uses only the backward weight itself", False, False),
        Primitive("amp", "-tr(x_l^T B_l x_{l+1})", "-x_l x_{l+1}^T", True,
                  "Hebbian product of pre- and post-synaptic rates", True, True),
        Primitive("null", "1/2 ||B_l x_{l+1}||^2", "B_l x_{l+1} x_{l+1}^T", True,
                  "B acts on its own input x_{l+1}", True, True),
        Primitive("sparse", "1/2 ||x_l^T B_l||^2", "x_l x_l^T B_l", False,
                  "B would have to act on x_l, which is not its input (local computation fails)", True, False),
        Primitive("self", "-tr(B_l W_l)", "-W_l^T", False,
                  "B's update reads W exactly (local plasticity fails)", False, False),
        Primitive("angle", "tr(x_l^T B_l grad_{l+1})", "x_l grad_{l+1}^T", True,
                  "pre-synaptic rate times the post-synaptic pseudogradient (Appendix D.3); "
                  "realised by transporting W's update to B", False, False),
    )
})


@dataclass(frozen=True)
class Rule:
    """A learning rule: alignment-loss terms `{primitive: weight}` plus two structural switches.

    tied: B is W (backprop); the layers then behave exactly like nn.Conv2d / nn.Linear.
    transport_updates: B's gradient := W's gradient (Kolen-Pollack); B's update equals W's update when B
        sits in W's optimizer param group with the same weight decay (decay then plays the decay primitive).
    """

    name: str
    terms: Mapping[str, float] = field(default_factory=dict)
    tied: bool = False
    transport_updates: bool = False

    def __post_init__(self):
        object.__setattr__(self, "terms", MappingProxyType(dict(self.terms)))
        for primitive, weight in self.terms.items():
            _check_term(primitive, weight, f"rule {self.name!r}")
        if self.tied and self.terms:
            raise ValueError(f"rule {self.name!r}: a tied rule (B is W) cannot have alignment terms, got {dict(self.terms)}")
        if "angle" in self.terms and not self.transport_updates:
            raise ValueError(
                f"rule {self.name!r}: the 'angle' primitive needs the backward pseudogradient and is realised only "
                "by transporting W's update to B; use the 'kp' rule (transport_updates=True)"
            )

    def __hash__(self):
        return hash((self.name, tuple(sorted(self.terms.items())), self.tied, self.transport_updates))

    def __eq__(self, other):
        if not isinstance(other, Rule):
            return NotImplemented
        return (self.name, dict(self.terms), self.tied, self.transport_updates) == (
            other.name, dict(other.terms), other.tied, other.transport_updates)

    @property
    def needs_alignment_loss(self) -> bool:
        """True when a separate alignment loss R has to be computed and minimised for B."""
        return bool(self.terms) and not self.transport_updates

    @property
    def needs_activations(self) -> bool:
        """True when R reads the layer input (and maybe output) of the last forward pass."""
        return self.needs_alignment_loss and any(PRIMITIVES[p].needs_activations for p in self.terms)

    @property
    def needs_output(self) -> bool:
        return self.needs_alignment_loss and any(PRIMITIVES[p].needs_output for p in self.terms)

    @property
    def local(self) -> bool:
        return not self.tied and all(PRIMITIVES[p].local for p in self.terms)

    def describe(self) -> str:
        """The rule's alignment loss as text, e.g. 'R = 1 * amp + 0.0639 * decay'."""
        if self.tied:
            return "B = W (exact gradients, no alignment loss)"
        if not self.terms:
            return "R = 0 (B fixed at its random initial value)"
        text = "R = " + " + ".join(f"{weight:g} * {name}" for name, weight in self.terms.items())
        if self.transport_updates:
            text += "   (angle via transport: grad B := grad W; decay via the optimizer's weight decay on B)"
        return text


# Primitives whose weight must be positive: with a negative weight the loss is unbounded below
# (decay/null/sparse are squared norms) -- minimising it would blow B up.
_POSITIVE_ONLY = ("decay", "null", "sparse")

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _check_term(primitive: str, weight: float, where: str) -> None:
    if primitive not in PRIMITIVES:
        raise UnknownNameError(f"{where}: unknown primitive {primitive!r}; valid primitives: {', '.join(PRIMITIVES)}")
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight):
        raise ValueError(f"{where}: weight of {primitive!r} must be a finite number, got {weight!r}")
    if primitive in _POSITIVE_ONLY and weight < 0:
        raise ValueError(
            f"{where}: weight of {primitive!r} must be >= 0 (a negative weight on a squared norm makes the "
            f"alignment loss unbounded below), got {weight}"
        )


def parse_terms(text: str) -> dict[str, float]:
    """Parse "amp=1,decay=0.5,null=1e-3" into {"amp": 1.0, "decay": 0.5, "null": 0.001}."""
    where = f"custom rule {text!r}"
    terms: dict[str, float] = {}
    for chunk in text.split(","):
        chunk = chunk.strip()
        name, sep, value = chunk.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not _NUMBER.match(value):
            raise ValueError(
                f"{where}: term {chunk!r} is not of the form primitive=number (e.g. 'amp=1,decay=0.5'); "
                f"valid primitives: {', '.join(PRIMITIVES)}"
            )
        if name in terms:
            raise ValueError(f"{where}: primitive {name!r} appears more than once")
        terms[name] = float(value)
        _check_term(name, terms[name], where)
    return terms


_WM_ALPHA_OVER_BETA = 15.6607
_IA_BETA, _IA_ALPHA_OVER_BETA, _IA_GAMMA = 7.9990, 129.1123, 3.1610e-6

RULES: Mapping[str, Rule] = MappingProxyType({
    "bp": Rule("bp", {}, tied=True),
    "fa": Rule("fa", {}),
    "wm": Rule("wm", {"amp": 1.0, "decay": round(1.0 / _WM_ALPHA_OVER_BETA, 6)}),
    "ia": Rule("ia", {"amp": round(_IA_ALPHA_OVER_BETA * _IA_BETA, 4), "decay": _IA_BETA, "null": _IA_GAMMA}),
    "sa": Rule("sa", {"self": 1e-3, "decay": 2e-3}),
    "aa": Rule("aa", {"amp": 1e-3, "sparse": 2e-3}),
    "kp": Rule("kp", {"angle": 1.0, "decay": 1.0}, transport_updates=True),
})


def get_rule(rule: "str | Rule") -> Rule:
    """A named rule ('bp', 'fa', 'wm', 'ia', 'sa', 'aa', 'kp'), a custom 'prim=w,...' string, or a Rule."""
    if isinstance(rule, Rule):
        return rule
    if not isinstance(rule, str):
        raise TypeError(f"rule must be a name, a 'primitive=weight,...' string or a Rule, got {type(rule).__name__}")
    key = rule.strip().lower()
    if key in RULES:
        return RULES[key]
    if "=" in key:
        terms = parse_terms(key)
        return Rule(",".join(f"{name}={weight:g}" for name, weight in terms.items()), terms)
    raise UnknownNameError(
        f"unknown rule {rule!r}; valid rules: {', '.join(RULES)}, or a weighted sum of primitives like "
        f"'amp=1,decay=0.5' (primitives: {', '.join(PRIMITIVES)})"
    )
