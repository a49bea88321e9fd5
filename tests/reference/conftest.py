import numpy as np
import pytest

from moegen.reference.quant import round_to


def make_moe(rng, t=48, h=32, i=16, e=8, k=2, dtype="bf16", biases=False):
    """Random MoE inputs snapped to `dtype`: x [T, H], gate_up [E, H, 2, I], down [E, I, H], routing."""
    x = round_to(rng.standard_normal((t, h)), dtype)
    gu = round_to(rng.standard_normal((e, h, 2, i)) / np.sqrt(h), dtype)
    dn = round_to(rng.standard_normal((e, i, h)) / np.sqrt(i), dtype)
    scores = rng.standard_normal((t, e))
    index = np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int32)
    aff = np.zeros((t, e), np.float32)
    np.put_along_axis(aff, index, round_to(rng.random((t, k)) + 0.1, dtype), axis=1)
    out = dict(x=x, gu=gu, dn=dn, index=index, aff=aff)
    if biases:
        out["gu_bias"] = round_to(rng.standard_normal((e, 2, i)) * 0.1, dtype)
        out["dn_bias"] = round_to(rng.standard_normal((e, h)) * 0.1, dtype)
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
