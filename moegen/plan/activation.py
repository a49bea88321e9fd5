"""Padding-aware activation kernels over an expert-permuted buffer (seed padded_activations_api.txt).

Between the two projections of a non-gated expert (Nemotron 3: up -> squared ReLU -> down) the
first projection's output x [R, F] (F = I / tp) sits in an expert-permuted buffer whose expert
segments are aligned (16 rows for bf16, 128 for MXFP8). The kernel applies the layer's activation
to the live rows, r < n_used and permutation_map[r] != -1 (moegen.blocking.permuted_rows builds both),
and leaves every other row of the output untouched.

Device side: n_used is read into SBUF and the number of 128-row tiles, ceil(min(n_used, R) / 128), is
loaded into a register that bounds an nl.fori_loop (the trip count is a runtime value; tiles past
it cost nothing). Per tile a [128, 1] row-id column holds row r where the row is live and an
out-of-bounds id elsewhere; every load and store of a row goes through it as a DMA vector offset
with oob_mode=skip, so a padding row is neither read nor written.

output=bf16 (seed padded_squared_relu): out [R, F] in the input dtype, rows on partitions.
output=mxfp8 (seed squared_relu_and_quantize_mxfp8, trn3): the activation is quantized by
quantize_mx and written as data [R, F/4] x4 words (= [R, F] fp8) and scales [R, F/32] E8M0. Per
128-row tile and 512-wide F slab, values f = slab*512 + 4p + q are staged at partition p, packed
position q (the contraction layout of nc_matmul_mx, rows on the free axis) and quantized in place;
the stores scatter rows back through the row-id column. The scale rows of a slab land in the order
nc_matmul_mx reads them (scale row i of the slab at partition (i // 4) * 32 + i % 4): see
docs/padded_activations.md for why this is the NKI counterpart of the seed's swizzle.
"""

from __future__ import annotations

from dataclasses import dataclass

from moegen.plan.common import DTYPE_BYTES, PARTITIONS, Buffer, KernelPlan, PlanError, ceil_div, check_budget
from moegen.plan.expert import ActivationStep, activation_steps
from moegen.spec.model import Layer, Variant
from moegen.spec.options import OptionSpec

ALIGNMENT = {"bf16": 16, "mxfp8": 128}  # rows per expert segment of the permuted buffer (the seed's producer)
MX_SLAB = 512  # F values per quantize_mx tile: 128 partitions x 4 packed values
MX_BLOCK = 32  # values per E8M0 scale
ROW_ID_LIMIT = 1 << 22  # row ids are computed in fp32 on VectorE: exact with the out-of-bounds offset added
OUT_OF_BOUNDS = 1 << 23  # added to the id of a row that is skipped (>= every buffer size the plan allows)
FP8 = {"e4m3fn": ("nl.float8_e4m3fn_x4", "fp8_e4m3fn"), "e5m2": ("nl.float8_e5m2_x4", "fp8_e5m2")}

OPTIONS = (
    OptionSpec(
        "output",
        "choice",
        "the activation in the input dtype (bf16: padded_squared_relu), or quantized to MXFP8 data + E8M0 "
        "scales in the layout the down projection's nc_matmul_mx reads (mxfp8: squared_relu_and_quantize_mxfp8, trn3)",
        default="bf16",
        choices=("bf16", "mxfp8"),
    ),
    OptionSpec(
        "rows",
        "bound",
        "the most rows R of the permuted buffer a call may pass (rows<=N)",
        default=4096,
        minimum=1,
        maximum=ROW_ID_LIMIT,
        reason="row ids are computed in fp32 with an out-of-bounds offset of 2^23 added to skipped rows",
    ),
    OptionSpec("fp8", "choice", "MXFP8 element type (output=mxfp8)", default="e4m3fn", choices=tuple(FP8)),
    OptionSpec(
        "target",
        "choice",
        "hardware generation: quantize_mx exists only on trn3",
        choices=("trn2", "trn3"),
    ),
)


@dataclass(frozen=True, kw_only=True)
class ActivationPlan(KernelPlan):
    features: int  # F: the first projection's width (I / tp)
    dtype: str  # of x (and of out when output=bf16)
    output: str  # 'bf16' | 'mxfp8'
    activation: str
    alpha: float | None
    steps: tuple[ActivationStep, ...]
    row_bound: int
    alignment: int
    slabs: tuple[tuple[int, int, int], ...]  # mxfp8: (first F value, values, partitions padded to 32) per slab
    mx_dtype: str
    elem: str
    verify_tokens: int | None  # for this family: the buffer rows R `moegen verify` runs at


