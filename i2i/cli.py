"""Command-line plumbing shared by the project's entry points."""
from __future__ import annotations

import functools
import sys
from typing import Callable


def error_message(error: BaseException) -> str:
    """The user-facing text of an error. An error raised in a DataLoader worker reaches the main process re-raised
    with the worker's whole traceback in its message; the original exception's own message is its last line."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        name, _, message = last.partition(": ")
        return message if message and " " not in name else last
    return text


def user_errors(*errors: type[BaseException]) -> Callable:
    """Decorates a `main(...) -> int`: the given (user) errors print one `error: ...` line and return exit status 2,
    instead of a traceback."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except errors as error:
                print(f"error: {error_message(error)}", file=sys.stderr)
                return 2

        return run

    return wrap
