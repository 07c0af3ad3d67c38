"""Reading the values of command-line options: image scales, class names, yes or no.

Each parser takes the option's text and returns its value, or raises BadArgument, which argparse
shows as the option's error and every other caller can catch as a ValueError. Shared by training
(minidet.train_config), evaluation (minidet.inference) and the other commands, so that test time
reads its options without importing training code.
"""
import argparse


class BadArgument(ValueError, argparse.ArgumentTypeError):
    """An option's text that does not parse; the message says what was expected."""


def parse_scales(text, what="scales"):
    """"480,576,688" -> (480, 576, 688): image scales (shorter sides in pixels, positive integers);
    `what` names them in the message."""
    try:
        scales = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise BadArgument(f"{what} must be integers separated by commas, got {text!r}") from None
    if not scales or min(scales) < 1:
        raise BadArgument(f"{what} must be positive integers separated by commas, got {text!r}")
    return scales


def parse_classes(text):
    """"RBC, WBC" -> ("RBC", "WBC"); "" or None -> None (the data set's own class names)."""
    return None if not text else tuple(s.strip() for s in text.split(",") if s.strip())


def parse_bool(text):
    """"true", "yes", "on", "1" -> True; "false", "no", "off", "0" -> False (any case)."""
    if str(text).lower() in ("1", "true", "yes", "on"):
        return True
    if str(text).lower() in ("0", "false", "no", "off"):
        return False
    raise BadArgument(f"expected true or false, got {text!r}")
