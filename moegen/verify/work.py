"""The work an MoE layer's math needs, for `moegen profile`: algorithmic MACs and minimum HBM traffic.

The tkg and cte harnesses export these as their `algorithmic_macs` / `minimum_hbm_bytes`
(`moegen.verify.profile` asks each family's harness); the timeline model itself knows nothing of MoE.
"""

from __future__ import annotations

import numpy as np

from moegen.plan.common import KernelPlan

PER_EXPERT_WORDS = ("weight", "bias", "scale")


def moe_layer_macs(plan: KernelPlan, tokens: int) -> int:
    """T x K x (input projections + down) x H x I: 3 projections gated (gate, up, down), 2 not gated,
    scaled by the share of experts local to this rank; plus T x S x (projections + 1) x H x I_F for
    shared experts fused into the kernel."""
    projections = plan.mlp.projections + 1
    local = getattr(plan, "local_experts", plan.experts) / plan.experts
    macs = tokens * plan.top_k * projections * plan.hidden * plan.intermediate * local
    shared = getattr(plan, "shared", None)
    if shared:
        macs += tokens * shared.experts * (shared.projections + 1) * plan.hidden * shared.intermediate
    return int(round(macs))


def needed_experts(plan: KernelPlan, inputs: dict) -> tuple[int, int] | None:
    """(experts some token selects on this rank, experts per-expert arrays hold), or None (no routing)."""
    if "expert_index" not in inputs:
        return None
    held = getattr(plan, "local_experts", plan.experts)
    ids = np.unique(np.asarray(inputs["expert_index"]))
    if held < plan.experts:  # EP: the rank the harness runs (the last one) holds a window of experts
        first = (plan.ep - 1) * held
        ids = ids[(ids >= first) & (ids < first + held)]
    return int(ids.size), held


def moe_minimum_hbm_bytes(plan: KernelPlan, inputs: dict, trace: list, output_mems: list) -> int | None:
    """HBM bytes the layer needs moved: each needed expert's weights (and biases, scales) once, every other
    input once, and the tensors the kernel returns (`output_mems`, trace mem keys) once, as far as it
    touched them. HBM scratch the kernel allocates for itself (e.g. the two cores' partial sums of a
    shard=block prefill) is the kernel's choice, not the layer's need: not counted. None: no routing
    (the model's default)."""
    import moegen.perf as perf

    need = needed_experts(plan, inputs)
    if need is None:
        return None
    used, held = need
    total = 0
    for mem, nbytes in perf.report.touched_hbm_bytes(trace).items():
        name = mem.split(":")[1]
        array = inputs.get(name)
        if array is None:  # a tensor the kernel allocated: its output (as much as it touched) or scratch
            total += nbytes if mem in output_mems else 0
        elif (
            array.ndim
            and array.shape[0] == held
            and any(w in name for w in PER_EXPERT_WORDS)
            and not name.startswith("shared_")  # fused shared experts: every one is needed
        ):
            total += array.nbytes * used // held
        else:
            total += array.nbytes
    return total
