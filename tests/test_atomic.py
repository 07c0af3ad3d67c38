"""atomic_write and atomic_path: the old file or the new one, never half of one; permissions as open() gives."""
import os

import pytest

from minidet.atomic import atomic_path, atomic_write


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_a_write_replaces_the_file_with_the_umask_applied(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "sub" / "f.txt", "w") as f:
            f.write("new")
    finally:
        os.umask(old)
    assert (tmp_path / "sub" / "f.txt").read_text() == "new"
    assert os.stat(tmp_path / "sub" / "f.txt").st_mode & 0o777 == 0o644


def test_a_text_write_takes_open_arguments(tmp_path):
    with atomic_write(tmp_path / "f.csv", "w", encoding="utf-8", newline="") as f:
        f.write("é\r\n")
    assert (tmp_path / "f.csv").read_bytes() == "é\r\n".encode("utf-8")


def test_a_named_temporary_is_renamed_when_written_and_removed_when_not(tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(b"old")
    with pytest.raises(OSError, match="cannot be written"):
        with atomic_path(path, ".png") as tmp:
            assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".png")
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise OSError("picture.png: cannot be written")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["picture.png"]
    with atomic_path(path, ".png") as tmp:
        with open(tmp, "wb") as f:
            f.write(b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["picture.png"]
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "never.png", ".png"):
            pass                                   # the writer wrote nothing: nothing is renamed
    assert os.listdir(tmp_path) == ["picture.png"]
