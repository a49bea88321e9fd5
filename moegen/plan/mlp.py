"""The dense MLP family with MXFP8 matmuls on Trainium3 (seed mlp_mxfp8_api.txt, SEMANTICS section 6).

out[S, H] = (act(x Wg^T) * (x Wu^T)) Wd^T with gate_up [2I, H] (rows 0..I-1 gate, I..2I-1 up) and
down [H, I]. Every matmul is an nc_matmul_mx: both operands are MXFP8 (e4m3fn or e5m2), quantized on
chip by quantize_mx from bf16/fp16 or loaded pre-quantized with their E8M0 scales.

Contraction layout (both phases): a slab of up to 512 contraction indices c sits on kp = len/4
partitions, index c = slab*512 + 4p + q at partition p, packed position q. A scaling block (8
partitions x 4 values) is then 32 consecutive contraction indices: the natural OCP layout of the
pre-quantized host tensors ([rows, K/4] x4 words, [rows, K/32] scales).

Phase 1 (gate/up, per token sub-tile of at most 512 tokens): the gate/up results come out with I on
partitions, I = slab*512 + 4p + q for the q-th of 4 matmuls of the slab (weight rows strided by 4),
and h = act(g) * u is written into the q-th packed position of an interleaved [kp, T, 4] tile: the
layout the down projection contracts over. Phase 2 (down, per 128 tokens): out tile [tokens, 512 H]
= sum over I slabs of h_q[kp, tokens].T @ Wd_q[kp, 512]. The intermediate goes through an HBM
scratch [S, I] (bf16, quantized again when read back, as the seed does) or stays on chip as MXFP8
for the whole token block.
"""

from __future__ import annotations

from dataclasses import dataclass

from moegen.plan.common import (
    DTYPE_BYTES,
    PARTITIONS,
    SBUF_BYTES,
    TP_OPTION,
    Buffer,
    KernelPlan,
    PlanError,
    ceil_div,
    check_budget,
    kernel_layer,
)
from moegen.spec.model import Layer, Variant
from moegen.spec.options import OptionSpec

MX_SLAB = 512  # contraction indices per nc_matmul_mx: 128 partitions x 4 packed values
MX_SLAB_MULTIPLE = 128  # a slab spans a multiple of 32 partitions (nc_matmul_mx page)
PHASE1_TOKENS = 512  # moving free size of one nc_matmul_mx with an fp32 PSUM dst
PHASE2_TOKENS = 128  # stationary free size of one nc_matmul_mx
DOWN_COLUMNS = 512  # H columns per down-projection PSUM tile (moving free size)
CHECKPOINTS = ("save_gate_pre", "save_gate_act", "save_up", "save_hidden")
CHECKPOINT_DOC = {
    "save_gate_pre": "gate pre-activation x Wg^T",
    "save_gate_act": "act(gate)",
    "save_up": "up projection x Wu^T",
    "save_hidden": "act(gate) * up (the intermediate)",
}
# Activations of the MoE families as one ScalarE activation (NKI op name); squared_relu squares the
# relu on VectorE; swish only with NKI's fixed alpha (gelu_apprx_sigmoid = x * sigmoid(1.702 x)).
ACTIVATION_OPS = {
    "silu": "silu",
    "gelu": "gelu",
    "gelu_tanh": "gelu_apprx_tanh",
    "relu": "relu",
    "squared_relu": "relu",
    "swish": "gelu_apprx_sigmoid",
}
SWISH_ALPHA = 1.702
FP8 = {"e4m3fn": ("nl.float8_e4m3fn_x4", "fp8_e4m3fn"), "e5m2": ("nl.float8_e5m2_x4", "fp8_e5m2")}
OUT_DTYPES = ("bf16", "fp16", "fp32")
# SBUF kept free for the tiles the plan does not count exactly (DMA staging of partial tiles).
SBUF_MARGIN = 16 * 1024

