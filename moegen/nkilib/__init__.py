"""AWS nki-library signatures backed by moegen's generated kernels (issue 16).

`router_topk`, `moe_tkg` and `moe_cte` take AWS's arguments, defaults, enums and output buffers; a call maps its flags to a
spec variant (docs/nkilib.md), generates that kernel on first use (cached on disk by the spec's
content hash, as `moegen build` writes it) and runs it in the simulator. A flag combination moegen
cannot generate raises UnsupportedCall naming the flag and the reason.
"""

from moegen.nkilib.cte import MoECTESpec, QuantizationConfig, ShardOnBlockConfig, ShardOnIConfig, SkipMode, moe_cte
from moegen.nkilib.enums import (
    ActFnType,
    BlockShardStrategy,
    ExpertAffinityScaleMode,
    MoECTEImplementation,
    RouterActFnType,
)
from moegen.nkilib.router import router_topk
from moegen.nkilib.tkg import moe_tkg
from moegen.nkilib.variant import UnsupportedCall

__all__ = [
    "ActFnType",
    "BlockShardStrategy",
    "ExpertAffinityScaleMode",
    "MoECTEImplementation",
    "MoECTESpec",
    "QuantizationConfig",
    "RouterActFnType",
    "ShardOnBlockConfig",
    "ShardOnIConfig",
    "SkipMode",
    "UnsupportedCall",
    "moe_cte",
    "moe_tkg",
    "router_topk",
]
