"""An interrupt (Ctrl-C, the CLI's SIGTERM) that arrives while PyOpenGL converts the arguments of an EGL call
reaches the caller as an interrupt, not as ``ctypes.ArgumentError`` (issue #15: a SIGTERM during a collection
once ended in a traceback, exit status 1)."""

from __future__ import annotations

import ctypes

import pytest

from ltc_control.cli import Terminated
from ltc_control.envs.render import _gl_call


def _ctypes_call_raising(exc: BaseException) -> None:
    """A real foreign call whose argument conversion raises ``exc`` (as a signal handler would there)."""

    class Arg:
        @classmethod
        def from_param(cls, value: object) -> object:
            raise exc

    func = ctypes.CDLL(None).abs
    func.argtypes = [Arg]
    func(1)


@pytest.mark.parametrize(
    "exc", [KeyboardInterrupt("ctrl-c"), Terminated("signal 15")], ids=["sigint", "sigterm"]
)
def test_interrupt_in_argument_conversion_is_raised_again(exc: BaseException) -> None:
    with pytest.raises(ctypes.ArgumentError):
        _ctypes_call_raising(exc)  # what ctypes alone makes of it
    with pytest.raises(type(exc)) as info:
        _gl_call(lambda: _ctypes_call_raising(exc))
    assert type(info.value) is type(exc) and str(info.value) == str(exc)


def test_other_argument_errors_pass_through() -> None:
    with pytest.raises(ctypes.ArgumentError, match="ValueError: bad value"):
        _gl_call(lambda: _ctypes_call_raising(ValueError("bad value")))
    assert _gl_call(lambda: 42) == 42
