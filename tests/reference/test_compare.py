import ml_dtypes
import numpy as np
import pytest

from moegen.compare import TOLERANCES, Tolerance, compare, compare_topk, kind_of


def test_exact_integers():
    a = np.array([[0, 1], [2, 3]], np.int32)
    assert compare("idx", a, a.copy(), kind="exact").ok
    r = compare("idx", a, np.array([[0, 1], [3, 3]], np.int64))
    assert not r.ok and r.bad == 1 and r.first_bad == (1, 0)
    assert r.actual_at_first_bad == 2 and r.expected_at_first_bad == 3
    assert "1/4 elements" in str(r)


def test_float_tolerance_per_element():
    want = np.array([1.0, 100.0, 1e-3, 0.0], np.float32)
    tol = TOLERANCES["bf16"]
    ok = want + (tol.atol + tol.rtol * np.abs(want)) * 0.9
    assert compare("y", ok, want, kind="bf16").ok
    bad = ok.copy()
    bad[2] = want[2] + 1.1 * (tol.atol + tol.rtol * 1e-3)  # relative to its own value, not the max (100)
    r = compare("y", bad, want, kind="bf16")
    assert not r.ok and r.bad == 1 and r.first_bad == (2,)
    assert r.max_abs == pytest.approx(np.max(np.abs(bad.astype(np.float64) - want)))


def test_bf16_one_ulp_passes_fp32_does_not():
    want = np.array([1.5, -3.0, 7.0], np.float32)
    one_ulp = want * (1 + 2.0**-7)
    assert compare("y", one_ulp.astype(ml_dtypes.bfloat16), want, kind="bf16").ok
    assert not compare("y", one_ulp, want, kind="fp32").ok


def test_nan_in_actual_always_fails():
    want = np.zeros(4, np.float32)
    got = want.copy()
    got[3] = np.nan
    for kind in ("fp32", "bf16", "fp8", Tolerance(1.0, 1.0)):
        r = compare("y", got, want, kind=kind)
        assert not r.ok and r.first_bad == (3,) and r.bad == 1
    both = np.full(2, np.nan)
    assert not compare("y", both, both, kind="fp32").ok
    # masked-out elements are not compared
    assert compare("y", got, want, kind="fp32", mask=np.array([1, 1, 1, 0], bool)).ok


def test_infinities_and_shapes():
    a = np.array([np.inf, -np.inf, 1.0])
    assert compare("y", a, a.copy(), kind="fp32").ok
    assert not compare("y", a, -a, kind="fp32").ok
    r = compare("y", np.zeros((2, 3)), np.zeros((3, 2)), kind="fp32")
    assert not r.ok and "shape" in str(r)
    with pytest.raises(ValueError):
        compare("y", a, a, kind="bf17")


def test_kind_from_dtype_and_overrides():
    assert kind_of(np.zeros(1, np.int32)) == "exact"
    assert kind_of(np.zeros(1, ml_dtypes.bfloat16)) == "bf16"
    assert kind_of(np.zeros(1, np.float16)) == "fp16"
    r = compare("y", np.array([1.001], np.float32), np.array([1.0], np.float32))
    assert r.kind == "fp32" and not r.ok
    assert compare("y", np.array([1.001]), np.array([1.0]), kind="fp32", rtol=1e-2).ok
    assert compare("y", np.array([1.0, 0.0]), np.array([1.0, 0.0]), kind="exact").ok


def test_topk_near_ties():
    scores = np.array([[0.5, 0.5 + 1e-7, 0.1, 0.0]])
    want = np.array([[1, 0]])
    swapped = np.array([[0, 1]])
    assert not compare_topk("idx", swapped, want, scores).ok
    assert compare_topk("idx", swapped, want, scores, atol=1e-6).ok
    assert not compare_topk("idx", np.array([[0, 0]]), want, scores, atol=1e-6).ok  # never twice
    assert not compare_topk("idx", np.array([[1, 2]]), want, scores, atol=1e-6).ok
