"""AWS nki-library signatures backed by moegen's generated kernels (issue 16).

`router_topk` and `moe_tkg` take AWS's arguments, defaults, enums and output buffers; a call maps its flags to a
spec variant (docs/nkilib.md), generates that kernel on first use (cached on disk by the spec's
content hash, as `moegen build` writes it) and runs it in the simulator. A flag combination moegen
cannot generate raises UnsupportedCall naming the flag and the reason.
"""

from moegen.nkilib.enums import ActFnType, ExpertAffinityScaleMode, RouterActFnType
from moegen.nkilib.router import router_topk
from moegen.nkilib.tkg import moe_tkg
from moegen.nkilib.variant import UnsupportedCall

__all__ = ["ActFnType", "ExpertAffinityScaleMode", "RouterActFnType", "UnsupportedCall", "moe_tkg", "router_topk"]
