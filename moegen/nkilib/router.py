"""`router_topk` with AWS's signature (nkilib.core.router_topk.router_topk), backed by moegen.

The flags map to one router variant (docs/nkilib.md has the table); the generated kernel runs in
the simulator and its outputs are written into the caller's buffers.
"""

from __future__ import annotations

import numpy as np

from moegen.nkilib.enums import RouterActFnType
from moegen.nkilib.variant import UnsupportedCall, spec_text, variant
from moegen.sim import simulate

SPEC_DTYPES = {np.dtype("float32"): "fp32", np.dtype("float16"): "fp16"}

# AWS flags that choose how AWS's kernel computes, not what: moegen's plan decides these itself.
PERFORMANCE_FLAGS = ("use_column_tiling", "use_PE_broadcast_w_bias")
# AWS flags moegen's generated kernels do not offer, with the reason.
UNSUPPORTED_FLAGS = {
    "output_in_sbuf": "moegen's router writes its outputs to HBM; SBUF outputs are for fused kernels",
    "x_input_in_sbuf": "moegen's router reads x from HBM",
    "expert_affin_in_sb": "moegen's router writes expert_affinities to HBM",
}


def spec_dtype(array: np.ndarray, argument: str) -> str:
    """moegen's dtype name of an array (bf16 from ml_dtypes), or an error naming the argument."""
    dtype = np.dtype(array.dtype)
    if dtype.name == "bfloat16":
        return "bf16"
    if dtype in SPEC_DTYPES:
        return SPEC_DTYPES[dtype]
    raise UnsupportedCall(f"{argument}: dtype {dtype.name}; moegen's kernels take bf16, fp16 or fp32")


def router_variant(
    *,
    hidden: int,
    experts: int,
    k: int,
    in_dtype: str,
    out_dtype: str,
    act_fn: RouterActFnType,
    w_bias: bool,
    x_hbm_layout: int,
    router_pre_norm: bool,
    norm_topk_prob: bool,
    use_indirect_dma_scatter: bool,
    return_eager_affi: bool,
    shard_on_tokens: bool,
    skip_store_router_logits: bool,
) -> tuple[str, str]:
    """(layer name, spec text) of the variant an AWS call maps to (docs/nkilib.md)."""
    act = RouterActFnType(act_fn).name.lower()
    linear = "linear(bias)" if w_bias else "linear"
    if router_pre_norm:
        pipeline = f"{linear} -> {act} -> topk" + (" -> renormalize" if norm_topk_prob else "")
    else:
        pipeline = f"{linear} -> topk -> {act}"  # AWS ignores norm_topk_prob after the top-K
    scatters = not router_pre_norm or norm_topk_prob  # AWS's (ACT1, topK) pipeline does not scatter
    options = [f"layout={'ht' if x_hbm_layout == 0 else 'th'}"]
    options += ["scatter=dma"] if use_indirect_dma_scatter and scatters else []
    options += ["eager"] if return_eager_affi else []
    options += ["skip_logits"] if skip_store_router_logits else []
    options += ["lnc=2"] if shard_on_tokens else []
    dtype = in_dtype if in_dtype == out_dtype else f"in={in_dtype} out={out_dtype}"
    # intermediate is not read by a router kernel; the dims line requires it.
    dims = {"hidden": hidden, "intermediate": 1, "experts": experts, "top_k": k}
    return spec_text("router", dims, dtype, {"router": pipeline}, options)


