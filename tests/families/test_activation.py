"""The padding-aware activation kernels (seed padded_activations_api.txt) in the simulator.

Random permutation maps (with -1 padding rows) and n_used values from 0 to every row; outputs start
sentinel-filled and the skipped rows must keep the sentinel. The fused MXFP8 variant's words and
scales feed an nc_matmul_mx (the down projection) in a small hand-written kernel.
"""

from __future__ import annotations

import numpy as np
import pytest

from moegen.blocking import aligned_rows_budget, permuted_rows
from moegen.compare import compare
from moegen.reference.activation import live_rows
from moegen.reference.quant import dequantize_mx, np_dtype, quantize_mx
from moegen.verify import activation as harness
from tests.families.support import build, build_spec, layer_spec, module_builds

SEED = 20261206
KERNELS = """
  kernel relu2       : activation { rows<=1024 }
  kernel relu2_mx    : activation { output=mxfp8 rows<=1024 }
  kernel relu2_mx_e5 : activation { output=mxfp8 fp8=e5m2 rows<=1024 }
"""
# F = 416: one slab of 104 partitions (padded to 128); F = 608: a full slab and a 96-value one (24 -> 32).
SPECS = {
    416: layer_spec(KERNELS, hidden=256, intermediate=416, experts=8, top_k=2, expert="up -> squared_relu -> down"),
    608: layer_spec(KERNELS, hidden=256, intermediate=608, experts=8, top_k=2, expert="up -> squared_relu -> down"),
}

build_dir = module_builds("activation_builds")


def _random_inputs(plan, rows: int, n_used: int, rng: np.random.Generator, pad_fraction: float = 0.3) -> dict:
    """A random permutation map (pad_fraction of the rows -1) and the given n_used."""
    inputs = harness.make_inputs(plan, rows, rng, n_used=n_used)
    perm = rng.integers(0, 1000, rows).astype(np.int32)
    perm[rng.random(rows) < pad_fraction] = -1
    inputs["permutation_map"] = perm
    return inputs


def _check(plan, kernel, inputs) -> dict:
    want = harness.expected(plan, inputs)
    got = harness.run(kernel, plan, inputs)
    live = live_rows(inputs["permutation_map"], inputs["n_used"])
    for name in harness.outputs(plan):
        result = compare(name, got[name], want[name], kind=harness.tolerance(plan, name))
        assert result.ok, f"{plan.kernel_name} n_used={int(inputs['n_used'][0])}: {result}"
        skipped = got[name][~live].view(np.uint8)
        assert (skipped == harness.SENTINEL_BYTE).all(), f"{name}: a skipped row was written"
        if live.any():
            assert not (got[name][live].view(np.uint8) == harness.SENTINEL_BYTE).all(), f"{name}: no live row written"
    return got


CASES = [
    ("relu2", 416, 160, "zero"),
    ("relu2", 416, 160, "all"),
    ("relu2", 416, 160, "random"),
    ("relu2", 608, 272, "random"),
    ("relu2", 416, 144, "past_rows"),
    ("relu2_mx", 416, 256, "zero"),
    ("relu2_mx", 416, 256, "all"),
    ("relu2_mx", 416, 384, "random"),
    ("relu2_mx", 608, 256, "random"),
    ("relu2_mx_e5", 608, 256, "aligned"),
]


