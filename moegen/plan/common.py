"""What every kernel plan shares: hardware limits, buffer accounting, plan errors."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from moegen.spec.model import Layer, Variant
from moegen.spec.options import OptionSpec

# Hardware facts (NKI docs, Trainium2/3 architecture guides). Per partition unless stated.
PARTITIONS = 128
SBUF_BYTES = {"trn2": 224 * 1024, "trn3": 256 * 1024}
# SBUF the compiler and runtime keep for themselves (nki-library reserves about 16 KiB per partition): the cte
# plans budget against SBUF_BYTES - SBUF_RESERVED.
SBUF_RESERVED = 16 * 1024
PSUM_BANK_BYTES = 2 * 1024
PSUM_BANKS = 8
MATMUL_CONTRACTION_MAX = 128
MATMUL_STATIONARY_FREE_MAX = 128
MATMUL_MOVING_FREE_MAX = 512
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int32": 4, "uint32": 4, "uint8": 1}
# NKI spellings of the spec's dtype names.
NKI_DTYPES = {
    "bf16": "nl.bfloat16",
    "fp16": "nl.float16",
    "fp32": "nl.float32",
    "fp8": "nl.float8_e4m3",
    "int32": "nl.int32",
    "uint32": "nl.uint32",
    "uint8": "nl.uint8",
}


class PlanError(Exception):
    """A variant that cannot be generated. Each problem is (option name or None, message).

    The option name lets the driver point at the option that caused it in the spec.
    """

    def __init__(self, *problems: tuple[str | None, str]):
        self.problems = list(problems)
        super().__init__("; ".join(message for _, message in problems))


@dataclass(frozen=True)
class Buffer:
    """An on-chip allocation: `count` live copies of [partitions, bytes_per_partition]."""

    name: str
    memory: str  # 'sbuf' | 'psum'
    partitions: int
    bytes_per_partition: int
    count: int = 1

    @property
    def total_per_partition(self) -> int:
        return self.bytes_per_partition * self.count


@dataclass(frozen=True, kw_only=True)
class KernelPlan:
    """Fields every family's plan carries; families subclass it with their own numbers."""

    family: str
    kernel_name: str
    spec_name: str
    lnc: int
    target: str = "trn2"
    buffers: tuple[Buffer, ...] = ()
    decisions: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def template(self) -> str:
        return f"{self.family}.py.j2"

    @property
    def argument_ranges(self) -> tuple[tuple[str, int, int | tuple[str, int]], ...]:
        """(argument, low, high) per integer argument whose values index something: each element must be
        in [low, high); high is an int or (other argument, axis), that argument's size along axis. The
        generated kernel carries them as ARGUMENT_RANGES; moegen.sim refuses a call that breaks one."""
        return ()

    def sbuf_bytes(self) -> int:
        return sum(b.total_per_partition for b in self.buffers if b.memory == "sbuf")

    def psum_banks(self) -> int:
        return sum(-(-b.bytes_per_partition // PSUM_BANK_BYTES) * b.count for b in self.buffers if b.memory == "psum")

    def numbers(self) -> list[tuple[str, object]]:
        """The family-specific fields, for `moegen explain`."""
        base = {f.name for f in fields(KernelPlan)}
        return [(f.name, getattr(self, f.name)) for f in fields(self) if f.name not in base]


def check_budget(plan: KernelPlan) -> None:
    """Raise PlanError when the plan's buffers exceed SBUF or PSUM, or a buffer breaks a limit."""
    problems: list[tuple[str | None, str]] = []
    for buffer in plan.buffers:
        if buffer.partitions > PARTITIONS:
            problems.append(
                (None, f"buffer {buffer.name}: {buffer.partitions} partitions exceed the {PARTITIONS} of SBUF/PSUM")
            )
        if buffer.memory == "psum" and buffer.bytes_per_partition > PSUM_BANK_BYTES:
            problems.append(
                (
                    None,
                    f"buffer {buffer.name}: {buffer.bytes_per_partition} bytes per partition "
                    f"exceed one PSUM bank ({PSUM_BANK_BYTES} bytes)",
                )
            )
    capacity = SBUF_BYTES[plan.target]
    if plan.sbuf_bytes() > capacity:
        problems.append(
            (None, f"SBUF: {plan.sbuf_bytes()} bytes per partition needed, {capacity} available on {plan.target}")
        )
    if plan.psum_banks() > PSUM_BANKS:
        problems.append((None, f"PSUM: {plan.psum_banks()} banks needed, {PSUM_BANKS} available"))
    if problems:
        raise PlanError(*problems)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


EP_OPTION = OptionSpec(
    "ep",
    "int",
    "expert-parallel ranks for this kernel: it holds E_L = E / ep experts (default: the layer's dims ep)",
    minimum=1,
    maximum=1024,
)
TP_OPTION = OptionSpec(
    "tp",
    "int",
    "tensor-parallel ranks for this kernel: it holds I_TP = I / tp of each expert (default: the layer's dims tp)",
    minimum=1,
    maximum=64,
)


def kernel_layer(layer: Layer, variant: Variant) -> Layer:
    """The layer as one kernel sees it: dims tp / ep replaced by the kernel's own `tp=` / `ep=` options
    (when the family has them and the kernel sets them). PlanError when they do not divide I / E."""
    dims = layer.dims
    tp = variant.options.get("tp") or dims.tp
    ep = variant.options.get("ep") or dims.ep
    problems = []
    if dims.intermediate % tp:
        problems.append(("tp", f"tp {tp}: intermediate {dims.intermediate} is not divisible by it"))
    if dims.experts % ep:
        problems.append(("ep", f"ep {ep}: experts {dims.experts} is not divisible by it"))
    if problems:
        raise PlanError(*problems)
    return replace(layer, dims=replace(dims, tp=tp, ep=ep))
