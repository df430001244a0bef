"""Small filesystem helpers shared by the I/O modules (atomic writes, ``rm -rf``).

Modes: a file cdsim creates gets the mode creating it gives, as the agent's do (behaviour doc Q40):
``0666 & ~umask`` for a plain file (``0600 & ~umask`` for private state). Nothing here chmods
afterwards or calls ``os.umask()`` (which would change the umask of every thread for a moment).
"""
from __future__ import annotations

import os

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def atomic_write(path: str, data: bytes | str, *, private: bool = False) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never half.

    A new temp file in the same folder, fsync'ed, then ``os.replace``. The temp file is created with
    mode 0666 (0600 when ``private``) and the kernel takes the process umask off, so ``path`` ends
    with the mode the agent's ``File.write`` of a new file gives (umask 022: 0644, 077: 0600,
    002: 0664). A default ACL on the folder applies instead of the umask, as for the agent.
    A write interrupted before the rename leaves ``path`` as it was (and, after a kill, a
    ``.<name>.<random>.tmp`` beside it); the next write starts from a fresh temp file.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    folder = os.path.dirname(path) or "."
    base = os.path.basename(path)
    while True:
        tmp = os.path.join(folder, f".{base}.{os.urandom(4).hex()}.tmp")
        try:
            fd = os.open(tmp, _CREATE, 0o600 if private else 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove(path: str) -> None:
    """``rm -rf path`` without following symlinks: a link is removed, not what it points to; nothing
    there is no error."""
    import stat

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        import shutil

        shutil.rmtree(path)
    else:
        os.unlink(path)
