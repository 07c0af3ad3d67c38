"""Measurements of what the network is asked to learn, run on real training batches.

conflicts: which sampled RoIs read exactly the same input under RoI pooling or RoIAlign, and how
often such RoIs carry different labels (the network is then asked for two answers to one input).
"""

import importlib
import sys

STUDIES = {"conflicts": ("minidet.study.conflicts", "how often sampled RoIs with different labels read identical "
                                                   "input (RoI pooling or RoIAlign, conv5_3 or conv4_3)")}


def main(argv=None):
    """`minidet study NAME [ARGS...]`: run one study's main(ARGS)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STUDIES:
        lines = ["usage: minidet study NAME [--help] [ARGS...]", "", "studies:"]
        lines += [f"  {name:<12} {text}" for name, (_, text) in STUDIES.items()]
        print("\n".join(lines), file=sys.stdout if not argv or argv[0] in ("-h", "--help") else sys.stderr)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return importlib.import_module(STUDIES[argv[0]][0]).main(argv[1:])