def router_topk(
    x,
    w,
    w_bias,
    router_logits,
    expert_affinities,
    expert_index,
    act_fn,
    k,
    x_hbm_layout,
    x_sb_layout,
    output_in_sbuf=False,
    router_pre_norm=True,
    norm_topk_prob=False,
    use_column_tiling=False,
    use_indirect_dma_scatter=False,
    return_eager_affi=False,
    use_PE_broadcast_w_bias=False,
    shard_on_tokens=False,
    skip_store_expert_index=False,
    skip_store_router_logits=False,
    x_input_in_sbuf=False,
    expert_affin_in_sb=False,
):
    """AWS's router_topk: x [H, T] (x_hbm_layout 0) or [T, H] (1), w [H, E], w_bias [1, E] or [E] or
    None; writes router_logits [T, E], expert_affinities [T, E] and expert_index [T, K] (int32 or
    uint32) in place and returns [router_logits, expert_index, expert_affinities] (+ the [T, K]
    affinities with return_eager_affi). x_sb_layout and the performance flags do not change results."""
    flags = {"output_in_sbuf": output_in_sbuf, "x_input_in_sbuf": x_input_in_sbuf}
    flags["expert_affin_in_sb"] = expert_affin_in_sb
    for flag, value in flags.items():
        if value:
            raise UnsupportedCall(f"{flag}=True: {UNSUPPORTED_FLAGS[flag]}")
    if x_hbm_layout not in (0, 1):
        raise UnsupportedCall(f"x_hbm_layout={x_hbm_layout}: 0 ([H, T]) or 1 ([T, H])")
    x, w = np.asarray(x), np.asarray(w)
    if x.ndim != 2:
        raise UnsupportedCall(f"x: expected [H, T] or [T, H] in HBM, got shape {x.shape}")
    if w.ndim != 2:
        raise UnsupportedCall(f"w: expected [H, E], got shape {w.shape}")
    hidden, experts = w.shape
    tokens = x.shape[1] if x_hbm_layout == 0 else x.shape[0]
    for name, buffer, shape in (
        ("router_logits", router_logits, (tokens, experts)),
        ("expert_affinities", expert_affinities, (tokens, experts)),
        ("expert_index", expert_index, (tokens, k)),
    ):
        if buffer is None or tuple(np.shape(buffer)) != shape:
            raise UnsupportedCall(f"{name}: expected a buffer of shape {shape}, got {np.shape(buffer)}")
    if np.dtype(expert_index.dtype) not in (np.dtype(np.int32), np.dtype(np.uint32)):
        raise UnsupportedCall(f"expert_index: dtype {expert_index.dtype}; int32 or uint32")
    out_dtype = spec_dtype(expert_affinities, "expert_affinities")
    if spec_dtype(router_logits, "router_logits") != out_dtype:
        raise UnsupportedCall(
            f"router_logits: dtype {router_logits.dtype} differs from expert_affinities' {expert_affinities.dtype}; "
            "moegen's router writes both in one output dtype"
        )
    name, text = router_variant(
        hidden=hidden,
        experts=experts,
        k=int(k),
        in_dtype=spec_dtype(x, "x"),
        out_dtype=out_dtype,
        act_fn=act_fn,
        w_bias=w_bias is not None,
        x_hbm_layout=x_hbm_layout,
        router_pre_norm=router_pre_norm,
        norm_topk_prob=norm_topk_prob,
        use_indirect_dma_scatter=use_indirect_dma_scatter,
        return_eager_affi=return_eager_affi,
        shard_on_tokens=shard_on_tokens,
        skip_store_router_logits=skip_store_router_logits,
    )
    built = variant(name, text)
    args = [x, w] + ([np.asarray(w_bias)] if w_bias is not None else [])
    launch = built.kernel[2] if built.plan.lnc == 2 else built.kernel
    results = list(simulate(launch, target=built.plan.target)(*args))
    if built.plan.store_logits:
        np.copyto(router_logits, np.asarray(results.pop(0)), casting="unsafe")
    index = np.asarray(results.pop(0))
    if not skip_store_expert_index:
        np.copyto(expert_index, index, casting="unsafe")
    np.copyto(expert_affinities, np.asarray(results.pop(0)), casting="unsafe")
    outputs = [router_logits, expert_index, expert_affinities]
    if return_eager_affi:
        outputs.append(np.asarray(results.pop(0)))
    return outputs
