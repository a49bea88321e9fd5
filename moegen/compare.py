"""Per-element comparison of kernel outputs with the reference (SEMANTICS section 8).

Integer outputs must match exactly. Float outputs pass element by element when
|actual - expected| <= atol + rtol * |expected|, with (rtol, atol) taken from the lowest-precision
dtype the kernel rounds through (the `kind`), never scaled by the tensor's global maximum.
A NaN anywhere in `actual` is a failure (the simulator fills unwritten memory with NaN), and so is
a NaN in `expected` (the reference never produces one; leave unspecified elements out with `mask`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float  # or an array broadcast against the compared tensor (a per-row allowance)


# Two units in the last place of the kind's significand (2 * 2^-p, p stored mantissa bits): one for the
# final rounding landing on the other side of a tie, one for upstream rounding flips, when the reference
# rounds where the kernel rounds. atol equals rtol, i.e. it assumes O(1) data (scale it with `atol=`
# otherwise). fp32 allows for a different accumulation order over a few thousand terms.
TOLERANCES: dict[str, Tolerance] = {
    "exact": Tolerance(0.0, 0.0),
    "fp32": Tolerance(1e-5, 1e-5),
    "fp16": Tolerance(2 * 2.0**-10, 2 * 2.0**-10),
    "bf16": Tolerance(2 * 2.0**-7, 2 * 2.0**-7),
    "fp8": Tolerance(2 * 2.0**-3, 2 * 2.0**-3),
    "fp8_e4m3": Tolerance(2 * 2.0**-3, 2 * 2.0**-3),
    "fp8_e4m3fn": Tolerance(2 * 2.0**-3, 2 * 2.0**-3),
    "fp8_e5m2": Tolerance(2 * 2.0**-2, 2 * 2.0**-2),
}
_KIND_OF_DTYPE = {
    "float32": "fp32",
    "float64": "fp32",
    "float16": "fp16",
    "bfloat16": "bf16",
    "float8_e4m3": "fp8_e4m3",
    "float8_e4m3fn": "fp8_e4m3fn",
    "float8_e5m2": "fp8_e5m2",
}


@dataclass(frozen=True)
class CompareResult:
    """Outcome of one comparison. first_bad is the index (tuple) of the first failing element."""

    name: str
    kind: str
    ok: bool
    max_abs: float
    max_rel: float
    bad: int
    total: int
    rtol: float
    atol: float  # or an array broadcast against the compared tensor (a per-row allowance)
    first_bad: tuple[int, ...] | None = None
    actual_at_first_bad: float | None = None
    expected_at_first_bad: float | None = None
    message: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        head = f"{self.name} [{self.kind} rtol={self.rtol:.3g} atol={self.atol:.3g}]"
        if self.message:
            return f"{head}: {self.message}"
        stats = f"max_abs={self.max_abs:.3e} max_rel={self.max_rel:.3e}"
        if self.ok:
            return f"{head}: ok, {self.total} elements, {stats}"
        return (
            f"{head}: {self.bad}/{self.total} elements out of tolerance, {stats}; first at {self.first_bad}: "
            f"got {self.actual_at_first_bad!r}, want {self.expected_at_first_bad!r}"
        )


def kind_of(arr: np.ndarray) -> str:
    """Default kind for an array: 'exact' for integers and booleans, else its float dtype's kind."""
    dt = np.asarray(arr).dtype
    if dt.kind in "iub":
        return "exact"
    return _KIND_OF_DTYPE.get(dt.name, "fp32")


