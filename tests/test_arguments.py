"""Option values from the command line: scales, class names, yes or no; errors that argparse shows as they are."""
import argparse

import pytest

from minidet.arguments import BadArgument, parse_bool, parse_classes, parse_scales


def test_scales_are_positive_integers_separated_by_commas():
    assert parse_scales("480,576,688,864,1200") == (480, 576, 688, 864, 1200)
    assert parse_scales("240") == (240,) and parse_scales(" 240, 320 ,") == (240, 320)
    for bad in ("", "480,abc", "0,240", "-5"):
        with pytest.raises(ValueError, match="test scales must be"):
            parse_scales(bad, "test scales")


def test_class_names_are_stripped_and_empty_means_none():
    assert parse_classes("RBC, WBC,Platelets") == ("RBC", "WBC", "Platelets")
    assert parse_classes("") is None and parse_classes(None) is None


def test_yes_or_no_in_its_usual_spellings():
    assert [parse_bool(t) for t in ("1", "True", "yes", "ON")] == [True] * 4
    assert [parse_bool(t) for t in ("0", "false", "No", "off")] == [False] * 4
    with pytest.raises(BadArgument, match="expected true or false, got 'maybe'"):
        parse_bool("maybe")


def test_argparse_shows_the_message_of_a_bad_value(capsys):
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--scales", type=parse_scales)
    with pytest.raises(SystemExit):
        parser.parse_args(["--scales", "600,0"])
    assert "argument --scales: scales must be positive integers separated by commas, got '600,0'" in \
        capsys.readouterr().err
