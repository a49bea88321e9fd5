"""NumPy reference math of SEMANTICS.md: one function per kernel family, with the kernels' argument
names, plus dtype and quantization helpers. Knows nothing about tiles, and never imports the compiler
or the simulator."""

from moegen.reference.cte import moe_cte, moe_per_token
from moegen.reference.mlp import ACTIVATIONS, ExpertMLP, Precision, activation, dense_mlp_mx, expert_mlp
from moegen.reference.quant import (
    cast,
    dequantize_down,
    dequantize_gate_up,
    dequantize_mx,
    dtype_name,
    max_finite,
    name_of_array,
    np_dtype,
    quantize_down_fp8,
    quantize_fp8,
    quantize_gate_up_fp8,
    quantize_mx,
    round_to,
)
from moegen.reference.router import router_topk, select_experts
from moegen.reference.tkg import moe_tkg

__all__ = [
    "ACTIVATIONS",
    "ExpertMLP",
    "Precision",
    "activation",
    "cast",
    "dense_mlp_mx",
    "dequantize_down",
    "dequantize_gate_up",
    "dequantize_mx",
    "dtype_name",
    "name_of_array",
    "expert_mlp",
    "max_finite",
    "moe_cte",
    "moe_per_token",
    "moe_tkg",
    "np_dtype",
    "quantize_down_fp8",
    "quantize_fp8",
    "quantize_gate_up_fp8",
    "quantize_mx",
    "round_to",
    "router_topk",
    "select_experts",
]
