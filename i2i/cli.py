"""Command-line plumbing shared by the project's entry points."""
from __future__ import annotations

import functools
import sys
from typing import Callable


def user_errors(*errors: type[BaseException]) -> Callable:
    """Decorates a `main(...) -> int`: the given (user) errors print one `error: ...` line and return exit status 2,
    instead of a traceback."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except errors as error:
                print(f"error: {error}", file=sys.stderr)
                return 2

        return run

    return wrap