def plan(layer: Layer, variant: Variant) -> ActivationPlan:
    """Resolve one activation variant; PlanError names the option and the reason."""
    opts = variant.options
    expert = layer.expert
    if expert is None:
        raise PlanError((None, "the layer has no expert pipeline: the activation kernel applies its activation"))
    problems: list[tuple[str | None, str]] = []
    if expert.gated:
        problems.append(
            (
                None,
                "the activation family runs between the projections of a non-gated expert ('up'): a gated "
                "expert's activation multiplies by the up projection, which the tkg/cte kernels fuse",
            )
        )
    extras = [
        name
        for name, on in (
            ("up bias", expert.gate_up_bias),
            ("clamp", expert.gate_min is not None or expert.gate_max is not None),
        )
        if on
    ]
    if extras:
        problems.append((None, f"the activation kernel applies the activation only: no {', '.join(extras)}"))
    output = opts["output"]
    target = opts.get("target") or ("trn3" if output == "mxfp8" else "trn2")
    if output == "mxfp8" and target != "trn3":
        problems.append(("target", "output=mxfp8 quantizes with quantize_mx, a Trainium3 instruction: target=trn3"))
    if layer.dtype not in ("bf16", "fp16"):
        problems.append((None, f"dtype {layer.dtype}: the buffer is bf16 or fp16 (quantize_mx reads those)"))
    features = layer.dims.intermediate_tp
    if output == "mxfp8" and features % MX_BLOCK:
        problems.append(
            (None, f"intermediate / tp {features}: output=mxfp8 needs a multiple of {MX_BLOCK} (one E8M0 scale per 32)")
        )
    if problems:
        raise PlanError(*problems)
    steps, why = activation_steps(expert.activation, expert.alpha)
    row_bound = opts["rows"]
    alignment = ALIGNMENT[output]
    slabs = tuple(
        (f0, min(MX_SLAB, features - f0), 32 * ceil_div(min(MX_SLAB, features - f0), 128))
        for f0 in range(0, features, MX_SLAB)
    )
    in_bytes = DTYPE_BYTES[layer.dtype]
    buffers = [
        Buffer("row state: n_used, row, row ids, skip flags, permutation_map (columns)", "sbuf", PARTITIONS, 4 * 9)
    ]
    if output == "bf16":
        buffers += [
            Buffer("x rows", "sbuf", PARTITIONS, in_bytes * features),
            Buffer("act (fp32)", "sbuf", PARTITIONS, 4 * features),
            Buffer("out rows", "sbuf", PARTITIONS, in_bytes * features),
        ]
    else:
        buffers += [
            Buffer("staged slab [kp, 128 rows, 4]", "sbuf", PARTITIONS, in_bytes * 4 * PARTITIONS),
            Buffer("act (fp32) [kp, 128, 4]", "sbuf", PARTITIONS, 4 * 4 * PARTITIONS),
            Buffer("act rounded [kp, 128, 4]", "sbuf", PARTITIONS, in_bytes * 4 * PARTITIONS),
            Buffer("words [kp, 128] x4", "sbuf", PARTITIONS, 4 * PARTITIONS),
            Buffer("scales [kp, 128]", "sbuf", PARTITIONS, PARTITIONS),
        ]
    mx_dtype, elem = FP8[opts["fp8"]]
    decisions = [
        ("activation", why),
        (
            "trip count",
            "n_used is read on device; ceil(min(n_used, R) / 128) tiles run in an nl.fori_loop bounded by a "
            "register (register_load): rows past n_used cost no iteration",
        ),
        (
            "padding rows",
            "per tile a row-id column (row r if r < n_used and permutation_map[r] != -1, else r + 2^23) is the "
            "vector offset of every row store (and, bf16, load), oob_mode=skip: padding rows are not written"
            + (" (mxfp8 loads whole 128-row tiles: R is a multiple of 128)" if output == "mxfp8" else ""),
        ),
        ("alignment", f"output={output}: the producer aligns expert segments to {alignment} rows"),
    ]
    if output == "mxfp8":
        decisions.append(
            (
                "mxfp8",
                f"F={features} in {len(slabs)} slab(s) of up to {MX_SLAB}: value slab*512 + 4p + q at partition p, "
                "packed q (rows on the free axis), quantize_mx per slab; data stored as [R, F/4] words and scales "
                "as [R, F/32], both scattered by row id: the scale rows of a slab come from partitions "
                "(i // 4) * 32 + i % 4, nc_matmul_mx's scale layout, so the down projection reads them with the "
                "inverse DMA and no reshuffle",
            )
        )
    result = ActivationPlan(
        family="activation",
        kernel_name=variant.name,
        spec_name=layer.name,
        lnc=opts["lnc"],
        target=target,
        buffers=tuple(buffers),
        decisions=tuple(decisions),
        features=features,
        dtype=layer.dtype,
        output=output,
        activation=expert.activation,
        alpha=expert.alpha,
        steps=steps,
        row_bound=row_bound,
        alignment=alignment,
        slabs=slabs if output == "mxfp8" else (),
        mx_dtype=mx_dtype,
        elem=elem,
        verify_tokens=opts.get("verify_tokens"),
    )
    if opts["lnc"] != 1:
        raise PlanError(("lnc", "the activation kernel runs on one core (lnc=1): its tiles are a runtime count"))
    check_budget(result)
    return result


def _family():
    from moegen.plan import Family

    return Family(
        name="activation",
        options=OPTIONS,
        plan=plan,
        doc="padding-aware activation of an expert-permuted buffer (skips rows past n_used and -1 rows), "
        "optionally fused with MXFP8 quantization (trn3)",
    )


FAMILY = _family()
