"""User-facing errors: one line on stderr and exit status 1, never a traceback."""
import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """A problem the user can fix (bad option, bad file); printed as one line."""


def fail(message: str) -> NoReturn:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(1)


def run_main(main: Callable[[list[str]], int | None]) -> None:
    """Run a script's main(argv), turning UserError into a one-line error and status 1."""
    try:
        status = main(sys.argv[1:])
    except UserError as error:
        fail(str(error))
    except BrokenPipeError:
        # `python sample.py ... | head` closes stdout early; that is not an error.
        sys.stderr.close()
        sys.exit(0)
    sys.exit(status or 0)
