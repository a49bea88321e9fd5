"""Errors raised by the NKI CPU simulator."""


class NkiSimError(Exception):
    """A kernel did something the real compiler or hardware would reject.

    The message names the instruction, the operand, the limit and the value.
    """
