"""Files on disk: checking an output folder before any work, atomic writes, and the run-folder lock.

- :func:`check_output_folder` says, before a run trains or samples anything, whether its output
  folder can be created and written (it creates nothing), so no run discovers a bad ``--out``
  after the work is done.
- :func:`atomic_write` writes a file through a uniquely named temporary file in the same folder
  and ``os.replace``: a crash leaves the old file, and two writers never share a temporary file.
- :func:`lock_run_folder` keeps a second ``train`` out of a folder that a run is using. The lock
  file ``.diffusion_utils.lock`` holds the owner's pid; the operating system releases the lock
  when the owner dies (``flock`` on Linux and macOS, ``msvcrt.locking`` on Windows), so a lock
  left by a killed run is stale and the next run takes it over with a one-line note.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import stat
import threading
import warnings
from pathlib import Path

from .errors import RunFolderError

LOCK_NAME = ".diffusion_utils.lock"
TMP_SUFFIX = ".tmp"
_LOCK_BYTE = 4096  # Windows locks this byte (past the pid text, which must stay readable)


def is_writable(path: Path) -> bool:
    """Writable by its permission bits — root ignores them, but read-only files should stay so."""
    try:
        return os.access(path, os.W_OK) and bool(path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    except OSError:
        return False


def check_output_folder(folder: str | os.PathLike, writes: tuple[str, ...] = (), what: str = "output folder") -> Path:
    """Raise :class:`RunFolderError` unless ``folder`` is, or can be created as, a writable folder
    in which every path of ``writes`` (relative; a trailing ``/`` marks a folder) can be written.
    ``what`` names the folder in the messages.

    Creates nothing. Returns ``folder`` as a :class:`Path` (``~`` expanded).
    """
    if not os.fspath(folder).strip():
        raise RunFolderError(f"the {what} is an empty string; name a folder (e.g. outputs)")
    folder = Path(os.fspath(folder)).expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:  # the nearest existing ancestor
        if existing.is_symlink():
            raise RunFolderError(f"{what} {folder}: {existing} is a broken link; choose another {what}")
        existing = existing.parent
    if not existing.is_dir():
        raise RunFolderError(f"{what} {folder} cannot be created: {existing} is a file, not a folder; "
                             f"choose another {what}")
    if not is_writable(existing):
        raise RunFolderError(f"{what} {folder} cannot be written: {existing} is read-only; "
                             f"choose another {what} or make it writable")
    if existing == folder:
        for name in writes:
            target, want_folder = folder / name.rstrip("/"), name.endswith("/")
            if target.exists() and target.is_dir() != want_folder:
                kind = "a folder" if target.is_dir() else "a file"
                raise RunFolderError(f"{target} is {kind} in the way of an output; move it or choose another "
                                     f"output folder")
            if target.exists() and not is_writable(target):
                raise RunFolderError(f"{target} is read-only; make it writable or choose another output folder")
    return folder


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, outermost first."""
    return [parent for parent in reversed((folder, *folder.parents)) if not parent.exists()]


def make_folder(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it created, outermost first (for :func:`remove_empty`)."""
    created = missing_folders(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return created


def remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` that are empty, innermost first (the undo of :func:`make_folder`)."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def atomic_write(path: str | os.PathLike, write) -> Path:
    """``write(file)`` into a new temporary file (binary, opened for writing) in ``path``'s folder,
    then ``os.replace`` it onto ``path``. A failed or interrupted write keeps the old file and
    removes the temporary one; a write the disk refuses is a one-line :class:`RunFolderError`.

    The temporary name ``.NAME.PID-RANDOM.tmp`` is unique, so concurrent writers never collide.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as file:
            write(file)
        os.replace(tmp, path)
    except BaseException as err:  # the old file stays, the temporary file goes
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise RunFolderError(f"could not write {path} ({err.strerror or type(err).__name__}); the previous "
                                 f"file, if any, is intact: free some space or choose another output folder") from None
        raise
    return path


def remove_stale_temp_files(folder: Path, name: str) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` for ``folder/name`` (left by a killed
    writer). Call it only while holding the folder's lock: then no live writer owns them."""
    stale = [p for p in folder.glob(f".{name}.*{TMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# ---------------------------------------------------------------------------------------------
# The run-folder lock
# ---------------------------------------------------------------------------------------------
_held: dict[Path, int] = {}  # folder → nesting depth, for the locks this process holds
_held_guard = threading.Lock()


def _try_lock(fd: int) -> bool:
    """Take the operating system's exclusive lock on ``fd`` without waiting; False if another holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        os.lseek(fd, _LOCK_BYTE, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _owner(path: Path) -> str:
    """What a lock file says about its owner ("pid 123 on host"), or "" if unreadable."""
    try:
        words = path.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return ""
    if len(words) >= 2 and words[0].isdigit():
        return f"pid {words[0]} on {words[1]}"
    return ""


@contextlib.contextmanager
def lock_run_folder(folder: str | os.PathLike):
    """Hold ``folder``'s lock while the block runs; :class:`RunFolderError` if another run holds it.

    Creates ``folder`` if needed and, if the block fails, removes the folders it created as long
    as they are empty, so a refused run leaves the disk as it found it. A lock file left by a run
    that died is taken over with a warning that names it. Re-entrant within one process.

    Why not the ``filelock`` package: it takes the same ``flock``, but it does not keep what the
    refusal and the clean-up promise. Its 3.x releases open the lock file with ``O_TRUNC``, so a
    refused run would erase the owner's pid before it could name it; no release deletes the lock
    file afterwards (4.x keeps it on purpose, so waiters share one inode), so every finished run
    would leave one behind and the stale-lock warning could not tell a dead run from a finished
    one; and what is re-entrant there is one lock object, not a folder within a process.
    """
    folder = check_output_folder(folder)
    key = folder.resolve()
    with _held_guard:
        nested = key in _held
        _held[key] = _held.get(key, 0) + 1
    try:
        if nested:
            yield folder
            return
        path, created, fd = folder / LOCK_NAME, [], None
        try:
            try:
                created = make_folder(folder)
                fd = _acquire(path, folder)
            except OSError as err:
                raise RunFolderError(f"cannot use {folder} as an output folder ({err.strerror or type(err).__name__}); "
                                     f"choose another output folder") from None
            yield folder
        except BaseException:
            _release(path, fd)
            remove_empty(created)
            raise
        _release(path, fd)
    finally:
        with _held_guard:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]


def _acquire(path: Path, folder: Path) -> int:
    """Open and lock the lock file ``path``; write our pid into it; return its descriptor."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            os.close(fd)
            owner = _owner(path) or f"see {path}"
            raise RunFolderError(f"{folder} is in use by another training run ({owner}); wait for it to finish or "
                                 f"choose another output folder (if no run is active, delete {path})")
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the previous owner deleted the file between our open and our lock: try again
    previous = _owner(path)
    if previous:
        warnings.warn(f"took over the lock of {folder} from a run that ended without releasing it ({previous})")
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return fd


def _release(path: Path, fd: int | None) -> None:
    """Delete the lock file, then drop the lock. (In that order on Linux and macOS, so that no
    other run can lock the file in between; Windows cannot delete an open file, so it closes first.)"""
    if fd is None:
        return
    try:
        path.unlink()
        deleted = True
    except OSError:
        deleted = False
    os.close(fd)
    if not deleted:
        with contextlib.suppress(OSError):
            path.unlink()
