"""The scripts of examples/ imported as modules, for tests that call their functions directly."""
import importlib
import os
import sys

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def import_example(name):
    """examples/NAME.py as a module (examples/ is on sys.path only while it is imported)."""
    sys.path.insert(0, EXAMPLES)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(EXAMPLES)
