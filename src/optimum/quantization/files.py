"""Atomic writes: a whole folder the library owns (`atomic_output_dir`), or files into a user's folder (`publish_files`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_output_dir(target: str | os.PathLike):
    """Yield a fresh temporary folder; on success it replaces `target`, on failure `target` is untouched.

    The temporary folder sits beside `target` so the final rename stays on one filesystem.
    """
    target = Path(target).resolve()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = None
    if target.exists():
        backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        backup.rmdir()
        os.replace(target, backup)
    try:
        os.replace(staging, target)
    except BaseException:
        if backup is not None:
            os.replace(backup, target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)



# A file being copied into a user's folder carries this suffix until it is renamed into place; a save that was
# killed at that moment leaves one behind, and the next save into that folder removes it.
PARTIAL_SUFFIX = ".optimum-quantization-partial"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems cannot open a folder for reading; the renames are still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _place_file(source: Path, destination: Path) -> None:
    """Put `source` at `destination` atomically: a rename on one filesystem, else a copy beside it, fsync, rename.

    The copy gets the permissions the user's umask gives a new file, as any file the user writes.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as written:  # on disk before it is visible under its name
        os.fsync(written.fileno())
    try:
        os.replace(source, destination)
        return
    except OSError:  # another filesystem (the staging folder lives in the system's temporary folder)
        pass
    partial = destination.with_name(destination.name + PARTIAL_SUFFIX)
    try:
        with open(source, "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, length=16 * 1024 * 1024)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(partial, destination)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def check_output_folder(target: str | os.PathLike) -> Path:
    """`target` as an absolute path, after checking it can be a folder: raises NotADirectoryError for a file."""
    target = Path(target).expanduser().resolve()
    for path in (target, *target.parents):
        if path.exists():
            if not path.is_dir():
                raise NotADirectoryError(f"{path} exists and is not a folder.")
            break
    return target


def publish_files(staging: str | os.PathLike, target: str | os.PathLike, *, last: str, obsolete=()) -> list[str]:
    """Move every file of `staging` into `target`, each atomically, `last` after all others; then delete `obsolete`.

    Only the files named here are created, replaced or deleted: anything else in `target` stays as it was.
    `obsolete` lists files (relative paths) a previous save wrote that this one does not; they go only after
    `last` is in place. Returns the relative paths written, `last` included.
    """
    staging, target = Path(staging), check_output_folder(target)
    target.mkdir(parents=True, exist_ok=True)
    for leftover in target.rglob(f"*{PARTIAL_SUFFIX}"):  # from a save that was killed while copying
        leftover.unlink(missing_ok=True)
    written = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    if last not in written:
        raise FileNotFoundError(f"{staging / last} was not written.")
    for relative in [*(r for r in written if r != last), last]:
        _place_file(staging / relative, target / relative)
    for relative in obsolete:
        path = (target / relative).resolve()
        # A name from an old recipe never reaches outside the folder, whatever that recipe says.
        if relative not in written and path.is_relative_to(target) and path.is_file():
            path.unlink()
    _fsync_dir(target)
    return written


STAGING_PREFIX = "optimum-quantization-save-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


def _remove_stale_staging(root: Path) -> None:
    """Remove staging folders of saves whose process is gone (killed before it could clean up)."""
    for folder in root.glob(f"{STAGING_PREFIX}*-*"):
        pid = folder.name[len(STAGING_PREFIX):].partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def staging_folder():
    """A fresh folder in the system's temporary folder, removed afterwards, also when the block fails.

    Its name carries the process id, so the next save removes one that a killed process left behind.
    """
    root = Path(tempfile.gettempdir())
    _remove_stale_staging(root)
    with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=root) as staging:
        yield Path(staging)
