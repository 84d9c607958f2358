"""The files a script touches: what the user hands it, read only when it is a regular file, and what it
writes, appearing whole or not at all (written beside its place, then renamed into it)."""
import contextlib
import os
import signal
import stat
import threading
from collections.abc import Iterator
from typing import BinaryIO

from util.errors import UserError

# what a path is when it is not a regular file; a read of one of these may never end (/dev/zero,
# /dev/urandom), or an open block until a writer comes (a FIFO)
SPECIAL_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                 (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def regular_file(path: str, what: str, missing: str = "") -> os.stat_result:
    """os.stat of `path` once it is a regular file (a link to one counts); else a UserError naming it as
    `what`: `missing` (or "<what> <path> does not exist") when nothing is there."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UserError(missing or f"{what} {path} does not exist") from None
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the name
        raise UserError(f"cannot read {what} {path}: {getattr(error, 'strerror', None) or error}") from None
    _check_regular(info, path, what)
    return info


def _check_regular(info: os.stat_result, path: str, what: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in SPECIAL_KINDS if test(info.st_mode)), "not a file")
        raise UserError(f"{what} {path} is {kind}, not a regular file: only a file on disk can be read")


def open_regular(path: str, what: str, missing: str = "") -> BinaryIO:
    """`path` opened for reading (binary), when it is a regular file (regular_file's errors otherwise).
    Checked before the open, so that no device is opened, and again on the open descriptor, so that
    a path swapped in between is caught too; O_NONBLOCK, so that such a swapped-in FIFO cannot
    hang the open."""
    regular_file(path, what, missing)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserError(missing or f"{what} {path} does not exist") from None
    except OSError as error:
        raise UserError(f"cannot read {what} {path}: {error.strerror}") from None
    try:
        _check_regular(os.fstat(descriptor), path, what)
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return os.fdopen(descriptor, "rb")


def read_regular(path: str, what: str, limit: int, missing: str = "", why: str = "") -> bytes:
    """The whole of a regular file of at most `limit` bytes; a larger one is a UserError (`why`, the
    reason for the limit, ends its message). Never more than limit + 1 bytes are read, whatever the
    file's size says (a file in /proc says 0)."""
    with open_regular(path, what, missing) as handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            data = handle.read(min(size, limit) + 1)  # a read allocates what it asks for: not the limit
            if len(data) > size:  # the file grew, or its size says 0 (/proc)
                data += handle.read(limit + 1 - len(data))
        except OSError as error:
            raise UserError(f"cannot read {what} {path}: {error.strerror}") from None
    if len(data) > limit:
        raise UserError(f"{what} {path} is larger than {limit:,} bytes{why}")
    return data


# ---- writing -----------------------------------------------------------------------------------------

def temporary_beside(path: str) -> str:
    """A hidden name beside `path`, this process's own (runs writing the same folder do not collide)."""
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp")


@contextlib.contextmanager
def replaced_together(paths: list[str], description: str, consequence: str = "") -> Iterator[list[str]]:
    """Yield a temporary path beside each of `paths` for the block to write; then rename each over
    its path, with Ctrl-C and SIGTERM held until all are renamed, so that files written as a set
    (an HDF5 file and its vocabulary) are replaced as one. On any exception the temporaries are
    removed and the old files stay as they were; an OSError becomes
    `cannot write <description>: <reason><consequence>`."""
    temporaries = [temporary_beside(path) for path in paths]
    try:
        yield temporaries
        with signals_held():
            for temporary, path in zip(temporaries, paths, strict=True):
                os.replace(temporary, path)
    except BaseException as error:
        for temporary in temporaries:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
        if isinstance(error, OSError):
            raise UserError(f"cannot write {description}: {error.strerror or error}{consequence}") from None
        raise


@contextlib.contextmanager
def replaced_atomically(path: str, description: str, consequence: str = "") -> Iterator[str]:
    """replaced_together for one file: yield the temporary path for the block to write."""
    with replaced_together([path], description, consequence) as (temporary,):
        yield temporary


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM, when they come during the block, delivered as it ends: a block that must not
    be cut in two. Python runs signal handlers in the main thread only, so elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = [number for number in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(number) is not None]
    previous = {number: signal.signal(number, lambda number, _frame: caught.append(number)) for number in held}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if caught:
            signal.raise_signal(caught[0])
