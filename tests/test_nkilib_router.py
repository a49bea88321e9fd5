"""moegen.nkilib.router_topk: AWS's call conventions map to the router variant of docs/nkilib.md.

Each case calls the entry point with AWS's arguments and output buffers and compares every output
with the same variant written by hand as a spec and run through the verify harness: bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from moegen import nkilib
from moegen.nkilib import RouterActFnType, UnsupportedCall
from moegen.reference import np_dtype
from moegen.verify import router as harness
from tests.families.support import build_spec, layer_spec

H, E, K, T = 256, 16, 4, 9

# (act_fn, router_pre_norm, norm_topk_prob) -> the spec pipeline; norm_topk_prob after the top-K is
# ignored (AWS's kernel ignores it there).
PIPELINES = {
    ("SOFTMAX", True, False): "softmax -> topk",
    ("SOFTMAX", True, True): "softmax -> topk -> renormalize",
    ("SOFTMAX", False, False): "topk -> softmax",
    ("SOFTMAX", False, True): "topk -> softmax",
    ("SIGMOID", True, False): "sigmoid -> topk",
    ("SIGMOID", True, True): "sigmoid -> topk -> renormalize",
    ("SIGMOID", False, False): "topk -> sigmoid",
    ("SIGMOID", False, True): "topk -> sigmoid",
}
# Other flags, varied across the eight pipelines so that each value meets several of them.
OTHERS = [
    dict(x_hbm_layout=1, use_indirect_dma_scatter=False, return_eager_affi=False, bias=False, shard=False),
    dict(x_hbm_layout=0, use_indirect_dma_scatter=True, return_eager_affi=True, bias=True, shard=False),
    dict(x_hbm_layout=1, use_indirect_dma_scatter=True, return_eager_affi=False, bias=True, shard=True),
    dict(x_hbm_layout=0, use_indirect_dma_scatter=False, return_eager_affi=True, bias=False, shard=True),
]
CASES = [(key, OTHERS[i % 4], i % 3 == 2) for i, key in enumerate(PIPELINES)] + [
    (key, OTHERS[(i + 1) % 4], i % 2 == 0) for i, key in enumerate(PIPELINES)
]


def _hand_written_spec(key, flags, skip_logits) -> str:
    act, pre, norm = key
    linear = "linear(bias)" if flags["bias"] else "linear"
    scatters = not pre or norm
    options = ["layout=" + ("ht" if flags["x_hbm_layout"] == 0 else "th")]
    options += ["scatter=dma"] if flags["use_indirect_dma_scatter"] and scatters else []
    options += ["eager"] if flags["return_eager_affi"] else []
    options += ["skip_logits"] if skip_logits else []
    options += ["lnc=2"] if flags["shard"] else []
    return layer_spec(
        f"kernel route : router {{ {' '.join(options)} }}",
        hidden=H,
        intermediate=128,
        experts=E,
        top_k=K,
        router=f"{linear} -> {PIPELINES[key]}",
    )


@pytest.mark.parametrize("key, flags, skip_logits", CASES, ids=lambda v: str(v).replace(" ", ""))
def test_router_topk_matches_the_spec_variant(tmp_path, monkeypatch, key, flags, skip_logits):
    monkeypatch.setenv("MOEGEN_NKILIB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "specs").mkdir()
    generated, modules = build_spec(_hand_written_spec(key, flags, skip_logits), tmp_path / "specs")
    plan = generated.plans[0]
    inputs = harness.make_inputs(plan, T, np.random.default_rng(7))
    want = harness.run(modules["route"].route, plan, inputs)

    bf16 = np_dtype("bf16")
    logits = np.zeros((T, E), dtype=bf16)
    affinities = np.zeros((T, E), dtype=bf16)
    index = np.zeros((T, K), dtype=np.uint32)
    outputs = nkilib.router_topk(
        inputs["x"],
        inputs["w"],
        inputs.get("w_bias"),
        logits,
        affinities,
        index,
        getattr(RouterActFnType, key[0]),
        K,
        x_hbm_layout=flags["x_hbm_layout"],
        x_sb_layout=0,
        router_pre_norm=key[1],
        norm_topk_prob=key[2],
        use_indirect_dma_scatter=flags["use_indirect_dma_scatter"],
        return_eager_affi=flags["return_eager_affi"],
        shard_on_tokens=flags["shard"],
        skip_store_router_logits=skip_logits,
    )
    assert outputs[0] is logits and outputs[1] is index and outputs[2] is affinities
    assert np.array_equal(index, want["expert_index"].astype(np.uint32))
    assert np.array_equal(affinities.astype(np.float32), want["expert_affinities"].astype(np.float32))
    if skip_logits:
        assert not logits.astype(np.float32).any()  # the buffer is left alone
    else:
        assert np.array_equal(logits.astype(np.float32), want["router_logits"].astype(np.float32))
    if flags["return_eager_affi"]:
        assert np.array_equal(outputs[3].astype(np.float32), want["expert_affinities_eager"].astype(np.float32))


def _call(x, w, w_bias=None, **flags):
    bf16 = np_dtype("bf16")
    tokens = x.shape[0] if flags.get("x_hbm_layout", 1) == 1 else x.shape[1]
    buffers = (np.zeros((tokens, E), bf16), np.zeros((tokens, E), bf16), np.zeros((tokens, K), np.int32))
    flags.setdefault("x_hbm_layout", 1)
    return nkilib.router_topk(x, w, w_bias, *buffers, RouterActFnType.SOFTMAX, K, x_sb_layout=0, **flags)


def _inputs(rng):
    bf16 = np_dtype("bf16")
    x = (rng.integers(-8, 9, size=(T, H)) / 8.0).astype(bf16)
    w = (rng.integers(-16, 17, size=(H, E)) / 512.0).astype(bf16)
    return x, w


@pytest.mark.parametrize("flag", ["output_in_sbuf", "x_input_in_sbuf", "expert_affin_in_sb"])
def test_unsupported_flags_name_the_flag(tmp_path, monkeypatch, flag):
    monkeypatch.setenv("MOEGEN_NKILIB_CACHE", str(tmp_path))
    x, w = _inputs(np.random.default_rng(1))
    with pytest.raises(UnsupportedCall, match=flag):
        _call(x, w, **{flag: True})


def test_bad_buffers_and_dtypes_name_the_argument(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEGEN_NKILIB_CACHE", str(tmp_path))
    x, w = _inputs(np.random.default_rng(1))
    with pytest.raises(UnsupportedCall, match="x: dtype int64"):
        _call(np.zeros((T, H), dtype=np.int64), w)
    bf16 = np_dtype("bf16")
    with pytest.raises(UnsupportedCall, match="expert_index"):
        nkilib.router_topk(
            x,
            w,
            None,
            np.zeros((T, E), bf16),
            np.zeros((T, E), bf16),
            np.zeros((T, K + 1), np.int32),
            RouterActFnType.SOFTMAX,
            K,
            1,
            0,
        )
    with pytest.raises(UnsupportedCall, match="router_logits"):
        nkilib.router_topk(
            x,
            w,
            None,
            np.zeros((T, E), np.float32),
            np.zeros((T, E), bf16),
            np.zeros((T, K), np.int32),
            RouterActFnType.SOFTMAX,
            K,
            1,
            0,
        )


def test_bias_in_either_seed_shape(tmp_path, monkeypatch):
    """The seed page: w_bias [1, E] or [E]; both give the same outputs."""
    monkeypatch.setenv("MOEGEN_NKILIB_CACHE", str(tmp_path))
    x, w = _inputs(np.random.default_rng(2))
    bias = (np.arange(E) / 64.0).astype(np_dtype("bf16"))
    flat = _call(x, w, bias, router_pre_norm=False)
    row = _call(x, w, bias.reshape(1, E), router_pre_norm=False)
    for a, b in zip(flat, row):
        assert np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_variant_is_cached_as_moegen_build_writes_it(tmp_path, monkeypatch):
    """The first call writes the spec and generated/ under the cache (a folder named by the spec's
    hash); `moegen check` finds it current; a second process's call reuses the files unchanged."""
    from moegen.codegen.build import check
    from moegen.compiler import generate
    from moegen.nkilib import variant as variant_module

    monkeypatch.setenv("MOEGEN_NKILIB_CACHE", str(tmp_path))
    x, w = _inputs(np.random.default_rng(3))
    first = _call(x, w)
    (folder,) = list(tmp_path.iterdir())
    (spec,) = list(folder.glob("*.moe"))
    assert spec.stem == folder.name and check(generate(spec), folder / "generated") == []
    kernel_file = folder / "generated" / folder.name / "kernel.py"
    before = (kernel_file.read_bytes(), kernel_file.stat().st_mtime_ns)
    monkeypatch.setattr(variant_module, "_LOADED", {})  # as in a new process
    second = _call(x, w)
    assert (kernel_file.read_bytes(), kernel_file.stat().st_mtime_ns) == before
    for a, b in zip(first, second):
        assert np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_variant_build_is_deterministic(tmp_path, monkeypatch):
    """Two caches built from scratch hold byte-identical spec and kernel files."""
    from moegen.nkilib import variant as variant_module

    x, w = _inputs(np.random.default_rng(4))
    trees = []
    for name in ("a", "b"):
        monkeypatch.setenv("MOEGEN_NKILIB_CACHE", str(tmp_path / name))
        monkeypatch.setattr(variant_module, "_LOADED", {})
        _call(x, w, router_pre_norm=False)
        root = tmp_path / name
        trees.append({str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()})
    assert trees[0] == trees[1] and len(trees[0]) == 2
