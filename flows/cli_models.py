"""`neuralign rules`: list the learning rules and primitives (paper Tables 1-2), or show one rule."""
from __future__ import annotations

import argparse

CUSTOM_RULES_HELP = (
    "Custom rules: any weighted sum of primitives, written 'amp=1,decay=0.5,null=1e-3'. Use one",
    "  - to inspect it:      neuralign rules show 'amp=1,decay=0.5'",
    "  - to train with it:   rule = \"amp=1,decay=0.5\" in a TOML file, then neuralign train --config FILE ...",
    "  - as a checkpoint:    wherever a checkpoint spec is accepted,",
    "                        e.g. neuralign fit --checkpoint 'amp=1,decay=0.5' ...",
)


def add_commands(subparsers) -> None:
    rules = subparsers.add_parser("rules", help="list learning rules and primitives, or show one rule",
                                  description="Learning rules as weighted sums of primitives (paper Tables 1-2).")
    rules.set_defaults(handler=list_rules)
    actions = rules.add_subparsers(dest="rules_action", metavar="ACTION")
    actions.add_parser("list", help="every rule and primitive with formula and locality").set_defaults(
        handler=list_rules)
    show = actions.add_parser("show", help="one rule's terms and, when a preset has its name, the preset values")
    show.add_argument("name", help="a rule name (bp, fa, wm, ia, sa, aa, kp), a preset name, or 'amp=1,decay=0.5'")
    show.set_defaults(handler=show_rule)


def list_rules(args: argparse.Namespace) -> int:
    from models.rules import PRIMITIVES, RULES

    print("Primitives (layout and batch convention: see models/primitives.py)")
    print(f"  {'name':<7} {'locality':<9} {'P_l':<26} {'grad wrt B_l (paper layout)':<26} why")
    for p in PRIMITIVES.values():
        locality = "local" if p.local else "non-local"
        print(f"  {p.name:<7} {locality:<9} {p.formula:<26} {p.gradient:<26} {p.why}")
    print()
    print("Rules")
    print(f"  {'name':<5} {'locality':<9} alignment loss")
    for rule in RULES.values():
        locality = "-" if rule.tied else ("local" if rule.local else "non-local")
        print(f"  {rule.name:<5} {locality:<9} {rule.describe()}")
    print()
    for line in CUSTOM_RULES_HELP:
        print(line)
    return 0


def show_rule(args: argparse.Namespace) -> int:
    from models.errors import UnknownNameError
    from models.rules import PRIMITIVES, get_rule

    preset = _find_preset(args.name)
    try:
        rule = get_rule(args.name) if preset is None else _preset_rule(preset)
    except KeyError as error:
        names = _preset_names()
        message = str(error.args[0]) if error.args else "unknown rule"
        raise UnknownNameError(message + (f"; presets: {', '.join(names)}" if names else "")) from None
    print(f"rule {rule.name}: {rule.describe()}")
    if not rule.tied:
        print(f"  locality: {'local' if rule.local else 'non-local'}")
    for name, weight in rule.terms.items():
        p = PRIMITIVES[name]
        print(f"  {name:<7} weight {weight:<10g} {p.formula:<26} ({'local' if p.local else 'non-local'})")
    print(f"  tied (B = W): {rule.tied}; transport of W's update to B: {rule.transport_updates}; "
          f"separate alignment loss: {rule.needs_alignment_loss}")
    if preset is not None:
        print(f"preset {args.name}:")
        values = preset.model_dump() if hasattr(preset, "model_dump") else dict(vars(preset))
        for key, value in values.items():
            print(f"  {key} = {value!r}")
    return 0


def _preset_rule(preset):
    """The preset's rule with the preset's own term weights, when it sets any."""
    from models.rules import Rule, get_rule

    base = get_rule(preset.rule)
    terms = dict(getattr(preset, "terms", None) or {})
    if not terms or base.tied:
        return base
    return Rule(base.name, terms, tied=base.tied, transport_updates=base.transport_updates)


def _preset_names() -> list[str]:
    try:
        from models import presets
    except ImportError:
        return []
    return list(getattr(presets, "PRESETS", ()))


def _find_preset(name: str):
    """The trainer's preset of that name, or None when presets are unavailable or do not know it."""
    try:
        from models import presets
    except ImportError:
        return None
    load_preset = getattr(presets, "load_preset", None)
    known = getattr(presets, "PRESETS", None)
    if load_preset is None or (known is not None and name not in known):
        return None
    try:
        return load_preset(name)
    except (KeyError, LookupError, FileNotFoundError):
        return None
