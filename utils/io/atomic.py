"""Atomic writes: a temporary file in the target folder, renamed into place on success.

Light on purpose (standard library only): the figure renderer writes its PNGs through
:func:`atomic_path` without importing astropy (:mod:`utils.io.fitsio` re-exports it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import OutputPathError

_UMASK = os.umask(0)
os.umask(_UMASK)

#: errno values of a folder the user must fix (a file in the way, no permission, read-only).
_FOLDER_ERRNOS = {errno.EEXIST, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS}


def _folder_error(path: Path, err: OSError) -> OutputPathError:
    reason = {errno.EEXIST: "a file is in the way of the folder",
              errno.ENOTDIR: "a file is in the way of the folder",
              errno.EROFS: "the file system is read-only"}.get(err.errno, "permission denied")
    return OutputPathError(f"{path.parent}: cannot write {path.name} ({reason}); give another "
                           "output folder or fix its permissions")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    ``keep_suffix`` ends the temporary name with ``path``'s own suffix (``.tmp.gif``),
    for writers that choose the format from the file name (matplotlib's animation writers).
    A folder that cannot hold ``path`` (a file in its place, no permission)
    raises :class:`~utils.errors.OutputPathError`, a one-line user error.
    """
    path = Path(path)
    suffix = ".tmp" + (path.suffix if keep_suffix else "")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as err:
        if err.errno in _FOLDER_ERRNOS:
            raise _folder_error(path, err) from err
        raise
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; products are shared
    tmp = Path(tmp)
    try:
        yield tmp
        try:
            os.replace(tmp, path)
        except IsADirectoryError as err:
            raise OutputPathError(f"{path}: is a folder, cannot be replaced by a file; move it "
                                  "away or choose another output") from err
    finally:
        if tmp.exists():
            tmp.unlink()
