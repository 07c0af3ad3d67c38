"""Writing a file so that a reader sees the old version or the new one, never half of one.

The new version is written to a temporary file in the target's folder (so that the rename is atomic),
flushed to disk (fsync) and renamed over the target; on any error (a full disk, Ctrl-C) the temporary
file is removed and the target left as it was. atomic_write hands the block an open file;
atomic_path hands it the temporary file's name, for writers that want a name (OpenCV's imwrite and
VideoWriter).
"""
import contextlib
import os
import uuid


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """A temporary name beside `path`, ending in `suffix` (OpenCV picks the format by it); when the
    block ends without error, the file written under that name is flushed to disk and renamed over
    `path`; on any error it is removed and `path` left as it was.

        with atomic_path("out/detections.png", ".png") as tmp:
            if not cv2.imwrite(tmp, picture):
                raise OSError("out/detections.png: cannot be written")
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path, mode="wb", **open_args):
    """Open a temporary file beside `path` (atomic_path): renamed over `path` when the block ends
    without error, removed on any error. open_args (encoding, newline) go to open().

        with atomic_write("runs/x/checkpoint.npz") as f:
            np.savez(f, **arrays)
    """
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)     # the umask applies, as for open()
        with os.fdopen(fd, mode, **open_args) as f:
            yield f
