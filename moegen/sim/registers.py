"""Engine registers (`nki.isa.VirtualRegister`): 32-bit runtime integers.

Registers serve as runtime loop bounds (`nl.fori_loop`, `nl.while_loop`, `nl.dynamic_range`) and
as dynamic offsets (`.ap(scalar_offset=reg)`, `t[reg]`, `nl.ds(reg, n)`). Using a register in
Python control flow (`if reg:`, `int(reg)`) is an error: its value only exists at run time. The one
exception is the documented (NKI 0.6, deprecated; removed in 0.7) dynamic loop `while reg:`, whose
body register_loads the next condition: the loop runs while the register is non-zero.
"""

from __future__ import annotations

import linecache
import re
import sys

from moegen.sim.errors import NkiSimError

_WHILE_REG = re.compile(r"\s*while\s+[A-Za-z_][A-Za-z_0-9]*\s*:")

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def wrap_int32(value: int) -> int:
    """Wrap a Python int to the signed 32-bit range."""
    v = int(value) & 0xFFFFFFFF
    return v - 2**32 if v > INT32_MAX else v


class VirtualRegister:
    """A 32-bit register. `frozen` registers (loop induction values) cannot be written."""

    def __init__(self, state=None, frozen=False):
        self._value = wrap_int32(0 if state is None else _as_int(state, "register_alloc", "x"))
        self.frozen = bool(frozen)
        self.origin = None  # "arg[i, j] = v" when the value was register_load-ed from a kernel argument's id
        self.trace_slot = None  # its slot in the trace's register space (runtime.Core.register_region)

    def _get(self) -> int:
        return self._value

    def _set(self, value: int, instr: str) -> None:
        if self.frozen:
            raise NkiSimError(f"{instr}: dst is a read-only loop induction register (limit: writable register)")
        self._value = wrap_int32(value)
        self.origin = None

    def __bool__(self):
        f = sys._getframe(1)
        if _WHILE_REG.match(linecache.getline(f.f_code.co_filename, f.f_lineno)):
            return self._value != 0  # `while reg:` (deprecated dynamic loop, NKI 0.6 docstring)
        raise TypeError("a VirtualRegister has no compile-time value: use nl.while_loop / nl.fori_loop, not `if`")

    def __index__(self):
        raise TypeError("a VirtualRegister has no compile-time value: use it as a dynamic offset or loop bound")

    __int__ = __index__

    def __repr__(self) -> str:
        return f"VirtualRegister(<runtime value {self._value}>{', frozen' if self.frozen else ''})"


def _as_int(value, instr: str, operand: str) -> int:
    if isinstance(value, VirtualRegister):
        return value._get()
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                return int(value)
        except ImportError:  # pragma: no cover
            pass
        raise NkiSimError(f"{instr}: {operand} must be an int or VirtualRegister, got {type(value).__name__}")
    return value


def value_of(x, instr: str = "dynamic offset", operand: str = "offset") -> int:
    """Runtime integer value of an int, a VirtualRegister, or a 1-element on-chip/HBM tensor."""
    if isinstance(x, VirtualRegister):
        return x._get()
    read = getattr(x, "read", None)
    if read is not None:
        alloc = getattr(x, "_alloc", None)
        if alloc is not None and alloc.core is not None and alloc.core.run.trace_only:
            raise NkiSimError(
                f"{instr}: {operand} is the runtime value of tensor '{x.name}'; trace-only mode cannot know "
                "it (limit: run the full simulation)"
            )
        if x.size != 1:
            raise NkiSimError(
                f"{instr}: {operand} must hold 1 element (limit: shape [1] or [1,1]), got shape {x.shape}"
            )
        v = read().reshape(-1)[0]
        if x.dtype.is_float:
            v = float(v)
            if v != v:
                raise NkiSimError(f"{instr}: {operand} reads uninitialised memory (NaN)")
            return int(round(v))
        return int(v)
    return _as_int(x, instr, operand)
