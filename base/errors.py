"""The one exception type for mistakes a user can fix (bad flag, missing data, wrong checkpoint)."""


class UsageError(RuntimeError):
    """Raised with one sentence that names the fix; the CLIs print it without a traceback and exit 2."""
