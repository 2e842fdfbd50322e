"""Files we write are complete or absent, with the permissions a normal write gives them."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# A temporary file of write_atomic: ``.{stem}.`` + tempfile's 8 random characters + ``{suffix}``
_TEMP_CHARS = "[a-z0-9_]{8}"
# An unlocked temporary file at least this old belongs to a write that was killed (SIGKILL, a
# power cut): a live write holds a lock on its temporary file from the moment it exists.
STALE_TEMP_S = 5.0
_HIDDEN: dict[str, set[str]] = {}  # folder -> its hidden names when sweep_stale_temps first listed it


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

    A write killed outright (SIGKILL) cannot remove its temporary file: the next write of the
    same ``path`` does (:func:`sweep_stale_temps`), and says so on stderr. The temporary file is
    locked (``flock``) while it is written, so that a write in progress is never taken for one.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=directory)
    with contextlib.suppress(OSError):  # without flock (some file systems) the age check alone protects it
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "in use" for sweep_stale_temps, until closed
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        os.close(fd)
    return path


def temp_pattern(path) -> re.Pattern:
    """The names :func:`write_atomic` gives the temporary files of ``path`` (exactly those)."""
    path = Path(path)
    return re.compile(re.escape(f".{path.stem}.") + _TEMP_CHARS + re.escape(path.suffix) + r"\Z")


def sweep_stale_temps(path, *, min_age_s: float = STALE_TEMP_S) -> list[Path]:
    """Remove the temporary files an earlier, killed :func:`write_atomic` of ``path`` left beside
    it; returns them. Only names of exactly that pattern, regular files, not locked by a write in
    progress and untouched for ``min_age_s`` seconds; each removal is one line on stderr. A folder
    is listed at its first write in this process (what a killed earlier run left is there then)."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    pattern = temp_pattern(path)
    removed: list[Path] = []
    key = os.path.realpath(directory)
    if key not in _HIDDEN:  # a folder is listed once per process: thousands of writes into one stay cheap
        try:
            _HIDDEN[key] = {n for n in os.listdir(directory) if n.startswith(".")}
        except OSError:
            return removed
    names = [n for n in tuple(_HIDDEN[key]) if pattern.match(n)]  # (a copy: writers in threads share the set)
    for name in sorted(names):
        tmp = directory / name
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone meanwhile, a link, unreadable: not ours to judge
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or time.time() - st.st_mtime < min_age_s:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: a write in progress
                continue
            os.remove(tmp)
        except OSError:
            continue
        finally:
            os.close(fd)
        removed.append(tmp)
        print(
            f"note: removed {tmp} ({_size(st.st_size)}), the temporary file of an earlier write of {path.name} "
            "that was killed before it finished",
            file=sys.stderr,
        )
    _HIDDEN[key].difference_update(n for n in names if not os.path.lexists(directory / n))  # removed, or done
    return removed


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} bytes"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def probe_folder(directory) -> None:
    """Create ``directory`` (and its parents) as a write would, and write and remove a hidden probe
    file there: an OSError now, before the long work, instead of after it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=directory)
    os.close(fd)
    os.remove(probe)


def unwritable(path, flag: str) -> str | None:
    """Why a file cannot be written at ``path`` (one line naming ``flag``, ``path`` and the fix),
    or None: checked before the long work that produces it. The parent folders are created, as
    the write would create them, and a probe file is written there and removed."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        return f"{flag} {path}: is a folder; give a file name"
    try:
        probe_folder(directory)
    except OSError as e:
        return f"{flag} {path}: cannot write there ({e.strerror or e}); choose a writable folder"
    return None


def walk_files(root) -> tuple[list[Path], list[tuple[Path, Path]], list[tuple[Path, Path]]]:
    """Every file under the folder ``root``, sorted, following symbolic links to folders.

    Returns ``(files, followed, cycles)``: ``followed`` lists the ``(link, target)`` folder links
    walked into, ``cycles`` those skipped because their target is the folder holding them or one
    above it (walking it would never end), by real path. Paths keep the link's name (``root/link/x.png``);
    a folder reached twice through two links is listed twice, under each name."""
    root = Path(root)
    files: list[Path] = []
    followed: list[tuple[Path, Path]] = []
    cycles: list[tuple[Path, Path]] = []

    def walk(folder: Path, ancestors: frozenset) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            p = folder / entry.name
            try:
                if entry.is_dir(follow_symlinks=True):
                    real = os.path.realpath(p)
                    if real in ancestors:  # a link back up (also reached below an outer link)
                        cycles.append((p, Path(real)))
                        continue
                    if entry.is_symlink():
                        followed.append((p, Path(real)))
                    walk(p, ancestors | {real})
                elif entry.is_file(follow_symlinks=True):
                    files.append(p)
            except OSError:
                continue

    walk(root, frozenset({os.path.realpath(root)}))
    return sorted(files), followed, cycles


# errno values that mean "the disk or the folder will not take the file": a user's problem with a
# clear fix, reported as one line by the command lines (not a traceback)
# (EFBIG: past a file-size limit, ulimit -f or the file system's)
WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EROFS, errno.EPERM)


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


def checkpoint_fingerprint(path) -> str:
    """sha256 of a checkpoint file; of the names, sizes and times of a folder's files (a run or
    Orbax directory, which can be large)."""
    h = hashlib.sha256()
    p = Path(path)
    if p.is_dir():
        for f in walk_files(p)[0]:
            st = f.stat()
            h.update(f"{f.relative_to(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return "files:" + h.hexdigest()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()