OPTIONS = (
    OptionSpec(
        "target",
        "choice",
        "hardware generation: MX matmuls exist only on trn3",
        default="trn3",
        choices=("trn2", "trn3"),
    ),
    OptionSpec(
        "input",
        "choice",
        "hidden states as bf16/fp16 quantized on chip, or pre-quantized MXFP8 words with E8M0 scales",
        default="bf16",
        choices=("bf16", "mxfp8"),
    ),
    OptionSpec(
        "weights",
        "choice",
        "gate_up / down weights as bf16/fp16 quantized on chip, or pre-quantized MXFP8 with scales",
        default="bf16",
        choices=("bf16", "mxfp8"),
    ),
    OptionSpec(
        "x_layout",
        "choice",
        "bf16 x as [S, H] (natural) or pre-swizzled [H/4, S*4] (swizzled: x_sw[k // 4, 4s + k % 4] = x[s, k])",
        default="natural",
        choices=("natural", "swizzled"),
    ),
    OptionSpec(
        "weights_layout",
        "choice",
        "bf16 weights as gate_up [2I, H] / down [H, I] (natural) or pre-swizzled gate_up [H/4, 2I*4] / "
        "down [I/4, H*4] (swizzled: 4 consecutive contraction values of a row side by side)",
        default="natural",
        choices=("natural", "swizzled"),
    ),
    OptionSpec("fp8", "choice", "MXFP8 element type", default="e4m3fn", choices=tuple(FP8)),
    OptionSpec("out", "choice", "dtype of the output and of the checkpoints", choices=OUT_DTYPES),
    OptionSpec(
        "intermediate",
        "choice",
        "act(g) * u through an HBM scratch [S, I] (hbm, as the seed), kept on chip as MXFP8 (sbuf), "
        "or chosen by the plan (auto: sbuf when one token block fits)",
        default="auto",
        choices=("auto", "hbm", "sbuf"),
    ),
    OptionSpec(
        "block_tokens",
        "int",
        "tokens per block (the seed's TILES_IN_BLOCK_M x 128): phase 1 then phase 2 run per block",
        default=512,
        minimum=2,
        maximum=8192,
        multiple_of=2,
        reason="phase 2 multiplies even token counts (nc_matmul_mx stationary free size)",
    ),
    OptionSpec(
        "gu_tokens",
        "int",
        "tokens per gate/up matmul (the moving free size; the seed's gate/up N tile)",
        default=PHASE1_TOKENS,
        minimum=2,
        maximum=PHASE1_TOKENS,
        multiple_of=2,
        reason="an nc_matmul_mx moving tile with an fp32 PSUM dst is at most 512 wide; even for phase 2's padding",
    ),
    OptionSpec(
        "down_tokens",
        "int",
        "tokens per down matmul (the stationary free size; the seed's down M tile)",
        default=PHASE2_TOKENS,
        minimum=2,
        maximum=PHASE2_TOKENS,
        multiple_of=2,
        reason="an nc_matmul_mx stationary tile is even and at most 128 wide",
    ),
    OptionSpec(
        "down_columns",
        "int",
        "H columns per down matmul and PSUM tile (the seed's down N tile)",
        default=DOWN_COLUMNS,
        minimum=32,
        maximum=DOWN_COLUMNS,
        multiple_of=32,
        reason="an nc_matmul_mx moving tile with an fp32 PSUM dst is at most 512 wide",
    ),
    OptionSpec(
        "scale_packing",
        "flag",
        "gate and up weight scales share one SBUF tile, at partitions 0..3 and 4..7 of each quadrant "
        "(the quantize_mx page's scale packing; the seed's use_scale_packing)",
    ),
    *(OptionSpec(name, "flag", f"also write the {doc} to an [S, I] output") for name, doc in CHECKPOINT_DOC.items()),
    TP_OPTION,
)