def compare(
    name: str,
    actual: np.ndarray,
    expected: np.ndarray,
    *,
    kind: str | Tolerance | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    mask: np.ndarray | None = None,
) -> CompareResult:
    """Compare actual with expected element by element.

    kind: a key of TOLERANCES ('exact', 'fp32', 'bf16', 'fp16', 'fp8', ...), a Tolerance, or None
    to derive it from actual's dtype (integers exact). rtol/atol override the kind's values. mask (a
    bool array broadcastable to the shape) selects the elements compared.
    """
    got = np.asarray(actual)
    want = np.asarray(expected)
    if kind is None:
        kind = "exact" if kind_of(want) == "exact" else kind_of(got)
    if isinstance(kind, Tolerance):
        tol, kind_name = kind, "custom"
    else:
        if kind not in TOLERANCES:
            raise ValueError(f"unknown compare kind {kind!r}; known: {', '.join(TOLERANCES)}")
        tol, kind_name = TOLERANCES[kind], kind
    tol = Tolerance(tol.rtol if rtol is None else rtol, tol.atol if atol is None else atol)

    def result(ok, **fields):
        base = dict(
            name=name,
            kind=kind_name,
            ok=ok,
            max_abs=0.0,
            max_rel=0.0,
            bad=0,
            total=int(want.size),
            rtol=tol.rtol,
            atol=float(np.max(tol.atol)),  # a per-element atol array is reported by its largest value
        )
        base.update(fields)
        return CompareResult(**base)

    if got.shape != want.shape:
        return result(
            False,
            max_abs=float("inf"),
            max_rel=float("inf"),
            bad=int(want.size),
            message=f"shape {got.shape} != expected {want.shape}",
        )
    if kind_name == "exact" and got.dtype.kind in "iub" and want.dtype.kind in "iub":
        a, e = got.astype(np.int64), want.astype(np.int64)
        diff = np.abs(a - e).astype(np.float64)
        bad = a != e
        rel = np.zeros_like(diff)
    else:
        a, e = got.astype(np.float64), want.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            same_inf = np.isinf(a) & np.isinf(e) & (np.sign(a) == np.sign(e))
            diff = np.where(same_inf, 0.0, np.abs(a - e))
            diff = np.where(np.isnan(a) | np.isnan(e), np.inf, diff)
            bad = ~(diff <= tol.atol + tol.rtol * np.abs(e))
            rel = np.where(e != 0, diff / np.abs(np.where(e != 0, e, 1.0)), np.where(diff > 0, np.inf, 0.0))
    selected = np.ones(want.shape, dtype=bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), want.shape)
    bad &= selected
    total = int(selected.sum())
    max_abs = float(diff[selected].max()) if total else 0.0
    nonzero_expected = selected & (e != 0)
    max_rel = float(rel[nonzero_expected].max()) if nonzero_expected.any() else (0.0 if max_abs == 0 else float("inf"))
    count = int(bad.sum())
    if count == 0:
        return result(True, max_abs=max_abs, max_rel=max_rel, total=total)
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return result(
        False,
        max_abs=max_abs,
        max_rel=max_rel,
        bad=count,
        total=total,
        first_bad=first,
        actual_at_first_bad=_item(got[first]),
        expected_at_first_bad=_item(want[first]),
    )


def _item(v) -> float | int:
    v = np.asarray(v)
    return int(v) if v.dtype.kind in "iub" else float(v.astype(np.float64))


def compare_topk(
    name: str, actual_index: np.ndarray, expected_index: np.ndarray, scores: np.ndarray, *, atol: float = 0.0
) -> CompareResult:
    """Top-K indices [T, K]: exact, except that a row may differ where the selection scores [T, E]
    of the experts involved are within atol of each other (a near-tie that fp32 accumulation order
    can flip). Each row must still be K distinct experts whose scores match the expected ones
    position by position within atol. atol=0 is plain exact comparison.
    """
    got = np.asarray(actual_index).astype(np.int64)
    want = np.asarray(expected_index).astype(np.int64)
    plain = compare(name, got, want, kind="exact")
    if plain.ok or atol == 0 or got.shape != want.shape:
        return plain
    s = np.asarray(scores, dtype=np.float64)
    e = s.shape[1]
    in_range = (got >= 0) & (got < e)
    got_scores = np.take_along_axis(s, np.clip(got, 0, e - 1), axis=1)
    want_scores = np.take_along_axis(s, want, axis=1)
    ordered = np.sort(got, axis=1)
    distinct = np.all(ordered[:, 1:] != ordered[:, :-1], axis=1, keepdims=True)
    good = (got == want) | (in_range & distinct & (np.abs(got_scores - want_scores) <= atol))
    bad = ~good
    count = int(bad.sum())
    tol = dict(
        name=name,
        kind="topk",
        rtol=0.0,
        atol=atol,
        total=int(want.size),
        max_abs=plain.max_abs,
        max_rel=plain.max_rel,
    )
    if count == 0:
        return CompareResult(ok=True, bad=0, **tol)
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return CompareResult(
        ok=False,
        bad=count,
        first_bad=first,
        actual_at_first_bad=int(got[first]),
        expected_at_first_bad=int(want[first]),
        **tol,
    )
