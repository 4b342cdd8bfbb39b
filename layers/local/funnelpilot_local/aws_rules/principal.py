"""Who is calling AWS: the IAM role of the function, state machine or schedule whose code
runs in this thread (None: the runtime itself, or a test).

Threads inherit their starter's principal: moto's Step Functions interpreter runs an
execution, its Map iterations, Parallel branches and Tasks in threads of their own, and the
calls they make (a Lambda invoke) are the state machine's. An execution's own thread takes
the execution's role explicitly (see moto_adapter), whatever thread started it.
"""
import contextlib
import threading

_local = threading.local()
_original_start = None


def current() -> str | None:
    return getattr(_local, "role", None)


def set_current(role: str | None) -> None:
    _local.role = role


@contextlib.contextmanager
def acting_as(role: str | None):
    """Run the block as ``role`` (a role ARN), then restore the previous principal."""
    previous = current()
    _local.role = role
    try:
        yield
    finally:
        _local.role = previous


def _start(self):
    role = current()
    if role is not None and not getattr(self, "_fp_principal_wrapped", False):
        run = self.run

        def run_as_starter():
            _local.role = role
            run()

        self.run = run_as_starter
        self._fp_principal_wrapped = True
    _original_start(self)


def install() -> None:
    global _original_start
    if _original_start is None:
        _original_start = threading.Thread.start
        threading.Thread.start = _start


def uninstall() -> None:
    global _original_start
    if _original_start is not None:
        threading.Thread.start = _original_start
        _original_start = None