@dataclass(frozen=True, kw_only=True)
class MlpPlan(KernelPlan):
    """Every number and choice of one MXFP8 MLP kernel."""

    hidden: int
    intermediate: int
    in_dtype: str  # bf16 | fp16: what quantize_mx reads (x, weights, h)
    out_dtype: str
    act: str
    act_op: str  # the nl activation
    input_mx: bool
    weights_mx: bool
    fp8: str  # e4m3fn | e5m2
    mx_dtype: str  # nl.float8_*_x4
    elem: str  # moegen.reference.quant element name
    square_act: bool  # squared_relu: act = relu(g)^2
    scale_packing: bool  # gate/up weight scales in one tile (offsets 0 and 4 of each quadrant)
    x_swizzled: bool
    weights_swizzled: bool
    intermediate_in: str  # hbm | sbuf
    block_tokens: int
    gu_tokens: int  # phase 1 sub-tile: tokens per gate/up matmul
    down_tokens: int  # phase 2 tile: tokens per down matmul
    down_columns: int  # phase 2 tile: H columns per down matmul
    h_slabs: tuple[tuple[int, int], ...]  # (first contraction index, partitions) per slab of H
    i_slabs: tuple[tuple[int, int], ...]  # the same over I
    checkpoints: tuple[str, ...]
    verify_tokens: int | None = None


