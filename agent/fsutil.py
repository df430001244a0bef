"""Small filesystem helpers shared by the I/O modules (atomic writes)."""
from __future__ import annotations

import os
import tempfile


def atomic_write(path: str, data: bytes | str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never half.

    A temp file in the same folder, fsync'ed, then ``os.replace``.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
