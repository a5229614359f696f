"""Files the framework writes: checked before any work (never an input, never replaced unasked) and written
atomically (a temp file in the same folder, fsync, rename), with the permissions ``open()`` would give them.

Checkpoints, exports, converted checkpoints and pictures all go through here, so a killed write never leaves a
half-written file under the final name and a tool's ``--out`` can never destroy what it reads."""
import contextlib
import os
import tempfile
from typing import BinaryIO, Iterator, Sequence

from base.errors import UsageError

TEMP_PREFIX = ".tmp-"  # util.session.claim_output_dir removes the temp files of a killed checkpoint save by this prefix


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process's umask (``mkstemp`` would give 0o600)."""
    try:  # Linux: read the umask without setting it, which would race with other threads creating files
        with open("/proc/self/status") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s contents to; on a clean exit it is fsynced, given the usual mode and
    renamed to ``path`` (the folder is created if missing). On any error the temp file is removed and ``path``
    is untouched. The temp file sits in ``path``'s folder, so the rename stays on one filesystem (atomic)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def _unwritable(folder: str) -> str | None:
    """Why no file can be written into ``folder`` (created if missing), or None."""
    existing = os.path.abspath(folder)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"this user cannot write to {existing}"
    return None


def check_output_file(path: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (), force: bool = False,
                      flag: str = "--out") -> None:
    """Refuse, in one line each, an output ``path`` (the value of ``flag``) that is a folder, that is one of
    ``inputs`` or lies inside an input folder (also through a symlink, a hard link or another spelling of the
    path), that exists while ``force`` is False, or whose folder cannot be created or written."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a folder: pass the name of the file to write")
    for source in map(os.fspath, inputs):
        if not os.path.exists(source):
            continue
        if os.path.exists(path) and os.path.samefile(path, source):
            raise UsageError(f"{flag} {path} is the input {source} itself: pass another file name to write to")
        if os.path.isdir(source) and _inside(os.path.realpath(path), os.path.realpath(source)):
            raise UsageError(f"{flag} {path} is inside the folder {source} it reads: write it elsewhere")
    if os.path.lexists(path) and not force:
        raise UsageError(f"{flag} {path} exists: pass --force to replace it, or another name")
    reason = _unwritable(os.path.dirname(os.path.abspath(path)))
    if reason:
        raise UsageError(f"cannot write {flag} {path}: {reason}: pass another path")


def check_output_folder(folder: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse, in one line, an output ``folder`` (created if missing) that is a file, would be created below a
    file, or cannot be written by this user."""
    reason = _unwritable(os.fspath(folder))
    if reason:
        raise UsageError(f"cannot write to {flag} {os.fspath(folder)}: {reason}: pass another folder")
