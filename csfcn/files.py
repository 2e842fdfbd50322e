"""Files we write are complete or absent, with the permissions a normal write gives them."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary name beside ``path``, then rename it to ``path``.

    The parent folder is created if needed. The temporary file is hidden and keeps ``path``'s
    suffix (writers that pick a format from the name still work). It is removed if ``write``
    fails, so ``path`` is either complete or untouched (an existing file is replaced only on
    success). The result has the mode a plain ``open(path, "w")`` would give (0666 minus the
    process umask), not the 0600 of a temporary file.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


# errno values that mean "the disk or the folder will not take the file": a user's problem with a
# clear fix, reported as one line by the command lines (not a traceback)
WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM)


def write_failure(e: OSError) -> str | None:
    """One line for an OSError that a full disk or a read-only/forbidden folder raised, else None."""
    if not isinstance(e, OSError) or e.errno not in WRITE_FAILURES:
        return None
    where = f" writing {e.filename}" if e.filename else ""
    return f"{e.strerror or e}{where}: free space or choose another output folder; nothing partial was kept"


def child_path(folder, name: str) -> Path:
    """``folder / name`` for a ``name`` that comes from data (a record or file name), refusing one
    that would land outside ``folder`` (an absolute path, ``..``, a link out of it).

    The check is on real paths (``..`` and symbolic links resolved), not on the text: a
    subfolder that is a link to elsewhere is refused too, and the error names where it leads."""
    root = Path(folder).resolve()
    path = (root / name).resolve()
    if root not in path.parents:
        raise ValueError(
            f"the name {name!r} from the data would write outside {root}: it leads to {path} "
            "(following '..' and symbolic links); refusing it"
        )
    return path