@pytest.mark.parametrize("kernel, features, rows, used", CASES, ids=[f"{k}-F{f}-R{r}-{u}" for k, f, r, u in CASES])
def test_live_rows_computed_and_skipped_rows_untouched(kernel, features, rows, used):
    plans, kernels = build(SPECS[features])
    plan = plans[kernel]
    rng = np.random.default_rng(SEED + rows + features)
    n_used = {
        "zero": 0,
        "all": rows,
        "random": int(rng.integers(1, rows)),  # not a multiple of 128: a partial last tile
        "past_rows": rows + 500,  # n_used beyond the buffer: every row, nothing out of bounds
        "aligned": plan.alignment * int(rng.integers(1, rows // plan.alignment)),
    }[used]
    _check(plan, kernels[kernel], _random_inputs(plan, rows, n_used, rng))


def test_routing_layout_from_blocking():
    """The harness's own inputs: permutation_map and n_used from moegen.blocking.permuted_rows, with stale
    (non -1) ids past n_used that only n_used keeps out."""
    plans, kernels = build(SPECS[416])
    for name in ("relu2", "relu2_mx"):
        plan = plans[name]
        inputs = harness.make_inputs(plan, 512, np.random.default_rng(SEED))
        used = int(inputs["n_used"][0])
        assert 0 < used < 512 and (inputs["permutation_map"][used:] != -1).all()
        assert (inputs["permutation_map"][:used] == -1).any()
        _check(plan, kernels[name], inputs)


def test_permuted_rows_layout():
    index = np.array([[0, 2], [2, 1], [0, 1], [2, 0]])
    layout = permuted_rows(index, num_experts=4, alignment=16)
    assert layout.expert_offsets.tolist() == [16, 32, 48, 48]  # expert 3 has no rows
    assert int(layout.n_used[0]) == 48
    assert layout.permutation_map.shape == (aligned_rows_budget(4, 2, 4, 16),)
    assert layout.permutation_map[:4].tolist() == [0, 2, 3, -1]  # expert 0: tokens 0, 2, 3
    assert layout.permutation_map[16:19].tolist() == [1, 2, -1]  # expert 1
    assert layout.permutation_map[32:36].tolist() == [0, 1, 3, -1]  # expert 2
    assert (layout.permutation_map[48:] == -1).all()
    with pytest.raises(ValueError, match="rows=32: the routing needs 48"):
        permuted_rows(index, num_experts=4, alignment=16, rows=32)


def test_mx_quantized_activation_feeds_nc_matmul_mx(tmp_path):
    """The fused kernel's words and scales, loaded as the down projection loads them (words transposed by
    the DMA, scale row i of a slab to partition (i // 4) * 32 + i % 4) into nc_matmul_mx, give
    dequant(h) @ dequant(W_down) for every live row."""
    from moegen import sim

    plans, kernels = build(SPECS[608])
    plan = plans["relu2_mx"]
    rows, hidden = 128, 256
    rng = np.random.default_rng(SEED)
    inputs = _random_inputs(plan, rows, rows, rng, pad_fraction=0.2)
    got = harness.run(kernels["relu2_mx"], plan, inputs)
    down_t = rng.standard_normal((hidden, plan.features)).astype(np.float32)  # W_down^T [H, F]
    elements, w_scales = quantize_mx(down_t, plan.elem, "ocp", axis=-1)
    w_words = np.ascontiguousarray(elements.astype(np_dtype(plan.elem))).view(np.uint32)
    source = tmp_path / "down_mx.py"
    source.write_text(DOWN_KERNEL.format(mx=plan.mx_dtype, slabs=plan.slabs, rows=rows, hidden=hidden))
    module = sim.load_module(source)
    y = sim.simulate(module.down_projection, target="trn3")(
        got["data"], got["scales"], w_words, w_scales.astype(np.uint8)
    )
    h = dequantize_mx(np.ascontiguousarray(got["data"]).view(np_dtype(plan.elem)).astype(np.float32), got["scales"])
    w = dequantize_mx(elements, w_scales)
    live = live_rows(inputs["permutation_map"], inputs["n_used"])
    want = (h[live].astype(np.float64) @ w.T.astype(np.float64)).astype(np.float32)
    result = compare("y", np.asarray(y, dtype=np.float32)[live], want, kind="fp32", atol=1e-3)
    assert result.ok, str(result)
    # and it is the activation of x: each block of 32 within e4m3's step (2^-3) of the block's largest value
    relu2 = (np.maximum(np.asarray(inputs["x"], dtype=np.float32)[live], 0.0) ** 2).reshape(-1, 32)
    error = np.abs(h[live].reshape(-1, 32) - relu2).max(axis=1)
    assert (error <= relu2.max(axis=1) * 2.0**-3).all()


# A consumer written the way the down projection reads MXFP8 (templates/common/mx.j2's mx_load_into).
DOWN_KERNEL = '''
import nki
import nki.isa as nisa
import nki.language as nl

MX = {mx}
SLABS = {slabs}
ROWS = {rows}
HIDDEN = {hidden}


@nki.jit
def down_projection(data, scales, w_words, w_scales):
    """y [ROWS, HIDDEN] fp32 = h @ W_down for h = the MXFP8 rows (data [ROWS, F/4], scales [ROWS, F/32])
    and W_down^T as words [HIDDEN, F/4] and scales [HIDDEN, F/32]."""
    y = nl.ndarray((ROWS, HIDDEN), dtype=nl.float32, buffer=nl.shared_hbm)
    psum = nl.ndarray((ROWS, HIDDEN), dtype=nl.float32, buffer=nl.psum)
    h_words, w_view = data.view(MX), w_words.view(MX)
    for slab, (f0, values, partitions) in enumerate(SLABS):
        kp = values // 4
        h_q = nl.ndarray((partitions, ROWS), dtype=MX, buffer=nl.sbuf)
        h_s = nl.ndarray((partitions, ROWS), dtype=nl.uint8, buffer=nl.sbuf)
        w_q = nl.ndarray((partitions, HIDDEN), dtype=MX, buffer=nl.sbuf)
        w_s = nl.ndarray((partitions, HIDDEN), dtype=nl.uint8, buffer=nl.sbuf)
        for tile, scale_tile in ((h_q, h_s), (w_q, w_s)):
            nisa.memset(dst=tile, value=0)
            nisa.memset(dst=scale_tile, value=0)
        nisa.dma_copy(dst=h_q[0:kp, :], src=h_words[:, f0 // 4:f0 // 4 + kp].permute((1, 0)))
        nisa.dma_copy(dst=w_q[0:kp, :], src=w_view[:, f0 // 4:f0 // 4 + kp].permute((1, 0)))
        scale_rows = values // 32
        for quadrant in range((scale_rows + 3) // 4):
            n = min(4, scale_rows - 4 * quadrant)
            first = f0 // 32 + 4 * quadrant
            nisa.dma_copy(dst=h_s[32 * quadrant:32 * quadrant + n, :], src=scales[:, first:first + n].permute((1, 0)))
            nisa.dma_copy(dst=w_s[32 * quadrant:32 * quadrant + n, :], src=w_scales[:, first:first + n].permute((1, 0)))
        nisa.nc_matmul_mx(dst=psum, stationary=h_q, moving=w_q, stationary_scale=h_s, moving_scale=w_s,
                          accumulate=slab > 0)
    out = nl.ndarray((ROWS, HIDDEN), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=out, src=psum)
    nisa.dma_copy(dst=y, src=out)
    return y
'''


@pytest.mark.parametrize(
    "expert, kernel, message",
    [
        ("gate_up -> silu -> down", "activation { }", "non-gated expert"),
        ("up(bias) -> squared_relu -> down", "activation { }", "no up bias"),
        ("up -> squared_relu -> down", "activation { output=mxfp8 target=trn2 }", "Trainium3"),
    ],
)
def test_refusals_say_why(tmp_path, expert, kernel, message):
    from moegen.diagnostics import SpecError

    text = layer_spec(f"kernel k : {kernel}", hidden=256, intermediate=416, experts=8, top_k=2, expert=expert)
    with pytest.raises(SpecError, match=message):
        build_spec(text, tmp_path)


def test_mx_features_must_hold_whole_scale_blocks(tmp_path):
    from moegen.diagnostics import SpecError

    text = layer_spec(
        "kernel k : activation { output=mxfp8 }",
        hidden=256,
        intermediate=400,
        experts=8,
        top_k=2,
        expert="up -> relu -> down",
    )
    with pytest.raises(SpecError, match="multiple of 32"):
        build_spec(text, tmp_path)
