"""atomic_write: the old file or the new one, never half of one; permissions as open() gives."""
import os

import pytest

from minidet.atomic import atomic_write


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
