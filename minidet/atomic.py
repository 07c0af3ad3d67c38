"""Writing a file so that a reader sees the old version or the new one, never half of one."""
import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside `path`; when the block ends without error, flush it to disk
    (fsync) and rename it over `path`; on any error (a full disk, Ctrl-C) remove it and leave
    `path` as it was. The temporary file is in the same folder, so the rename is atomic.

        with atomic_write("runs/x/checkpoint.npz") as f:
            np.savez(f, **arrays)
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
