"""`nki.isa` enums and small classes (values exactly as in api.json), and the instruction handle."""

from __future__ import annotations

import enum

from moegen.sim.errors import NkiSimError


class engine(enum.Enum):  # noqa: N801 - the NKI name
    """Neuron Device engines."""

    unknown = 0
    tensor = 1
    scalar = 2
    gpsimd = 3
    dma = 4
    vector = 5
    sync = 6


class reduce_cmd(enum.Enum):  # noqa: N801
    """Engine accumulator register commands."""

    idle = 0
    reset = 1
    reduce = 2
    reset_reduce = 3
    load_reduce = 4


class dge_mode(enum.Enum):  # noqa: N801
    """Descriptor generation mode of a DMA."""

    unknown = 0
    swdge = 1
    hwdge = 2
    none = 3


class oob_mode(enum.Enum):  # noqa: N801
    """Out-of-bounds behaviour of dynamic DMA addressing: error (default) or skip the transfer."""

    error = 0
    skip = 1


class matmul_perf_mode(enum.Enum):  # noqa: N801
    """TensorE performance mode."""

    none = "none"
    double_row = "double_row"


class nc_version(enum.Enum):  # noqa: N801
    """NeuronCore version: gen2 = Trn1, gen3 = Trn2, gen4 = Trn3."""

    gen2 = 2
    gen3 = 3
    gen4 = 4


class dma_engine(enum.Enum):  # noqa: N801
    dma = 1
    gpsimd_dma = 2


# Deprecated aliases (api.json `names`).
tensor_engine = engine.tensor
scalar_engine = engine.scalar
gpsimd_engine = engine.gpsimd
vector_engine = engine.vector
unknown_engine = engine.unknown

# Raised when hardware constraints are violated: the simulator's own error class.
NkiValidationError = NkiSimError


class NKIObject:
    """Base of NKI helper classes (attributes set from keyword arguments)."""

    def __init__(self, **kwargs):
        for k, v in kwargs.items():
            setattr(self, k, v)


class NkiInstruction(NKIObject):
    """Handle returned by every ISA call; `depends_on` records scheduling edges (no effect in simulation:
    program order is already the execution order)."""

    def __init__(self, handle=None):
        self.handle = handle
        self.producers: list = []

    def depends_on(self, *producers):
        for p in producers:
            if not isinstance(p, NkiInstruction):
                raise NkiSimError(f"depends_on: producers must be NkiInstruction handles, got {type(p).__name__}")
        self.producers.extend(producers)
        return self


def check_enum(instr: str, operand: str, value, enum_cls):
    """Accept only members of `enum_cls` (raw integers are rejected, as in NKI)."""
    if not isinstance(value, enum_cls):
        raise NkiSimError(f"{instr}: {operand} must be a nki.isa.{enum_cls.__name__} member, got {value!r}")
    return value
