"""One train.py run per checkpoint name: cv/lm_<savefile>.lock, held while the run writes there.

Two runs writing the same log and checkpoint names would interleave the CSV log and overwrite each
other's checkpoints, so the second refuses to start. The lock is the kernel's (flock) on the open
file, not the file's presence: it goes with the process however that ends (exit, crash, SIGKILL),
and a stale file left behind locks nothing. The file records the holder's process id and start
time for the error message. Runs with other -savefile names share a folder without conflict.
"""
import fcntl
import os
import time
from typing import IO

from util.errors import UserError


def lock_path(checkpoint_dir: str, savefile: str) -> str:
    return os.path.join(checkpoint_dir, f"lm_{savefile}.lock" if savefile else "lm.lock")


class RunLock:
    """Held from construction until the process ends."""

    def __init__(self, checkpoint_dir: str, savefile: str):
        self.path = lock_path(checkpoint_dir, savefile)
        try:
            # left open for the life of the run: closing the file releases the lock
            handle: IO[str] = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115
        except OSError as error:
            raise UserError(f"cannot create the run's lock file {self.path}: {error.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(200).strip() or "another process"
            handle.close()
            name = f"-savefile {savefile}" if savefile else "the default -savefile"
            raise UserError(f"{os.path.dirname(self.path) or '.'} is in use by another train.py run with {name} "
                            f"({holder}); wait for it to end, or give this run another -checkpoint_dir or "
                            f"-savefile") from None
        except OSError as error:  # a file system without locks (some network mounts)
            handle.close()
            raise UserError(f"cannot lock {self.path}: {error.strerror}") from None
        handle.truncate(0)
        handle.write(f"train.py process {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self.handle = handle
