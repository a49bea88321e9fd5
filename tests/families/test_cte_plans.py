"""cte plans: what each variant resolves to, and every refused cell with its reason (no simulator)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moegen.compiler import generate, load_spec, plan_spec
from moegen.diagnostics import SpecError

REPO = Path(__file__).resolve().parents[2]


def layer_spec(
    kernels: str,
    *,
    dims: str = "hidden=512 intermediate=512 experts=8 top_k=2",
    dtype: str = "bf16",
    expert: str = "gate_up -> silu -> down -> scale",
    quant: str = "",
) -> str:
    quant_line = f"  quant {quant}\n" if quant else ""
    return f"moe t {{\n  dims {dims}\n  dtype {dtype}\n{quant_line}  expert = {expert}\n  {kernels}\n}}\n"


def plans(tmp_path: Path, text: str):
    path = tmp_path / "t.moe"
    path.write_text(text)
    return plan_spec(load_spec(path))


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(SpecError) as error:
        plans(tmp_path, text)
    return str(error.value)


def test_shard_on_block_lnc1_defaults(tmp_path):
    (plan,) = plans(tmp_path, layer_spec("kernel p : cte { block=256 }"))
    assert (plan.shard, plan.lnc, plan.block, plan.accumulate, plan.hybrid) == ("block", 1, 256, True, False)
    assert plan.token_tiles == 2 and plan.token_chunks == ((0, 128), (128, 128))  # one gate/up chunk per token tile
    assert plan.skip_padding_tiles and not plan.skip_empty_weights  # resident weights: no empty-block skip
    assert plan.h_tiles == ((0, 128), (128, 128), (256, 128), (384, 128))
    assert plan.resident_weights and plan.reuse_weights
    assert plan.arguments == (
        "hidden_states",
        "expert_affinities_masked",
        "gate_up_proj_weight",
        "down_proj_weight",
        "token_position_to_id",
        "block_to_expert",
    )


def test_shard_on_i_lnc2_splits_intermediate_and_output_columns(tmp_path):
    (plan,) = plans(
        tmp_path,
        layer_spec(
            "kernel p : cte { shard=intermediate lnc=2 }", dims="hidden=2880 intermediate=2880 experts=32 top_k=4"
        ),
    )
    assert plan.exchange and plan.i_core == 1440 and plan.h_out == 1440
    assert plan.i_tiles[-1] == (1408, 32)  # tail tile of I
    assert plan.h_tiles[-1] == (2816, 64)  # tail tile of H


def test_top1_overwrites_and_hybrid_reads_conditions(tmp_path):
    text = layer_spec(
        "kernel p : cte { shard=intermediate loop=hybrid }", dims="hidden=512 intermediate=512 experts=8 top_k=1"
    )
    (plan,) = plans(tmp_path, text)
    assert not plan.accumulate and plan.hybrid and "conditions" in plan.arguments


def test_large_expert_streams_weights_in_chunks_that_fit(tmp_path):
    (plan,) = plans(
        tmp_path, layer_spec("kernel p : cte { }", dims="hidden=4096 intermediate=14336 experts=8 top_k=2 tp=8")
    )
    assert not plan.resident_weights and not plan.reuse_weights
    assert plan.sbuf_bytes() <= 224 * 1024 - 16 * 1024
    assert plan.psum_banks() <= 8


def test_streamed_shard_block_pipelines_blocks_within_sbuf(tmp_path):
    """Mixtral's prefill shape (shard=block, LNC 2, streamed weights): the next block starts during the previous
    one, output rows are read a chunk ahead, ScalarE evacuates the down PSUM, the zero fill goes out during the
    first block, and the extra buffers still fit trn2's SBUF."""
    dims = "hidden=4096 intermediate=14336 experts=8 top_k=2 tp=8"
    stream, hybrid = plans(
        tmp_path, layer_spec("kernel p : cte { lnc=2 }\n  kernel q : cte { lnc=2 loop=hybrid }", dims=dims)
    )
    assert stream.pipeline_blocks and stream.out_prefetch and stream.down_scale_on_scalar
    assert stream.zero_in_first_block and stream.serpentine
    assert stream.x_copy_engines == ("vector", "scalar") and stream.x_psum_groups_per_bank == 2
    assert not (stream.output_dma_add or stream.metadata_prefetch or stream.gather_prefetch or stream.down_ids_copy)
    assert stream.sbuf_bytes() <= 224 * 1024 - 16 * 1024 and stream.psum_banks() <= 8
    # the hybrid body is one program for every block: no cross-block pipelining (the zero fill goes out in the
    # first trace-time block); its own pipelining adds into the output rows by dma_compute, not reading them ahead
    assert not hybrid.pipeline_blocks and hybrid.zero_in_first_block and not hybrid.out_prefetch
    assert hybrid.output_dma_add and hybrid.metadata_prefetch and hybrid.down_scale_on_scalar
    assert hybrid.sbuf_bytes() <= 224 * 1024 - 16 * 1024 and hybrid.psum_banks() <= 8


