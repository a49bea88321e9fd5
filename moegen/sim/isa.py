"""The `nki.isa` namespace of the simulator (NKI 0.6 API, names and parameters as in api.json).

Data movement / synchronisation / registers come from `isa_move`, TensorE from `isa_tensor_engine`,
the Vector / Scalar / GpSimd compute instructions from `isa_compute`. Every listed API that is not
implemented is a stub raising NotImplementedError naming it (`NOT_IMPLEMENTED`).
"""

from __future__ import annotations

from moegen.sim import runtime as _runtime
from moegen.sim.enums import (  # noqa: F401
    NkiInstruction,
    NkiValidationError,
    dge_mode,
    dma_engine,
    engine,
    gpsimd_engine,
    matmul_perf_mode,
    nc_version,
    oob_mode,
    reduce_cmd,
    scalar_engine,
    tensor_engine,
    unknown_engine,
    vector_engine,
)
from moegen.sim.isa_move import (  # noqa: F401
    core_barrier,
    dma_compute,
    dma_copy,
    dma_transpose,
    register_alloc,
    register_load,
    register_move,
    register_store,
    sendrecv,
)
from moegen.sim.isa_mx import nc_matmul_mx, quantize_mx  # noqa: F401
from moegen.sim.isa_tensor_engine import nc_matmul, nc_transpose  # noqa: F401
from moegen.sim.registers import VirtualRegister  # noqa: F401

try:  # the compute instructions (Vector / Scalar / GpSimd engines)
    from moegen.sim import isa_compute as _compute
except ImportError:  # pragma: no cover - before the module exists
    _compute = None

if _compute is not None:
    for _name in dir(_compute):
        _obj = getattr(_compute, _name)
        if not _name.startswith("_") and callable(_obj) and getattr(_obj, "__module__", "") == _compute.__name__:
            globals().setdefault(_name, _obj)
    del _name, _obj

from moegen.sim.language_ops import equal, maximum  # noqa: E402,F401  (defaults of affine_select, range_select)


def get_nc_version() -> nc_version:
    """NeuronCore version of the simulated target: gen3 (trn2) or gen4 (trn3)."""
    return nc_version.gen3 if _runtime.current().target == "trn2" else nc_version.gen4


def get_nc_sub_version() -> int:
    """Sub-version of the NeuronCore (not documented beyond existing): 0."""
    return 0


from moegen.sim.stubs import fill_missing as _fill_missing  # noqa: E402

NOT_IMPLEMENTED = _fill_missing("nki.isa", globals())
