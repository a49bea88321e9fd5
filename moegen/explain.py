"""`moegen explain`: a plan as a readable table."""

from __future__ import annotations

from moegen.plan.common import PSUM_BANKS, SBUF_BYTES, KernelPlan


def _table(rows: list[tuple[str, str]]) -> list[str]:
    width = max((len(k) for k, _ in rows), default=0)
    return [f"  {key:<{width}}  {value}" for key, value in rows]


def explain(plans: list[KernelPlan]) -> str:
    out = []
    for plan in plans:
        out.append(f"kernel {plan.kernel_name}  (family {plan.family}, lnc {plan.lnc}, target {plan.target})")
        out += _table([(name, str(value)) for name, value in plan.numbers()])
        out.append("  on-chip memory (per partition):")
        rows = [
            (
                f"{b.memory} {b.name}",
                f"{b.count} x [{b.partitions}, {b.bytes_per_partition} B] = {b.total_per_partition} B",
            )
            for b in plan.buffers
        ]
        rows.append(
            (
                "SBUF total",
                f"{plan.sbuf_bytes()} / {SBUF_BYTES[plan.target]} B "
                f"({100 * plan.sbuf_bytes() / SBUF_BYTES[plan.target]:.1f}%)",
            )
        )
        rows.append(("PSUM banks", f"{plan.psum_banks()} / {PSUM_BANKS}"))
        out += ["  " + line for line in _table(rows)]
        if plan.decisions:
            out.append("  decisions:")
            out += [f"    - {what}: {why}" for what, why in plan.decisions]
        out.append("")
    return "\n".join(out)