def test_fp8_row_biases_clamps_swish_are_all_arguments(tmp_path):
    expert = "gate_up(bias) -> clamp(gate <= 7, -7 <= up <= 7) -> swish(1.702) -> up_plus_one -> down(bias) -> scale"
    (plan,) = plans(tmp_path, layer_spec("kernel p : cte { }", expert=expert, quant="weights=fp8_row"))
    assert plan.arguments[-4:] == ("gate_and_up_proj_bias", "down_proj_bias", "gate_up_proj_scale", "down_proj_scale")
    assert (plan.mlp.up_lower, plan.mlp.up_upper, plan.mlp.up_constant) == (-6.0, 8.0, 1.0)
    assert plan.weight_dtype == "fp8"


@pytest.mark.parametrize(
    "kernel, needle",
    [
        ("kernel p : cte { loop=hybrid lnc=2 distribute=halves }", "distribute=halves cannot take loop=hybrid"),
        ("kernel p : cte { shard=intermediate loop=hybrid dropping }", "loop=hybrid cannot drop tokens"),
        ("kernel p : cte { update=overwrite }", "update=overwrite needs top_k 1"),
        ("kernel p : cte { distribute=halves }", "needs shard=block and lnc=2"),
        ("kernel p : cte { block=384 block=128 }", "given twice"),
        ("kernel p : cte { block=320 }", "multiple of 128"),
        ("kernel p : cte { block=2048 }", "at most 1024"),
    ],
)
def test_refused_variants_say_why(tmp_path, kernel, needle):
    assert needle in refusal(tmp_path, layer_spec(kernel))


@pytest.mark.parametrize(
    "setting, needle",
    [
        (dict(dtype="fp32"), "bf16 or fp16"),
        (dict(quant="weights=mxfp4 activations=fp8_static"), "quantized on chip to MXFP8"),
        (dict(quant="weights=fp8_row activations=fp8_static"), "static fp8 input quantization is not generated"),
        (dict(dims="hidden=520 intermediate=512 experts=8 top_k=2"), "multiples of 16"),
        (dict(dims="hidden=512 intermediate=520 experts=8 top_k=2"), "multiple of 16"),
    ],
)
def test_refused_layers_say_why(tmp_path, setting, needle):
    assert needle in refusal(tmp_path, layer_spec("kernel p : cte { }", **setting))


def test_shard_on_i_lnc2_with_odd_half_overlaps_the_core_shares(tmp_path):
    """I_TP 528: 264 per core is not a multiple of 16, so the shares are 272 columns overlapping in 16
    (tests/families/test_cte_uneven_split.py runs such a kernel); checkpointing them is refused."""
    dims = "hidden=512 intermediate=528 experts=8 top_k=2"
    path = tmp_path / "t.moe"
    path.write_text(layer_spec("kernel p : cte { shard=intermediate lnc=2 }", dims=dims))
    plan = generate(path).plans[0]
    assert (plan.i_core, plan.i_overlap) == (272, 16)
    text = layer_spec("kernel p : cte { shard=intermediate lnc=2 checkpoint }", dims=dims)
    assert "needs I_TP a multiple of 32" in refusal(tmp_path, text)


def test_resident_weights_refused_when_they_do_not_fit(tmp_path):
    text = layer_spec("kernel p : cte { weights=resident }", dims="hidden=4096 intermediate=14336 experts=8 top_k=2")
    assert "weights=resident" in refusal(tmp_path, text)


def test_refusal_points_at_the_option(tmp_path):
    message = refusal(tmp_path, layer_spec("kernel p : cte { lnc=2 loop=hybrid distribute=halves }"))
    assert "t.moe:5:" in message and "^" in message


@pytest.mark.parametrize("spec", sorted((REPO / "specs").glob("*.moe")), ids=lambda p: p.stem)
def test_every_cte_kernel_in_specs_plans(spec):
    for plan in plan_spec(load_spec(spec)):
        if plan.family == "cte":
            assert plan.sbuf_bytes() <= 224 * 1024 and plan.psum_banks() <= 8


def test_generated_kernels_pass_the_static_and_api_checks(tmp_path):
    import subprocess
    import sys

    from moegen import sim
    from moegen.codegen.build import write
    from moegen.compiler import generate

    text = layer_spec(
        """kernel block2 : cte { lnc=2 checkpoint }
  kernel i2 : cte { shard=intermediate lnc=2 padding=skip }
  kernel hybrid : cte { shard=intermediate loop=hybrid checkpoint }
  kernel drop : cte { dropping weights=stream }""",
        dims="hidden=320 intermediate=192 experts=4 top_k=2",
        quant="weights=fp8_row",
        expert="gate_up(bias) -> clamp(gate <= 7, -7 <= up <= 7) -> swish(1.702) -> up_plus_one -> down(bias) -> scale",
    )
    (tmp_path / "t.moe").write_text(text)
    folder = write(generate(tmp_path / "t.moe"), tmp_path / "generated")
    for path in sorted(folder.glob("*.py")):
        assert sim.static_check(path) == [], path.name
    tool = REPO.parent / "shared" / "tools" / "nki_conformance.py"
    if tool.exists():
        result = subprocess.run([sys.executable, str(tool), str(folder)], capture_output=True, text=True)
        assert "0 calls outside" in result.stdout, result.stdout + result.stderr
