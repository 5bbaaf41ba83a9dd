"""files.py: the output-folder check, atomic writes with unique temporary names, the run-folder lock."""

from __future__ import annotations

import os
import sys

import pytest

from diffusion_utils.plumbing.errors import RunFolderError
from diffusion_utils.plumbing.files import (LOCK_NAME, atomic_write, check_output_folder, lock_run_folder,
                                   remove_stale_temp_files)

fcntl = pytest.importorskip("fcntl") if sys.platform != "win32" else None


def one_line(err: BaseException) -> str:
    message = str(err)
    assert message and "\n" not in message, repr(message)
    return message


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------------------
# The output-folder check: creates nothing, one line per kind of problem
# ---------------------------------------------------------------------------------------------
def test_a_creatable_folder_passes_and_nothing_is_created(tmp_path):
    assert check_output_folder(tmp_path / "a" / "b", ("x.png", "samples/")) == tmp_path / "a" / "b"
    assert listing(tmp_path) == []


@pytest.mark.parametrize("case, expected", [
    ("below a file", "is a file, not a folder"),
    ("is a file", "is a file, not a folder"),
    ("read-only", "read-only"),
    ("below read-only", "read-only"),
    ("empty name", "empty"),
    ("broken link", "broken link"),
    ("output is a folder", "in the way"),
    ("output folder is a file", "in the way"),
    ("read-only output", "read-only"),
])
def test_unusable_output_folders_are_one_line(case, expected, tmp_path):
    """Everything that would make a run fail when it writes, found before it starts."""
    (tmp_path / "file").write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "old.png").write_text("x")
    folder = {"below a file": tmp_path / "file" / "x", "is a file": tmp_path / "file", "read-only": ro,
              "below read-only": ro / "new" / "deeper", "empty name": "", "broken link": tmp_path / "link" / "x",
              }.get(case, tmp_path / "out")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "grid.png").mkdir()
    (tmp_path / "out" / "samples").write_text("x")
    (tmp_path / "out" / "fixed.png").write_text("x")
    (tmp_path / "out" / "fixed.png").chmod(0o444)
    writes = {"output is a folder": ("grid.png",), "output folder is a file": ("samples/",),
              "read-only output": ("fixed.png",)}.get(case, ())
    ro.chmod(0o555)
    before = listing(tmp_path)
    try:
        with pytest.raises(RunFolderError) as info:
            check_output_folder(folder, writes)
        assert expected in one_line(info.value)
    finally:
        ro.chmod(0o755)
    assert listing(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------
def test_concurrent_atomic_writes_use_different_temporary_files(tmp_path):
    """A write that starts while another is in progress (same target) gets its own temporary
    file: both succeed, the last to finish wins, no temporary file is left."""
    target = tmp_path / "ck.pth"
    names = []

    def outer(file):
        names.append(file.name)
        file.write(b"outer")
        atomic_write(target, lambda inner: (names.append(inner.name), inner.write(b"inner")))

    atomic_write(target, outer)
    assert len(set(names)) == 2 and all(os.path.dirname(n) == str(tmp_path) for n in names)
    assert target.read_bytes() == b"outer" and listing(tmp_path) == ["ck.pth"]


def test_a_write_the_disk_refuses_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "ck.pth"
    target.write_bytes(b"old")

    def disk_full(file):
        raise OSError(28, "No space left on device")

    with pytest.raises(RunFolderError) as info:
        atomic_write(target, disk_full)
    assert "No space left on device" in one_line(info.value) and "intact" in str(info.value)
    assert target.read_bytes() == b"old" and listing(tmp_path) == ["ck.pth"]


def test_stale_temporary_files_of_one_name_are_removed(tmp_path):
    for name in (".ck.pth.123-ab12cd34.tmp", ".ck.pth.tmp.keep", ".other.pth.9-00.tmp", "ck.pth"):
        (tmp_path / name).write_text("x")
    removed = remove_stale_temp_files(tmp_path, "ck.pth")
    assert [p.name for p in removed] == [".ck.pth.123-ab12cd34.tmp"]
    assert listing(tmp_path) == [".ck.pth.tmp.keep", ".other.pth.9-00.tmp", "ck.pth"]


# ---------------------------------------------------------------------------------------------
# The run-folder lock
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def held_by_another(tmp_path):
    """``tmp_path/run`` locked as another process would hold it (a separate open file + flock)."""
    folder = tmp_path / "run"
    folder.mkdir()
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"4242 otherhost\n")
    yield folder
    os.close(fd)


def test_a_locked_folder_is_refused_naming_the_owner(held_by_another):
    before = listing(held_by_another)
    with pytest.raises(RunFolderError) as info:
        with lock_run_folder(held_by_another):
            pytest.fail("the block must not run")
    message = one_line(info.value)
    assert "in use" in message and "pid 4242 on otherhost" in message and LOCK_NAME in message
    assert listing(held_by_another) == before and (held_by_another / LOCK_NAME).read_text() == "4242 otherhost\n"


def test_the_lock_holds_our_pid_is_reentrant_and_is_removed_after(tmp_path):
    folder = tmp_path / "new" / "run"
    with lock_run_folder(folder) as locked:
        assert locked == folder
        assert (folder / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        with lock_run_folder(folder):  # the same process again (train() inside the CLI): fine
            pass
        assert (folder / LOCK_NAME).exists()
        (folder / "result.txt").write_text("kept")
    assert listing(tmp_path) == ["new", "new/run", "new/run/result.txt"]


def test_a_stale_lock_is_taken_over_with_a_one_line_warning(tmp_path):
    """A lock file left by a killed run (no process holds it) names a pid that is gone."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_NAME).write_text("999999 somehost\n")
    with pytest.warns(UserWarning, match=r"took over the lock .* \(pid 999999 on somehost\)") as record:
        with lock_run_folder(folder):
            assert (folder / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert not (folder / LOCK_NAME).exists()


def test_a_failed_run_leaves_no_folder_it_created(tmp_path):
    """The lock creates the folder; if the run then fails before writing anything, it goes again."""
    with pytest.raises(ValueError):
        with lock_run_folder(tmp_path / "a" / "b"):
            raise ValueError("bad data")
    assert listing(tmp_path) == []
