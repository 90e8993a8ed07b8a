"""Write a directory all at once or not at all.

Everything is written into a temporary directory beside the target (same filesystem, so the final
``rename`` is atomic) and renamed into place only when complete. A failure at any point removes the
temporary directory: readers never see a half-written checkpoint. Replacing an existing directory
(``force=True``) moves the old one aside, renames the new one in, then deletes the old one; if the
second rename fails the old one is put back. Temporary folders carry the writer's pid
(:mod:`smoothquant.tmpdirs`), so the next run into the same place removes the ones a killed run
left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from smoothquant.errors import DiskSpaceError, ExportError, OutputExistsError
from smoothquant.tmpdirs import remove_stale, temp_name, temp_prefix

# room for config, tokenizer and recipe files and filesystem overhead beyond the tensor bytes
SPACE_MARGIN_BYTES = 64 * 2**20
SPACE_MARGIN_FRACTION = 0.02


def _os_error(e: OSError, target: Path) -> ExportError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskSpaceError(f"the disk filled up while writing {target}; nothing was written: {e}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ExportError(
            f"cannot write {target}: {e.strerror} (is {target.parent} read-only?). Choose a writable "
            "output directory."
        )
    return ExportError(f"writing {target} failed, nothing was written: {e}")


def check_target(target: Path, force: bool) -> None:
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise OutputExistsError(f"{target} exists and is not a directory; choose another output path")
        if not force:
            raise OutputExistsError(
                f"{target} already exists; pass --force (force=True) to replace it, or choose another path"
            )


def _make_temp_dir(target: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=temp_prefix(target), dir=target.parent))


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_parent(target: Path) -> None:
    """The folder ``target`` goes into exists, is a folder, and accepts new folders."""
    parent = target.parent
    ancestor = _existing_ancestor(parent)
    if not ancestor.is_dir():
        raise ExportError(
            f"{ancestor} is a file, not a directory, so {target} cannot be created in it; "
            "choose an output path inside a directory"
        )
    if ancestor != parent:
        raise ExportError(
            f"the parent directory {parent} does not exist; create it first (mkdir -p {parent})"
        )
    try:  # os.access says yes to root on read-only filesystems and /proc: try it for real
        _make_temp_dir(target).rmdir()
    except OSError as e:
        raise ExportError(
            f"cannot write in {parent}: {e.strerror} (is it read-only?); choose a writable output directory"
        ) from e


def check_output(target: Path, force: bool) -> None:
    """What can be checked before any work: the target is free (or ``force``), its parent is a
    writable directory; temporaries that killed runs left beside it are removed."""
    check_target(target, force)
    check_parent(target)
    remove_stale(target)


def check_free_space(parent: Path, needed_bytes: int) -> None:
    needed = int(needed_bytes * (1 + SPACE_MARGIN_FRACTION)) + SPACE_MARGIN_BYTES
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise DiskSpaceError(
            f"not enough free space in {parent}: the checkpoint needs about {needed / 2**20:.0f} MiB, "
            f"{free / 2**20:.0f} MiB are free. Free some space or choose another output directory."
        )


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, *, force: bool, needed_bytes: int) -> Iterator[Path]:
    """Yield a temporary directory; on success it becomes ``target``.

    Checks, before anything is written: ``target`` is free (or ``force``), its parent exists, and
    the parent's filesystem has ``needed_bytes`` (plus a margin) free.
    """
    target = Path(target).absolute()
    parent = target.parent
    check_output(target, force)
    check_free_space(parent, needed_bytes)
    try:
        tmp = _make_temp_dir(target)
    except OSError as e:
        raise _os_error(e, target) from e
    try:
        yield tmp
        publish(tmp, target, force=force)
    except ExportError:
        raise
    except OSError as e:
        raise _os_error(e, target) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful rename


def publish(tmp: Path, target: Path, *, force: bool) -> None:
    """Make the complete directory ``tmp`` (beside ``target``) appear as ``target`` in one rename."""
    try:
        _finish_files(tmp)
        _move_into_place(tmp, target, force)
    except ExportError:
        raise
    except OSError as e:
        raise _os_error(e, target) from e


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _finish_files(root: Path) -> None:
    """Give files and folders the permissions the umask asks for (mkdtemp makes the folder private,
    and a server running as another user must read the checkpoint), and flush file contents before
    the rename makes them visible (a crash must not expose empty files)."""
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            path.chmod(0o777 & ~mask)
        elif path.is_file():
            path.chmod(0o666 & ~mask)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _move_into_place(tmp: Path, target: Path, force: bool) -> None:
    check_target(target, force)  # another process may have created it meanwhile
    if not target.exists():
        os.rename(tmp, target)
        return
    old = temp_name(target, "old", uuid.uuid4().hex[:8])
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
