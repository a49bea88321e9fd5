"""Padded-activation harness for `moegen verify` and the activation tests (see moegen/verify/__init__.py).

Inputs: a random routing of T tokens (top-2 over E experts) laid out by moegen.blocking.permuted_rows
into R rows aligned as the plan says; rows past n_used get valid-looking source ids (not -1), so only
n_used keeps the kernel off them. The outputs start filled with a sentinel (0x7B in every byte), which
the skipped rows must still hold afterwards. Squared ReLU and ReLU of a bf16 value are exact in bf16
and in fp32, so the MXFP8 words and scales are compared exactly; other activations may move a bf16
rounding (and then an fp8 element) now and then.
"""

from __future__ import annotations

import numpy as np

from moegen.blocking import permuted_rows
from moegen.plan.activation import ActivationPlan
from moegen.reference.activation import padded_activation, padded_activation_mxfp8
from moegen.reference.quant import cast, np_dtype

SENTINEL_BYTE = 0x7B
TOP_K = 2


def outputs(plan: ActivationPlan) -> tuple[str, ...]:
    return ("data", "scales") if plan.output == "mxfp8" else ("out",)


def sentinel_outputs(plan: ActivationPlan, rows: int) -> dict[str, np.ndarray]:
    """The output arrays, every byte SENTINEL_BYTE."""
    f = plan.features
    shapes = (
        {"data": ((rows, f // 4), np.uint32), "scales": ((rows, f // 32), np.uint8)}
        if plan.output == "mxfp8"
        else {"out": ((rows, f), np_dtype(plan.dtype))}
    )
    return {
        name: np.full(shape[0] * shape[1] * np.dtype(dtype).itemsize, SENTINEL_BYTE, np.uint8)
        .view(dtype)
        .reshape(shape)
        for name, (shape, dtype) in shapes.items()
    }


def make_inputs(
    plan: ActivationPlan, rows: int, rng: np.random.Generator, *, n_used: int | None = None
) -> dict[str, np.ndarray]:
    """x [R, F], permutation_map, n_used and sentinel-filled outputs for R = `rows` rounded up to the
    alignment; n_used overrides the routing's (the map is kept)."""
    align = plan.alignment
    rows = max(align, -(-rows // align) * align)
    experts = max(1, min(8, rows // (2 * align)))
    tokens = max(1, (rows - experts * (align - 1)) // (2 * TOP_K))  # about half the rows: some stay past n_used
    top_k = min(TOP_K, experts)
    index = np.stack([rng.permutation(experts)[:top_k] for _ in range(tokens)])
    layout = permuted_rows(index, experts, align, rows)
    permutation_map = layout.permutation_map.copy()
    used = int(layout.n_used[0])
    permutation_map[used:] = rng.integers(0, tokens, rows - used)  # stale ids: only n_used keeps them out
    x = cast(rng.standard_normal((rows, plan.features)).astype(np.float32), plan.dtype)
    inputs = {
        "x": x,
        "permutation_map": permutation_map.astype(np.int32),
        "n_used": np.array([used if n_used is None else n_used], dtype=np.int32),
    }
    inputs.update(sentinel_outputs(plan, rows))
    return inputs


def expected(plan: ActivationPlan, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    args = (inputs["x"], inputs["permutation_map"], inputs["n_used"])
    if plan.output == "mxfp8":
        data, scales = padded_activation_mxfp8(
            *args, inputs["data"], inputs["scales"], activation_fn=plan.activation, alpha=plan.alpha, elem=plan.elem
        )
        return {"data": data, "scales": scales}
    return {"out": padded_activation(*args, inputs["out"], activation_fn=plan.activation, alpha=plan.alpha)}


def run(kernel, plan: ActivationPlan, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the kernel on copies of the output arrays (it writes them in place); outputs by name."""
    from moegen.sim import last_run, simulate

    results = {name: inputs[name].copy() for name in outputs(plan)}
    simulate(kernel, target=plan.target)(inputs["x"], inputs["permutation_map"], inputs["n_used"], *results.values())
    last_run().assert_wrote_only(*outputs(plan))
    return results


def tolerance(plan: ActivationPlan, name: str) -> str:
    """out: its dtype's rounding; MXFP8 words and scales: exact (see the module docstring)."""
    return "exact" if plan.output == "mxfp8" else plan.dtype


def algorithmic_macs(plan: ActivationPlan, rows: int) -> int:
    """`moegen profile`: an elementwise activation has no matmul."""
    return 0


def minimum_hbm_bytes(plan: ActivationPlan, inputs: dict[str, np.ndarray], trace: list, output_mems: list) -> int:
    """`moegen profile`: the live rows (r < n_used, permutation_map[r] != -1) of x read and of the
    outputs written once, the map up to n_used and n_used itself; padding rows need no traffic (sized
    from the inputs: trace, output_mems unused)."""
    used = int(min(max(int(inputs["n_used"][0]), 0), inputs["x"].shape[0]))
    live = int(np.count_nonzero(inputs["permutation_map"][:used] != -1))
    row_out = sum(inputs[name].nbytes // inputs[name].shape[0] for name in outputs(plan))
    row_in = inputs["x"].nbytes // inputs["x"].shape[0]
    return live * (row_in + row_out) + used * inputs["permutation_map"].itemsize + inputs["n_used"].nbytes
