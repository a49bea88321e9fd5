"""The `nki.collectives` namespace: listed for API parity; none is simulated (as in the official simulator).

Every function raises NotImplementedError naming it. LNC=2 exchange inside a kernel uses
`nki.isa.sendrecv` and `nki.isa.core_barrier`, which are implemented.
"""

from __future__ import annotations

from moegen.sim.enums import NKIObject


class ReplicaGroup(NKIObject):
    """A group of ranks taking part in a collective (not simulated)."""


from moegen.sim.stubs import fill_missing as _fill_missing  # noqa: E402

NOT_IMPLEMENTED = _fill_missing("nki.collectives", globals())
