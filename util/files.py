"""Files that appear whole or not at all: written beside their place, then renamed into it."""
import contextlib
import os
from collections.abc import Iterator

from util.errors import UserError


@contextlib.contextmanager
def replaced_atomically(path: str, description: str, consequence: str = "") -> Iterator[str]:
    """Yield a temporary path beside `path` (hidden, named for this process) for the block to write;
    then rename it over `path`. On an OSError the temporary file is removed and the error becomes
    `cannot write <description>: <reason><consequence>`."""
    temporary = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise UserError(f"cannot write {description}: {error.strerror}{consequence}") from None
