"""``smoothquant families`` and ``smoothquant schemes``: what is supported."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("families", help="list the supported model families and their smoothing groups")
    p.set_defaults(func=_families)
    p = sub.add_parser("schemes", help="list the quantization presets")
    p.set_defaults(func=_schemes)


def _families(args: argparse.Namespace) -> int:
    from smoothquant.families import FAMILIES

    for f in FAMILIES:
        groups = sorted({g.name for layout in f.layouts for g in layout.groups})
        print(f"{f.name:10s} model_type={','.join(f.model_types):12s} groups={','.join(groups)}")
        if f.notes:
            print(f"{'':10s} {f.notes}")
    return 0


def _schemes(args: argparse.Namespace) -> int:
    from smoothquant.quantization import PRESETS

    for s in PRESETS.values():
        w = s.weights.granularity + (f"({s.weights.group_size})" if s.weights.group_size else "")
        a = f"{s.inputs.granularity}-{'dynamic' if s.inputs.dynamic else 'static'}"
        print(f"{s.name:20s} W={w:10s} A={a:15s} migration={s.migration:12s} {s.description}")
    return 0