def _slabs(size: int) -> tuple[tuple[int, int], ...]:
    return tuple((start, min(MX_SLAB, size - start) // 4) for start in range(0, size, MX_SLAB))


def _sbuf_bytes(
    hidden: int,
    inter: int,
    block: int,
    tiles: tuple[int, int, int],
    in_bytes: int,
    out_bytes: int,
    keep: bool,
    saves: int,
) -> list:
    """The buffers of one token block (bytes per partition); tiles = (gu_tokens, down_tokens, down_columns)."""
    gu_tokens, down_tokens, down_columns = tiles
    t1 = min(block, gu_tokens)
    n_h, n_i = ceil_div(hidden, MX_SLAB), ceil_div(inter, MX_SLAB)
    buffers = [
        Buffer("x staging (one H slab, interleaved)", "sbuf", PARTITIONS, t1 * 4 * in_bytes, 2),
        Buffer("x quantized (all H slabs) + scales", "sbuf", PARTITIONS, n_h * t1 * 5),
        Buffer("gate/up weight staging + quantized + scales", "sbuf", PARTITIONS, PARTITIONS * (4 * in_bytes + 5), 4),
        Buffer("gate, up, act (fp32)", "sbuf", PARTITIONS, 3 * t1 * 4),
        Buffer("h interleaved [kp, T, 4]", "sbuf", PARTITIONS, t1 * 4 * in_bytes, 2),
        Buffer("down weight staging + quantized + scales", "sbuf", PARTITIONS, down_columns * (4 * in_bytes + 5), 2),
        Buffer("output tile", "sbuf", down_tokens, down_columns * out_bytes, 2),
        Buffer("gate, up (PSUM)", "psum", PARTITIONS, t1 * 4, 4),
        Buffer("down (PSUM)", "psum", down_tokens, down_columns * 4, 2),
    ]
    if saves:
        buffers.append(Buffer("checkpoint tiles", "sbuf", PARTITIONS, t1 * out_bytes, 2))
    if keep:
        buffers.append(Buffer("h quantized for the block + scales", "sbuf", PARTITIONS, n_i * block * 5))
    else:
        buffers.append(
            Buffer("h read back (all I slabs) + quantized", "sbuf", PARTITIONS, n_i * down_tokens * (4 * in_bytes + 5))
        )
    return buffers


def plan(layer: Layer, variant: Variant) -> MlpPlan:
    """Resolve one MLP variant to numbers; PlanError names the option and the reason."""
    layer = kernel_layer(layer, variant)  # the kernel's own tp= (default: dims tp)
    opts = variant.options
    problems: list[tuple[str | None, str]] = []
    if opts["target"] != "trn3":
        problems.append(
            (
                "target",
                f"target={opts['target']}: the mlp family multiplies with nc_matmul_mx and quantize_mx, "
                "Trainium3 (NeuronCore-v4) instructions; use target=trn3",
            )
        )
    expert = layer.expert
    if expert is None:
        raise PlanError((None, "the layer has no expert pipeline: add 'expert = gate_up -> silu -> down'"))
    if not expert.gated:
        problems.append((None, "the mlp family is the gated (SwiGLU-style) MLP: use 'gate_up' in the expert pipeline"))
    if expert.activation not in ACTIVATION_OPS:
        problems.append((None, f"activation {expert.activation}: the mlp family runs {', '.join(ACTIVATION_OPS)}"))
    if expert.activation == "swish" and expert.alpha not in (None, SWISH_ALPHA):
        problems.append(
            (
                None,
                f"swish({expert.alpha:g}): the ScalarE swish (gelu_apprx_sigmoid) has alpha {SWISH_ALPHA}; "
                "another alpha needs a scaled sigmoid and a multiply",
            )
        )
    for name, kind in (("x_layout", "input"), ("weights_layout", "weights")):
        if opts[name] == "swizzled" and opts[kind] != "bf16":
            problems.append((name, f"{name}=swizzled is a bf16 layout; {kind}={opts[kind]} is pre-quantized"))
    extras = [
        name
        for name, on in (
            ("gate_up bias", expert.gate_up_bias),
            ("down bias", expert.down_bias),
            ("clamp", any(v is not None for v in (expert.gate_min, expert.gate_max, expert.up_min, expert.up_max))),
            ("up + 1", expert.up_plus_one),
            ("affinity scaling", expert.affinity_scale != "none"),
        )
        if on
    ]
    if extras:
        problems.append((None, f"the dense mlp family has no {', '.join(extras)}: remove it from the expert pipeline"))
    if layer.dtype not in ("bf16", "fp16"):
        problems.append((None, f"dtype {layer.dtype}: quantize_mx reads bf16 or fp16 only"))
    hidden, inter = layer.dims.hidden, layer.dims.intermediate_tp
    for name, size in (("hidden", hidden), ("intermediate / tp", inter)):
        if size % MX_SLAB_MULTIPLE:
            problems.append(
                (
                    None,
                    f"{name} {size}: must be a multiple of {MX_SLAB_MULTIPLE} (an MX contraction slab spans a "
                    "multiple of 32 partitions x 4 packed values)",
                )
            )
    if problems:
        raise PlanError(*problems)

    out_dtype = opts.get("out") or layer.out_dtype
    if out_dtype not in OUT_DTYPES:
        raise PlanError(("out", f"output dtype {out_dtype}: one of {', '.join(OUT_DTYPES)}"))
    in_bytes, out_bytes = DTYPE_BYTES[layer.dtype], DTYPE_BYTES[out_dtype]
    block = opts["block_tokens"]
    saves = tuple(name for name in CHECKPOINTS if opts.get(name))
    capacity = SBUF_BYTES["trn3"] - SBUF_MARGIN
    tiles = (opts["gu_tokens"], opts["down_tokens"], opts["down_columns"])
    keep_buffers = _sbuf_bytes(hidden, inter, block, tiles, in_bytes, out_bytes, True, len(saves))
    keep_bytes = sum(b.total_per_partition for b in keep_buffers if b.memory == "sbuf")
    choice = opts["intermediate"]
    if choice == "auto":
        intermediate_in = "sbuf" if keep_bytes <= capacity else "hbm"
        why = (
            f"auto: the MXFP8 intermediate of a {block}-token block ({ceil_div(inter, MX_SLAB)} I slabs x "
            f"{block} tokens x 5 bytes) brings the block to {keep_bytes} bytes per partition, "
            + (
                f"within the {capacity} usable, so it stays on chip"
                if intermediate_in == "sbuf"
                else f"over the {capacity} usable, so it goes through the HBM scratch"
            )
        )
    else:
        intermediate_in = choice
        why = f"intermediate={choice} (the variant chooses)"
    buffers = (
        keep_buffers
        if intermediate_in == "sbuf"
        else _sbuf_bytes(hidden, inter, block, tiles, in_bytes, out_bytes, False, len(saves))
    )
    mx_dtype, elem = FP8[opts["fp8"]]
    act_op = ACTIVATION_OPS[expert.activation]
    decisions = (
        ("target", "trn3: nc_matmul_mx (4x the bf16 contraction per instruction) and quantize_mx"),
        (
            "contraction",
            f"H={hidden} in {len(_slabs(hidden))} slab(s), I={inter} in {len(_slabs(inter))} slab(s) of up to 512: "
            "index slab*512 + 4p + q on partition p, packed position q, so a scaling block is 32 consecutive "
            "contraction indices (the OCP layout of pre-quantized host tensors)",
        ),
        (
            "inputs",
            (
                "x pre-quantized: [S, H/4] MXFP8 words + [S, H/32] E8M0 scales"
                if opts["input"] == "mxfp8"
                else f"x {layer.dtype} ({opts['x_layout']}), quantized on chip per H slab"
            )
            + "; "
            + (
                "weights pre-quantized: gate_up [2I, H/4] + [2I, H/32], down [H, I/4] + [H, I/32]"
                if opts["weights"] == "mxfp8"
                else f"weights {layer.dtype} ({opts['weights_layout']}), quantized on chip per tile (again for every "
                "token sub-tile)"
            ),
        ),
        (
            "phase 1",
            f"per sub-tile of up to {tiles[0]} tokens: gate and up with I on partitions (weight rows "
            f"slab*512 + 4p + q for the q-th matmul), {expert.activation}(g) * u written as packed position q "
            "of an interleaved [kp, T, 4] tile: the down projection's contraction layout, no transpose",
        ),
        ("intermediate", f"{intermediate_in}: " + why),
        (
            "scales",
            "gate and up weight scales packed in one tile per slab (partitions 0..3 and 4..7 of each quadrant)"
            if opts.get("scale_packing")
            else "one scale tile per operand (scale rows in partitions 0..3 of each quadrant)",
        ),
        (
            "phase 2",
            f"per {tiles[1]} tokens (odd counts padded with a zero token) x {tiles[2]} H columns, accumulated "
            "over the I slabs in fp32 PSUM",
        ),
        (
            "sharding",
            "LNC=2: core c takes rows [c*ceil(S/2), ...) (the seed's s_base_offset), odd S leaves core 1 one "
            "row fewer; disjoint output rows, private scratch: no barrier"
            if opts["lnc"] == 2
            else "LNC=1",
        ),
        ("checkpoints", ", ".join(saves) + f" in {out_dtype}" if saves else "none"),
    )
    result = MlpPlan(
        family="mlp",
        kernel_name=variant.name,
        spec_name=layer.name,
        lnc=opts["lnc"],
        target="trn3",
        buffers=tuple(buffers),
        decisions=decisions,
        hidden=hidden,
        intermediate=inter,
        in_dtype=layer.dtype,
        out_dtype=out_dtype,
        act=expert.activation,
        act_op=act_op,
        square_act=expert.activation == "squared_relu",
        scale_packing=bool(opts.get("scale_packing")),
        x_swizzled=opts["x_layout"] == "swizzled",
        weights_swizzled=opts["weights_layout"] == "swizzled",
        input_mx=opts["input"] == "mxfp8",
        weights_mx=opts["weights"] == "mxfp8",
        fp8=opts["fp8"],
        mx_dtype=mx_dtype,
        elem=elem,
        intermediate_in=intermediate_in,
        block_tokens=block,
        gu_tokens=tiles[0],
        down_tokens=tiles[1],
        down_columns=tiles[2],
        h_slabs=_slabs(hidden),
        i_slabs=_slabs(inter),
        checkpoints=saves,
        verify_tokens=opts.get("verify_tokens"),
    )
    try:
        check_budget(result)
    except PlanError as error:
        raise PlanError(*[("block_tokens" if name is None else name, msg) for name, msg in error.problems]) from None
    return result


def _family():
    from moegen.plan import Family

    return Family(
        name="mlp",
        options=OPTIONS,
        plan=plan,
        doc="dense gated MLP with MXFP8 matmuls (trn3): gate/up, activation * up, down",
    )


FAMILY = _family()
