"""NkiTensor: a view (shape, strides, offset, dtype) onto one allocation's flat storage.

Layout. Every allocation is a flat NumPy array in its dtype's storage format. On-chip tensors
(SBUF/PSUM) are partition-first: dim 0 is the partition, and the allocation's partition stride
(`Allocation.pstride`) is its free-element count per partition. Element (i0, ..., in) of a view is
storage element ``offset + sum(strides[k] * i_k)`` (+ dynamic terms), in elements of the view's dtype.

Dynamic offsets: a view may carry runtime terms ``(register | 1-element tensor, multiplier)``
(from `.ap(scalar_offset=)`, `select(dim, tensor)`, `nl.ds(reg, n)`), resolved when an
instruction reads or writes it, and one vector indirection (``vector_offset``: partition i
addresses row ``idx[i]`` of the base tensor), used for DMA gather / scatter.

Every read/write goes through `read()` / `write()` (or `_array()` for no-copy access by
instructions), which check bounds, round to the dtype, and record input writes and LNC=2
shared-HBM accesses.
"""

from __future__ import annotations

import enum
import weakref

import numpy as np

from moegen.sim import dtypes as dt
from moegen.sim import runtime
from moegen.sim.errors import NkiSimError
from moegen.sim.registers import VirtualRegister, value_of


class MemoryRegion(enum.Enum):
    """Memory regions (`nl.sbuf`, `nl.psum`, `nl.private_hbm`, `nl.shared_hbm`; `nl.hbm` = private_hbm)."""

    private_hbm = "private_hbm"
    psum = "psum"
    sbuf = "sbuf"
    shared_hbm = "shared_hbm"
    hbm = "private_hbm"  # alias  # noqa: PIE796

    def __repr__(self) -> str:
        return f"nl.{self.name}"


sbuf = MemoryRegion.sbuf
psum = MemoryRegion.psum
private_hbm = MemoryRegion.private_hbm
shared_hbm = MemoryRegion.shared_hbm
hbm = MemoryRegion.hbm

ON_CHIP = (MemoryRegion.sbuf, MemoryRegion.psum)
HBM = (MemoryRegion.private_hbm, MemoryRegion.shared_hbm)


def _region_of(x) -> MemoryRegion:
    if isinstance(x, NkiTensor):
        return x.buffer
    if isinstance(x, MemoryRegion):
        return x
    raise NkiSimError(f"buffer: expected an nl memory region (nl.sbuf, nl.psum, nl.hbm, ...), got {x!r}")


def is_on_chip(buffer) -> bool:
    """True for an SBUF/PSUM tensor or region."""
    return _region_of(buffer) in ON_CHIP


def is_hbm(buffer) -> bool:
    return _region_of(buffer) in HBM


def is_psum(buffer) -> bool:
    return _region_of(buffer) is MemoryRegion.psum


def is_sbuf(buffer) -> bool:
    return _region_of(buffer) is MemoryRegion.sbuf


class DynSlice:
    """`nl.ds(start, size)`: the slice start:start+size; start may be a register or 1-element tensor."""

    __slots__ = ("start", "size")

    def __init__(self, start, size):
        if not isinstance(size, (int, np.integer)) or size <= 0:
            raise NkiSimError(f"nl.ds: size must be a positive compile-time int, got {size!r}")
        self.start = start
        self.size = int(size)

    def __repr__(self) -> str:
        return f"nl.ds({self.start!r}, {self.size})"


def ds(start, size) -> DynSlice:
    return DynSlice(start, size)


# ------------------------------------------------------------------------------------------
# Allocation
# ------------------------------------------------------------------------------------------
class Allocation:
    """One block of storage: a flat NumPy array plus bookkeeping.

    buffer: MemoryRegion; dtype: allocation dtype; shape: allocated shape; data: flat storage;
    pstride: free elements per partition (on-chip) or None (HBM); mm_state: PSUM per-element
    flag, 0 = never written, 1 = last written by nc_matmul (accumulation may continue), 2 = last
    written by another instruction (isa_tensor_engine.UNWRITTEN / MM_WRITTEN / OTHER_WRITTEN); arg_index: position of
    the kernel argument it wraps, or None; written: set on any write.
    """

    __slots__ = (
        "id",
        "buffer",
        "dtype",
        "shape",
        "data",
        "name",
        "core",
        "pstride",
        "mm_state",
        "arg_index",
        "written",
        "_typed",
        "fresh",
        "version",
        "_f32",
        "pending",
        "cow",
        "addr",
        "_f32_miss",
        "_f32_uses",
        "_f32_waste",
        "origin",
        "site",
        "__weakref__",
    )

    def __init__(
        self,
        buffer: MemoryRegion,
        dtype: dt.DType,
        shape: tuple,
        data: np.ndarray,
        name: str,
        core,
        pstride: int | None,
    ):
        self.id = core.new_id() if core is not None else 0
        self.buffer = buffer
        self.dtype = dtype
        self.shape = shape
        self.data = data
        self.name = name
        self.core = core
        self.pstride = pstride
        self.mm_state = np.zeros(data.size, np.uint8) if buffer is MemoryRegion.psum else None
        self.arg_index = None
        self.written = False
        self._typed = {data.dtype: data}
        self.fresh = False  # True: sentinel fill still pending (done lazily on first access)
        self.version = 0  # bumped on every write (invalidates the float32 cache)
        self._f32 = None  # (version, flat float32 copy) for narrow-float SBUF matmul operands
        self._f32_miss = -1  # version at which a view was last converted without building the cache
        self._f32_uses = 0  # reads served by the current cache
        self._f32_waste = False  # the last cache served a single read before a write invalidated it
        # PSUM: nc_matmuls issued but not yet computed (isa_tensor_engine.PendingMatmuls); every access
        # to the storage or the matmul state computes them first (`flush_pending`)
        self.pending = None
        # kernel argument still aliasing the caller's array: copied on the first write (copy-on-write),
        # so read-only inputs are never copied and the caller's array is never written during the run
        self.cow = False
        # integer tile DMA-loaded from an integer kernel argument: (argument name, argument shape, flat
        # argument index per storage element or -1, version it holds for); see record_origin
        self.origin = None
        # byte address per partition of an on-chip tile (SBUF first fit / PSUM bank), for the trace
        self.addr = 0
        self.site = None  # 'file:line' of the kernel line that allocated a shared_hbm tensor (race reports)

    def unshare(self) -> None:
        """Copy-on-write: give an argument allocation its own storage before its first write."""
        core = self.core
        lock = core.run.lock if core is not None else None
        if lock is not None:
            lock.acquire()
        try:
            if self.cow:
                self.data = self.data.copy()
                self._typed = {self.data.dtype: self.data}
                self._f32 = None
                self.cow = False
        finally:
            if lock is not None:
                lock.release()

    def flush_pending(self) -> None:
        """Compute the deferred nc_matmuls accumulating into this allocation (no-op if none)."""
        p = self.pending
        if p is not None:
            self.pending = None
            p.flush()

    def materialize(self) -> None:
        """Perform the pending sentinel fill of a new allocation (not in trace-only mode: values unused)."""
        if self.fresh:
            self.fresh = False
            if self.core is None or not self.core.run.trace_only:
                self.data.fill(dt.sentinel(self.dtype))

    def region_key(self) -> str:
        """The memory this allocation lives in, for the trace: 'sbuf<core>' / 'psum<core>' (addressed by
        `addr`), or one key per HBM allocation ('hbm:<name>:<core>.<id>', unique in a run)."""
        pid = self.core.program_id if self.core is not None else 0
        if self.pstride is not None:
            return f"{self.buffer.name}{pid}"
        return f"hbm:{self.name}:{pid}.{self.id}"

    def f32_flat(self) -> np.ndarray:
        """Flat float32 copy of the storage, cached until the next write."""
        c = self._f32
        if c is not None and c[0] == self.version:
            self._f32_uses += 1
            return c[1]
        self._f32_waste = c is not None and self._f32_uses <= 1
        self._f32_uses = 1
        self.materialize()
        arr = dt.to_f32(self.data).astype(np.float32, copy=False)
        self._f32 = (self.version, arr)
        return arr

    def typed(self, npdtype: np.dtype) -> np.ndarray:
        """The flat storage reinterpreted as `npdtype` (bitcast views)."""
        if self.pending is not None:
            self.flush_pending()
        if self.fresh:
            self.materialize()
        a = self._typed.get(npdtype)
        if a is None:
            if self.data.nbytes % npdtype.itemsize:
                raise NkiSimError(
                    f"view: allocation '{self.name}' of {self.data.nbytes} bytes cannot be viewed as "
                    f"{npdtype} (limit: size a multiple of {npdtype.itemsize} bytes)"
                )
            a = self.data.view(npdtype)
            self._typed[npdtype] = a
        return a


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= int(x)
    return p


def _check_shape(shape, what: str) -> tuple:
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise NkiSimError(f"{what}: shape must be a tuple of ints, got {shape!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise NkiSimError(f"{what}: shape must be non-empty with positive sizes, got {shape}")
    return shape


def allocate(
    shape,
    dtype,
    buffer=MemoryRegion.sbuf,
    name: str = "",
    address=None,
    fill=None,
    data: np.ndarray | None = None,
) -> NkiTensor:
    """Allocate a tensor (`nl.ndarray`). New memory holds sentinels (NaN floats, 4 ints) unless `fill`/`data`.

    SBUF: live bytes per partition checked against the target's capacity. PSUM: the tile must fit
    one 2 KiB bank per partition, 8 banks per core. Released when the last view is garbage collected.
    """
    core = runtime.current()
    shape = _check_shape(shape, "nl.ndarray")
    dtype = dt.as_dtype(dtype)
    if isinstance(buffer, str):
        raise NkiSimError(f"nl.ndarray: buffer must be an nl memory region (nl.sbuf, ...), not the string {buffer!r}")
    buffer = _region_of(buffer)
    name = name or f"t{core.next_id + 1}"
    on_chip = buffer in ON_CHIP
    if on_chip:
        if len(shape) < 2 and shape != (1,):
            # one exception: the 1-element [1] tile of register_load / register_store (their pages:
            # "shape [1] or [1, 1]"; examples allocate nl.ndarray([1], ..., buffer=nl.sbuf))
            raise NkiSimError(
                f"nl.ndarray: on-chip tensor '{name}' must be at least 2-D (partition, free...), "
                f"got shape {shape} (limit: 2-D, or [1] for a register value)"
            )
        if shape[0] > runtime.NUM_PARTITIONS:
            raise NkiSimError(
                f"nl.ndarray: '{name}' partition dimension {shape[0]} exceeds maximum {runtime.NUM_PARTITIONS}"
            )
    if buffer is MemoryRegion.shared_hbm and core.num_programs > 1 and data is None:
        return _shared_alloc(core, shape, dtype, name, fill)
    storage = dtype.storage(core.precise)
    n = _prod(shape)
    lazy = False
    if data is not None:
        flat = np.ascontiguousarray(data.reshape(-1))
    elif fill is None:
        flat = np.empty(n, storage)
        lazy = True
    else:
        flat = np.full(n, fill, storage)
    pstride = _prod(shape[1:]) if on_chip else None
    alloc = Allocation(buffer, dtype, shape, flat, name, core, pstride)
    alloc.fresh = lazy
    if buffer is MemoryRegion.sbuf:
        _reserve_sbuf(core, alloc, address)
    elif buffer is MemoryRegion.psum:
        _reserve_psum(core, alloc, address)
    if on_chip and core.loop_pins:
        core.loop_pins[-1].append(alloc)
    return NkiTensor._make(alloc, dtype, shape, _contig(shape), 0, name=name)


def _shared_alloc(core, shape, dtype, name, fill) -> NkiTensor:
    """LNC>1: the k-th shared_hbm allocation of every core is the same memory."""
    run = core.run
    k = core.shared_count
    core.shared_count += 1
    with run.lock:
        if k < len(run.shared_allocs):
            alloc = run.shared_allocs[k]
            if alloc.shape != shape or alloc.dtype != dtype:
                raise NkiSimError(
                    f"nl.ndarray: shared_hbm allocation #{k} '{name}' differs between cores: "
                    f"{alloc.shape} {alloc.dtype} vs {shape} {dtype} (limit: identical control flow)"
                )
        else:
            storage = dtype.storage(core.precise)
            flat = np.empty(_prod(shape), storage)
            flat.fill(dt.sentinel(dtype) if fill is None else fill)
            alloc = Allocation(MemoryRegion.shared_hbm, dtype, shape, flat, name, core, None)
            alloc.site = runtime.source_line()
            run.shared_allocs.append(alloc)
    return NkiTensor._make(alloc, dtype, shape, _contig(shape), 0, name=name)


def _describe_live(live: dict) -> str:
    items = sorted(live.values(), key=lambda v: -v[-1])[:6]
    return ", ".join(f"{v[0]}={v[-1]}B" for v in items)


def _reserve_sbuf(core, alloc: Allocation, address) -> None:
    nbytes = alloc.pstride * alloc.dtype.itemsize
    cap = core.sbuf_capacity
    if core.sbuf_used + nbytes > cap:
        raise NkiSimError(
            f"nl.ndarray: SBUF capacity exceeded allocating '{alloc.name}' ({nbytes} bytes per partition): "
            f"live {core.sbuf_used} + {nbytes} = {core.sbuf_used + nbytes} bytes per partition exceeds "
            f"limit {cap} "
            f"({core.target}); largest live: {_describe_live(core.sbuf_live)}{_in_loop(core)}"
        )
    core.sbuf_used += nbytes
    alloc.addr = _next_fit(core, nbytes, address)
    core.sbuf_live[alloc.id] = (alloc.name, alloc.addr, nbytes)
    weakref.finalize(alloc, _release_sbuf, core, alloc.id, nbytes)


def _next_fit(core, nbytes: int, address) -> int:
    """Byte address per partition of a new SBUF tile, for the trace's memory regions: the given `address`
    free offset, else the first gap between live tiles that fits, searched from where the previous tile
    ended and wrapping around (an allocator that rotates addresses, so a freed tile's bytes are not
    reused at once; capacity is checked separately)."""
    if address is not None:
        try:
            return int(address[1])
        except (TypeError, IndexError):
            return 0
    live = sorted((v[1], v[1] + v[2]) for v in core.sbuf_live.values())
    cap = core.sbuf_capacity
    cursor = getattr(core, "sbuf_cursor", 0)
    for lo_bound in (cursor, 0):
        at = lo_bound
        for start, end in live:
            if end <= at:
                continue
            if start - at >= nbytes:
                break
            at = max(at, end)
        if at + nbytes <= cap:
            core.sbuf_cursor = at + nbytes
            return at
    core.sbuf_cursor = 0
    return live[-1][1] if live else 0


def _release_sbuf(core, alloc_id: int, nbytes: int) -> None:
    core.sbuf_used -= nbytes
    core.sbuf_live.pop(alloc_id, None)


def _reserve_psum(core, alloc: Allocation, address) -> None:
    """Place a PSUM tile: within one 2 KiB bank per partition (first fit). On trn3 a tile may span
    whole consecutive banks (nc_matmul writes up to 4096 fp32 / 8192 bf16 per partition there)."""
    nbytes = alloc.pstride * alloc.dtype.itemsize
    bank_bytes = runtime.PSUM_BANK_BYTES
    banks = core.psum_banks
    nbanks = -(-nbytes // bank_bytes)
    if nbytes > bank_bytes and (core.target == "trn2" or nbanks > len(banks)):
        limit = bank_bytes if core.target == "trn2" else bank_bytes * len(banks)
        raise NkiSimError(
            f"nl.ndarray: PSUM tile '{alloc.name}' needs {nbytes} bytes per partition, exceeds "
            f"{'one bank' if core.target == 'trn2' else 'all banks'} limit {limit} bytes on {core.target}"
        )
    if address is not None:
        try:
            free_off = int(address[1])
        except (TypeError, IndexError):
            raise NkiSimError(f"nl.ndarray: address must be (partition_offset, free_offset), got {address!r}") from None
        if free_off % bank_bytes:
            raise NkiSimError(
                f"nl.ndarray: PSUM address {address!r} of '{alloc.name}' must start at a bank boundary "
                f"(limit: free offset multiple of {bank_bytes})"
            )
        candidates = [free_off // bank_bytes]
    else:
        candidates = range(len(banks))
    for b in candidates:
        if nbanks == 1:
            fits = 0 <= b < len(banks) and banks[b] + nbytes <= bank_bytes
            use = [(b, nbytes)]
        else:
            fits = 0 <= b and b + nbanks <= len(banks) and not any(banks[b : b + nbanks])
            use = [(b + i, bank_bytes) for i in range(nbanks)]
        if fits:
            alloc.addr = b * bank_bytes + (banks[b] if nbanks == 1 else 0)
            for bank, n in use:
                banks[bank] += n
            core.psum_live[alloc.id] = (alloc.name, b, nbytes)
            weakref.finalize(alloc, _release_psum, core, alloc.id, use)
            return
    live = sum(1 for u in banks if u)
    raise NkiSimError(
        f"nl.ndarray: PSUM full allocating '{alloc.name}' ({nbytes} bytes per partition): "
        f"{live} of limit {len(banks)} banks (2 KiB each) in use; live: {_describe_live(core.psum_live)}"
        f"{_in_loop(core)}"
    )


def _in_loop(core) -> str:
    """Why a dynamic-loop body's tiles are all live at once (for capacity errors)."""
    if not core.loop_pins:
        return ""
    return (
        f" (inside a dynamic-loop body: each of its {len(core.loop_pins[-1])} allocations so far holds its own "
        "slot for the whole loop; allocate the body's tiles once, outside the loop)"
    )


def _release_psum(core, alloc_id: int, use: list) -> None:
    for bank, n in use:
        core.psum_banks[bank] -= n
    core.psum_live.pop(alloc_id, None)


def _contig(shape) -> tuple:
    strides = []
    acc = 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


# ------------------------------------------------------------------------------------------
# NkiTensor
# ------------------------------------------------------------------------------------------
class NkiTensor:
    """A tensor view (NKI `NkiTensor`). Create with `nl.ndarray`; views via indexing and the view methods."""

    __slots__ = (
        "_alloc",
        "dtype",
        "shape",
        "strides",
        "offset",
        "name",
        "_dyn",
        "_vec",
        "_np",
        "_ap",
        "__weakref__",
    )

    def __init__(self, shape, dtype, storage, buffer=MemoryRegion.sbuf, name=""):
        if not isinstance(storage, Allocation):
            raise NkiSimError("NkiTensor: create tensors with nl.ndarray (storage must be a simulator allocation)")
        self._alloc = storage
        self.dtype = dt.as_dtype(dtype)
        self.shape = _check_shape(shape, "NkiTensor")
        self.strides = _contig(self.shape)
        self.offset = 0
        self.name = name or storage.name
        self._dyn = ()
        self._vec = None
        self._np = None
        self._ap = False

    @classmethod
    def _make(cls, alloc, dtype, shape, strides, offset, dyn=(), vec=None, name=None, check=True) -> NkiTensor:
        t = object.__new__(cls)
        t._alloc = alloc
        t.dtype = dtype
        t.shape = tuple(shape)
        t.strides = tuple(strides)
        t.offset = int(offset)
        t.name = name if name is not None else alloc.name
        t._dyn = dyn
        t._vec = vec
        t._np = None
        t._ap = False  # True: produced by .ap() (or a view of such a tensor)
        if check and not dyn and vec is None:
            t._check_bounds(t.offset, "view")
        return t

    def _derive(self, shape, strides, offset, dyn=None, vec=None, dtype=None) -> NkiTensor:
        t = NkiTensor._make(
            self._alloc,
            dtype or self.dtype,
            shape,
            strides,
            offset,
            self._dyn if dyn is None else dyn,
            self._vec if vec is None else vec,
            self.name,
        )
        t._ap = self._ap
        return t

    # -- attributes -----------------------------------------------------------------------
    @property
    def buffer(self) -> MemoryRegion:
        return self._alloc.buffer

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return _prod(self.shape)

    @property
    def free_size(self) -> int:
        """Elements per partition (product of dims 1..n) for on-chip tensors; all elements for HBM."""
        return _prod(self.shape[1:]) if self._alloc.pstride is not None else self.size

    @property
    def on_chip(self) -> bool:
        return self._alloc.pstride is not None

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def _pstride(self) -> int:
        """Allocation partition stride in elements of this view's dtype."""
        a = self._alloc
        return a.pstride * a.dtype.itemsize // self.dtype.itemsize

    def partition_start(self) -> int:
        """First partition this (static part of the) view touches."""
        return self.offset // self._pstride() if self.on_chip else 0

    def partition_step(self) -> int:
        """Partition stride of dim 0 in partitions (1 = contiguous partitions)."""
        if not self.on_chip or self.shape[0] == 1:
            return 1
        ps = self._pstride()
        return self.strides[0] // ps if self.strides[0] % ps == 0 else 0

    def __repr__(self) -> str:
        dyn = " dynamic" if self._dyn else ""
        ind = " indirect" if self._vec is not None else ""
        buf = self.buffer.name
        return f"NkiTensor({self.name!r}, shape={self.shape}, dtype={self.dtype.name}, {buf}{dyn}{ind})"

    def _summary(self) -> dict:
        return {
            "shape": self.shape,
            "dtype": self.dtype.name,
            "buffer": self.buffer.name,
            "name": self.name,
            "region": self._region(),
        }

    def _region(self) -> dict:
        """The bytes this view touches, for dependency tracking (plain data; a conservative span):
        ``mem`` (`Allocation.region_key`), ``parts`` [first, last + 1) partitions (on-chip; HBM: [0, 1)),
        ``bytes`` [start, end) byte addresses per partition (on-chip) or within the HBM allocation,
        ``contig`` bytes of the innermost contiguous run (DMA descriptor size), ``offset`` the resolved
        runtime offset in elements (dynamic views only); a strided HBM view also gives its rows: ``rows``
        runs of ``row_bytes`` every ``pitch`` bytes from ``bytes[0]`` (so column tiles of one matrix do
        not overlap). An indirect HBM view spans the rows from its lowest to its highest index (read now;
        trace-only mode refuses it), an indirect on-chip view its whole tile."""
        a = self._alloc
        isz = self.dtype.itemsize
        region = {"mem": a.region_key()}
        if self._vec is not None:
            region["contig"] = self.shape[-1] * isz if self.strides[-1] == 1 else isz
            region["indirect"] = True
            if self.on_chip:
                region["parts"] = [0, a.shape[0]]
                region["bytes"] = [a.addr, a.addr + a.pstride * a.dtype.itemsize]
                return region
            region["parts"] = [0, 1]
            _, row_stride, nrows = self._vec
            rows = self._vec_rows("trace", self.name)
            rows = rows[(rows >= 0) & (rows < nrows)]
            rest = sum((n - 1) * st for n, st in zip(self.shape[1:], self.strides[1:]))
            if rows.size == 0 or row_stride <= 0 or any(st < 0 for st in self.strides[1:]):
                region["bytes"] = [0, 0 if rows.size == 0 else a.data.size * a.dtype.itemsize]
                return region
            off = self.offset
            for src, mult in self._dyn:
                off += value_of(src, "trace", f"dynamic offset of '{self.name}'") * mult
            first, last = int(rows.min()), int(rows.max())
            region["bytes"] = [(off + first * row_stride) * isz, (off + last * row_stride + rest + 1) * isz]
            if row_stride > rest:  # the rows between the first and the last one read (a conservative set)
                region["pitch"], region["row_bytes"], region["rows"] = (
                    row_stride * isz,
                    (rest + 1) * isz,
                    last - first + 1,
                )
            return region
        off = self.offset  # resolved without the bounds check (an oob_mode=skip DMA may be out of range)
        for src, mult in self._dyn:
            off += value_of(src, "trace", f"dynamic offset of '{self.name}'") * mult
        if self._dyn:
            region["offset"] = off
        if self.on_chip:
            plo, phi, flo, fhi = self._on_chip_extent(off)
            region["parts"] = [plo, phi + 1]
            region["bytes"] = [a.addr + flo * isz, a.addr + (fhi + 1) * isz]
            dims = [(n, s) for n, s in zip(self.shape[1:], self.strides[1:]) if n > 1]
        else:
            lo, hi = self._extent(off)
            region["parts"] = [0, 1]
            region["bytes"] = [lo * isz, (hi + 1) * isz]
            dims = [(n, s) for n, s in zip(self.shape, self.strides) if n > 1]
            if len(dims) >= 2 and all(s > 0 for _, s in dims):
                # rows: `rows` runs of `row_bytes` (the inner dims' span) every `pitch` bytes from bytes[0]
                row = (sum((n - 1) * s for n, s in dims[1:]) + 1) * isz
                if dims[0][1] * isz >= row:
                    region["pitch"], region["row_bytes"], region["rows"] = dims[0][1] * isz, row, dims[0][0]
        contig = 1
        for n, s in reversed(dims):
            if s != contig:
                break
            contig *= n
        region["contig"] = contig * isz
        return region

    def __len__(self) -> int:
        return self.shape[0]

    def __bool__(self):
        raise TypeError(
            f"tensor {self.name!r} has no compile-time value: Python control flow on tensor data "
            "is not allowed in NKI (use nl.while_loop / predicated instructions)"
        )

    def __iter__(self):
        raise TypeError(f"tensor {self.name!r} is not iterable; index it with slices")

    # -- bounds -----------------------------------------------------------------------------
    def _extent(self, offset: int) -> tuple[int, int]:
        lo = hi = offset
        for n, s in zip(self.shape, self.strides):
            if s > 0:
                hi += (n - 1) * s
            else:
                lo += (n - 1) * s
        return lo, hi

    def _on_chip_extent(self, offset: int) -> tuple[int, int, int, int]:
        """(first, last partition, first, last element within a partition) an on-chip view from `offset` spans."""
        ps = self._pstride()
        plo = phi = offset // ps
        flo = fhi = offset % ps
        for n, s in zip(self.shape, self.strides):
            if n == 1 or s == 0:
                continue
            if s % ps == 0:
                d = (n - 1) * (s // ps)
                plo, phi = (plo, phi + d) if d > 0 else (plo + d, phi)
            else:
                d = (n - 1) * s
                flo, fhi = (flo, fhi + d) if d > 0 else (flo + d, fhi)
        return plo, phi, flo, fhi

    def _check_bounds(self, offset: int, instr: str, operand: str = "") -> None:
        """Raise if the view (with resolved `offset`) leaves its allocation (per partition on chip)."""
        a = self._alloc
        total = a.data.size * a.dtype.itemsize // self.dtype.itemsize
        what = f"{instr}: {operand + ' ' if operand else ''}'{self.name}'"
        if self._vec is not None:
            return
        if self.on_chip:
            ps = self._pstride()
            nparts = a.shape[0]
            plo, phi, flo, fhi = self._on_chip_extent(offset)
            if plo < 0 or phi >= nparts:
                raise NkiSimError(
                    f"{what} out of bounds: partitions {plo}..{phi} outside allocation partitions "
                    f"0..{nparts - 1} (shape {a.shape})"
                )
            if flo < 0 or fhi >= ps:
                raise NkiSimError(
                    f"{what} out of bounds: free elements {flo}..{fhi} outside 0..{ps - 1} per "
                    f"partition (allocation shape {a.shape})"
                )
            return
        lo, hi = self._extent(offset)
        if lo < 0 or hi >= total:
            raise NkiSimError(
                f"{what} out of bounds: elements {lo}..{hi} outside 0..{total - 1} (allocation shape {a.shape})"
            )

    def _resolved_offset(self, instr: str = "access", operand: str = "") -> int:
        off = self.offset
        for src, mult in self._dyn:
            off += value_of(src, instr, "dynamic offset") * mult
        if self._dyn:
            try:
                self._check_bounds(off, instr, operand)
            except NkiSimError as error:
                sources = [s for s in (origin_of(src) for src, _ in self._dyn) if s]
                if not sources:
                    raise
                raise NkiSimError(f"{', '.join(sources)}, used as a dynamic offset: {error}") from None
        return off

    # -- raw access (for instructions) ---------------------------------------------------------
    def _array(self, instr: str = "access", operand: str = "") -> np.ndarray:
        """A writable NumPy view (no copy) of the tensor in its storage dtype. Not for indirect views."""
        if self._vec is not None:
            raise NkiSimError(
                f"{instr}: {operand} '{self.name}' is an indirect (vector_offset) view; only DMA instructions accept it"
            )
        if self._alloc.pending is not None:
            self._alloc.flush_pending()
        a = self._np
        if a is not None:
            return a
        alloc = self._alloc
        off = self._resolved_offset(instr, operand)
        base = self._alloc.typed(self.dtype.storage(self._alloc.core.precise if self._alloc.core else True))
        isz = base.itemsize
        a = np.ndarray(
            self.shape,
            base.dtype,
            buffer=base,
            offset=off * isz,
            strides=tuple(s * isz for s in self.strides),
        )
        if not self._dyn and not alloc.cow:  # a cow view would go stale when the storage is copied
            self._np = a
        return a

    def _flat_index(self, instr: str = "access", operand: str = "") -> tuple[np.ndarray, np.ndarray | None]:
        """Flat storage indices of every element (shape = self.shape), and for indirect views the per-row
        validity mask (rows whose index is in bounds)."""
        if self._vec is None:
            return self._index_at(self._resolved_offset(instr, operand))
        rows = self._vec_rows(instr, operand)
        return self._index_at(self._resolved_offset(instr, operand), rows)

    def _vec_rows(self, instr: str = "access", operand: str = "") -> np.ndarray:
        """The row indices of an indirect (vector_offset) view, read now."""
        core = self._alloc.core
        if core is not None and core.run.trace_only:
            raise NkiSimError(
                f"{instr}: {operand} '{self.name}' is addressed by tensor values (indirect vector_offset); "
                "trace-only mode cannot know them (limit: run the full simulation)"
            )
        rows = self._vec[0].read().reshape(-1).astype(np.int64)
        if rows.size != self.shape[0]:
            raise NkiSimError(
                f"{instr}: {operand} vector_offset has {rows.size} entries, view has {self.shape[0]} "
                f"rows (limit: one index per partition)"
            )
        return rows

    def _index_at(self, off: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Flat indices of the view at resolved offset `off` (and, for an indirect view, row indices)."""
        if rows is None:
            idx = np.full((), off, np.int64)
            for n, s in zip(self.shape, self.strides):
                idx = np.add.outer(idx, np.arange(n, dtype=np.int64) * s)
            return idx, None
        _, row_stride, nrows = self._vec
        rest = np.full((), 0, np.int64)
        for n, s in zip(self.shape[1:], self.strides[1:]):
            rest = np.add.outer(rest, np.arange(n, dtype=np.int64) * s)
        idx = off + rows.reshape((-1,) + (1,) * (len(self.shape) - 1)) * row_stride + rest
        # the DMA checks addresses (nki.isa.dma_copy: out-of-bound address checking in dynamic modes), so a row whose
        # index is in range but lands past the tensor once the pattern's offset is added is out of bounds too
        per_row = idx.reshape(idx.shape[0], -1)
        limit = self._storage_flat().size
        valid = (rows >= 0) & (rows < nrows) & (per_row.min(axis=1) >= 0) & (per_row.max(axis=1) < limit)
        return idx, valid

    def _storage_flat(self) -> np.ndarray:
        return self._alloc.typed(self.dtype.storage(self._alloc.core.precise if self._alloc.core else True))

    def _note_access(self, kind: str, instr: str) -> None:
        """Bookkeeping for every access: written kernel inputs, LNC=2 shared-HBM race log."""
        a = self._alloc
        if kind == "w":
            if a.cow and not (a.core is not None and a.core.run.trace_only):
                a.unshare()
            a.written = True
            a.version += 1
            if a.mm_state is not None and self.dtype.itemsize == a.dtype.itemsize and self._vec is None:
                self._mm_state_view()[...] = 2  # isa_tensor_engine.OTHER_WRITTEN: a non-matmul write
        if a.buffer is MemoryRegion.shared_hbm:
            core = runtime.current()
            if core.run.num_programs > 1:
                core.run.access_log.append(
                    (
                        core.epoch_of(a),
                        core.program_id,
                        kind,
                        self,
                        self._resolved_snapshot(),
                        getattr(core, "cur_instr", instr),
                    )
                )

    def _resolved_snapshot(self):
        """What the race check needs to locate a dynamic access later, compactly: (resolved offset, row
        indices of an indirect view or None); None for a static view."""
        if self._vec is None and not self._dyn:
            return None
        off = self._resolved_offset("race check")
        return (off, self._vec_rows("race check") if self._vec is not None else None)

    def _mm_state_view(self) -> np.ndarray:
        a = self._alloc
        if a.pending is not None:
            a.flush_pending()
        off = self._resolved_offset()
        return np.ndarray(self.shape, np.uint8, buffer=a.mm_state, offset=off, strides=self.strides)

    def _covers_allocation(self) -> bool:
        """True if this view is exactly the whole allocation, in order (a write replaces every element)."""
        a = self._alloc
        return (
            self._vec is None
            and not self._dyn
            and self.offset == 0
            and self.dtype.itemsize == a.dtype.itemsize
            and self.size == a.data.size
            and self.strides == _contig(self.shape)
        )

    def f32(self, instr: str = "read", operand: str = "") -> np.ndarray:
        """Values as float32 for reading (no copy when possible; narrow floats via a per-allocation cache).
        Integers come back as their integer array. Do not write into the result."""
        a = self._alloc
        if self._vec is not None or self._dyn:
            return dt.to_f32(self.read(instr, operand))
        arr = self._array(instr, operand)
        if arr.dtype == np.float32 or arr.dtype.kind in "iub":
            return arr
        if self.dtype.itemsize != a.dtype.itemsize or a.buffer is not MemoryRegion.sbuf:
            return dt.to_f32(arr)
        c = a._f32
        if (
            a._f32_waste
            and (c is None or c[0] != a.version)
            and a._f32_miss != a.version
            and arr.size * 4 < a.data.size
        ):
            # the tile's last whole-tile conversion served one read before a write: convert just this
            # view (a tile rewritten between reads would otherwise be converted whole every time); a
            # second read at the same version builds the whole-tile cache again
            a._f32_miss = a.version
            return dt.to_f32(arr)
        flat = a.f32_flat()
        return np.ndarray(
            self.shape,
            np.float32,
            buffer=flat,
            offset=self.offset * 4,
            strides=tuple(x * 4 for x in self.strides),
        )

    # -- public read / write -----------------------------------------------------------------------
    def read(self, instr: str = "read", operand: str = "") -> np.ndarray:
        """A copy of the values in the storage dtype (ml_dtypes for bf16/fp8; float32 when precise is off)."""
        self._note_access("r", instr)
        if self._vec is None:
            return self._array(instr, operand).copy()
        idx, valid = self._flat_index(instr, operand)
        if not valid.all():
            bad = np.flatnonzero(~valid)[0]
            raise NkiSimError(
                f"{instr}: {operand} '{self.name}' indirect index out of bounds at row {bad} "
                f"(limit: 0..{self._vec[2] - 1})"
            )
        return self._storage_flat()[idx]

    def write(self, values, instr: str = "write", operand: str = "dst") -> None:
        """Store `values` (broadcast to the shape, converted and rounded to the dtype)."""
        vals = np.asarray(values)
        if vals.shape != self.shape:
            try:
                vals = np.broadcast_to(vals, self.shape)
            except ValueError:
                raise NkiSimError(
                    f"{instr}: {operand} '{self.name}' has shape {self.shape}, value shape {vals.shape} does not match"
                ) from None
        core = self._alloc.core
        if core is not None and core.run.trace_only:  # no values: bounds and bookkeeping only
            if self._dyn or self._vec is not None:
                self._flat_index(instr, operand)
            self._note_access("w", instr)
            return
        conv = dt.convert(vals, self.dtype, core.precise if core else True)
        if self._alloc.fresh and self._covers_allocation():
            self._alloc.fresh = False
        self._note_access("w", instr)
        if self._vec is None:
            self._array(instr, operand)[...] = conv
            return
        idx, valid = self._flat_index(instr, operand)
        if not valid.all():
            bad = np.flatnonzero(~valid)[0]
            raise NkiSimError(
                f"{instr}: {operand} '{self.name}' indirect index out of bounds at row {bad} "
                f"(limit: 0..{self._vec[2] - 1})"
            )
        self._storage_flat()[idx] = conv

    # -- indexing -------------------------------------------------------------------------------
    def __getitem__(self, key) -> NkiTensor:
        if self._vec is not None:
            raise NkiSimError(f"indexing: '{self.name}' is an indirect view; index the base tensor before .ap()")
        if not isinstance(key, tuple):
            key = (key,)
        n_ell = 0
        for k in key:
            if k is Ellipsis:
                n_ell += 1
        if n_ell > 1:
            raise NkiSimError("indexing: at most one '...' allowed")
        if n_ell:
            i = next(j for j, k in enumerate(key) if k is Ellipsis)
            fill = len(self.shape) - (len(key) - 1)
            key = key[:i] + (slice(None),) * fill + key[i + 1 :]
        if len(key) > len(self.shape):
            raise NkiSimError(f"indexing: too many indices ({len(key)}) for '{self.name}' of shape {self.shape}")
        key = key + (slice(None),) * (len(self.shape) - len(key))
        offset = self.offset
        dyn = list(self._dyn)
        shape, strides, dropped = [], [], []
        for dim, (k, n, s) in enumerate(zip(key, self.shape, self.strides)):
            if type(k) is slice:
                if k.step is None and k.start is None and k.stop is None:  # ':' (the common case)
                    shape.append(n)
                    strides.append(s)
                    continue
                if k.step == 0:
                    raise NkiSimError("indexing: slice step cannot be 0")
                start, stop, step = k.indices(n)
                cnt = len(range(start, stop, step))
                if cnt <= 0:
                    raise NkiSimError(f"indexing: empty slice {k} on dim {dim} of size {n} of '{self.name}'")
                offset += start * s
                shape.append(cnt)
                strides.append(s * step)
            elif isinstance(k, DynSlice):
                if isinstance(k.start, (int, np.integer)):
                    st = int(k.start)
                    if st < 0 or st + k.size > n:
                        raise NkiSimError(
                            f"indexing: nl.ds({st}, {k.size}) out of bounds for dim {dim} of size {n} of '{self.name}'"
                        )
                    offset += st * s
                else:
                    dyn.append((k.start, s))
                shape.append(k.size)
                strides.append(s)
            elif isinstance(k, (int, np.integer)):
                i = int(k)
                if i < 0:
                    i += n
                if not 0 <= i < n:
                    raise NkiSimError(
                        f"indexing: index {int(k)} out of bounds for dim {dim} of size {n} of '{self.name}'"
                    )
                offset += i * s
                shape.append(1)
                strides.append(s)
                dropped.append(dim)
            elif isinstance(k, (VirtualRegister, NkiTensor)):
                dyn.append((k, s))
                shape.append(1)
                strides.append(s)
                dropped.append(dim)
            else:
                raise NkiSimError(f"indexing: unsupported index {k!r} (ints, slices, nl.ds, registers)")
        keep = [d for d in range(len(shape)) if d not in dropped]
        if self.on_chip:
            keep = [0] + [d for d in keep if d != 0]
            if len(keep) < 2 and len(shape) >= 2:
                keep = [0, len(shape) - 1]
        if not keep:  # HBM scalar element: keep a 1-element 1-D view
            keep = [len(shape) - 1]
        # every index was checked against its dim: a view of an in-bounds tensor stays in bounds
        t = NkiTensor._make(
            self._alloc,
            self.dtype,
            [shape[d] for d in keep],
            [strides[d] for d in keep],
            offset,
            tuple(dyn),
            None,
            self.name,
            check=False,
        )
        t._ap = self._ap
        return t

    def __setitem__(self, key, value) -> None:
        """`t[key] = value`: copy a tensor or a constant into the view (DMA if HBM is involved)."""
        from moegen.sim import isa_move

        isa_move.assign(self[key], value)

    # -- view methods ----------------------------------------------------------------------------
    def _norm_dim(self, dim: int, what: str) -> int:
        nd = len(self.shape)
        d = int(dim) + (nd if dim < 0 else 0)
        if not 0 <= d < nd:
            raise NkiSimError(f"{what}: dim {dim} out of range for '{self.name}' of rank {nd}")
        return d

    def slice(self, dim, start, end, step=1) -> NkiTensor:
        d = self._norm_dim(dim, "slice")
        key = [slice(None)] * len(self.shape)
        key[d] = slice(start, end, step)
        return self[tuple(key)]

    def select(self, dim, index) -> NkiTensor:
        """Remove `dim` by picking `index` (int: static; register / 1x1 SBUF tensor: dynamic)."""
        d = self._norm_dim(dim, "select")
        if isinstance(index, (int, np.integer)):
            i = int(index) + (self.shape[d] if index < 0 else 0)
            if not 0 <= i < self.shape[d]:
                raise NkiSimError(f"select: index {index} out of bounds for dim {d} of size {self.shape[d]}")
            off, dyn = self.offset + i * self.strides[d], self._dyn
        else:
            if self.on_chip and d == 0:
                raise NkiSimError("select: a dynamic index cannot select the partition dim of an on-chip tensor")
            off, dyn = self.offset, self._dyn + ((index, self.strides[d]),)
        shape = self.shape[:d] + self.shape[d + 1 :]
        strides = self.strides[:d] + self.strides[d + 1 :]
        if not shape:
            shape, strides = (1,), (1,)
        if self.on_chip and len(shape) < 2:
            shape, strides = shape + (1,), strides + (1,)
        return self._derive(shape, strides, off, dyn=dyn)

    def vector_select(self, dim, vector_offset) -> NkiTensor:
        """HBM gather/scatter view: row i of the result is row vector_offset[i] of dim 0."""
        d = self._norm_dim(dim, "vector_select")
        if d != 0:
            raise NkiSimError(f"vector_select: only dim 0 is supported, got {dim}")
        if self.on_chip:
            raise NkiSimError(f"vector_select: '{self.name}' must be in HBM (indirect DMA), is {self.buffer.name}")
        p = vector_offset.shape[0]
        return self._derive(
            (p,) + self.shape[1:],
            self.strides,
            self.offset,
            vec=(vector_offset, self.strides[0], self.shape[0]),
        )

    def permute(self, dims) -> NkiTensor:
        dims = tuple(self._norm_dim(x, "permute") for x in dims)
        if sorted(dims) != list(range(len(self.shape))):
            raise NkiSimError(f"permute: {dims} is not a permutation of {len(self.shape)} dims")
        if self.on_chip and dims[0] != 0:
            raise NkiSimError(f"permute: on-chip tensor '{self.name}' must keep the partition dim first, got {dims}")
        return self._derive([self.shape[d] for d in dims], [self.strides[d] for d in dims], self.offset)

    def broadcast(self, dim, size) -> NkiTensor:
        d = self._norm_dim(dim, "broadcast")
        if self.shape[d] != 1:
            raise NkiSimError(f"broadcast: dim {d} of '{self.name}' has size {self.shape[d]} (limit: 1)")
        if self.on_chip and d == 0:
            raise NkiSimError("broadcast: cannot broadcast the partition dim of an on-chip tensor")
        shape = list(self.shape)
        strides = list(self.strides)
        shape[d], strides[d] = int(size), 0
        return self._derive(shape, strides, self.offset)

    def expand_dim(self, dim) -> NkiTensor:
        nd = len(self.shape)
        d = int(dim) + (nd + 1 if dim < 0 else 0)
        if not 0 <= d <= nd or (self.on_chip and d == 0):
            raise NkiSimError(f"expand_dim: invalid dim {dim} for '{self.name}' of rank {nd}")
        return self._derive(
            self.shape[:d] + (1,) + self.shape[d:], self.strides[:d] + (0,) + self.strides[d:], self.offset
        )

    def squeeze_dim(self, dim) -> NkiTensor:
        d = self._norm_dim(dim, "squeeze_dim")
        if self.shape[d] != 1 or (self.on_chip and d == 0):
            raise NkiSimError(f"squeeze_dim: dim {d} of '{self.name}' (size {self.shape[d]}) cannot be squeezed")
        return self._derive(self.shape[:d] + self.shape[d + 1 :], self.strides[:d] + self.strides[d + 1 :], self.offset)

    def reshape_dim(self, dim, shape) -> NkiTensor:
        d = self._norm_dim(dim, "reshape_dim")
        sub = [int(x) for x in shape]
        if -1 in sub:
            known = _prod(x for x in sub if x != -1)
            sub[sub.index(-1)] = self.shape[d] // known
        if _prod(sub) != self.shape[d] or (self.on_chip and d == 0 and len(sub) != 1):
            raise NkiSimError(f"reshape_dim: cannot split dim {d} of size {self.shape[d]} into {tuple(sub)}")
        s = self.strides[d]
        sub_strides = [s * x for x in _contig(sub)]
        return self._derive(
            self.shape[:d] + tuple(sub) + self.shape[d + 1 :],
            self.strides[:d] + tuple(sub_strides) + self.strides[d + 1 :],
            self.offset,
        )

    def flatten_dims(self, start_dim, end_dim) -> NkiTensor:
        a = self._norm_dim(start_dim, "flatten_dims")
        b = self._norm_dim(end_dim, "flatten_dims")
        if b < a or (self.on_chip and a == 0 and b > 0):
            raise NkiSimError(f"flatten_dims: invalid range {start_dim}..{end_dim} for '{self.name}'")
        new_shape = self.shape[:a] + (_prod(self.shape[a : b + 1]),) + self.shape[b + 1 :]
        return self.reshape(new_shape)

    def reshape(self, shape) -> NkiTensor:
        """Reshape without moving data (the layout must allow it); on-chip keeps dim 0."""
        shape = list(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        if -1 in shape:
            known = _prod(x for x in shape if x != -1)
            shape[shape.index(-1)] = self.size // max(known, 1)
        shape = tuple(shape)
        if _prod(shape) != self.size:
            raise NkiSimError(
                f"reshape: '{self.name}' of shape {self.shape} ({self.size} elements) cannot become "
                f"{shape} ({_prod(shape)} elements)"
            )
        if self.on_chip and (len(shape) < 2 or shape[0] != self.shape[0]):
            raise NkiSimError(
                f"reshape: on-chip tensor '{self.name}' must keep its partition dim {self.shape[0]}, got {shape}"
            )
        strides = _reshape_strides(self.shape, self.strides, shape)
        if strides is None:
            raise NkiSimError(
                f"reshape: '{self.name}' with strides {self.strides} cannot be viewed as {shape} without moving data"
            )
        return self._derive(shape, strides, self.offset)

    def rearrange(self, src_pattern, dst_pattern, fixed_sizes=None) -> NkiTensor:
        """einops-style view change: patterns are tuples of names or tuples of names (groups)."""
        fixed = dict(fixed_sizes or {})
        if len(src_pattern) != len(self.shape):
            raise NkiSimError(
                f"rearrange: src_pattern {src_pattern} has {len(src_pattern)} dims, tensor has {len(self.shape)}"
            )
        t = self
        atoms: list[str] = []
        dim = 0
        for item in src_pattern:
            names = list(item) if isinstance(item, (tuple, list)) else [item]
            if len(names) > 1:
                sizes = [fixed.get(nm, -1) for nm in names]
                t = t.reshape_dim(dim, sizes)
                for nm, sz in zip(names, t.shape[dim : dim + len(names)]):
                    fixed[nm] = sz
            atoms += names
            dim += len(names)
        order = []
        groups = []
        for item in dst_pattern:
            names = list(item) if isinstance(item, (tuple, list)) else [item]
            groups.append(len(names))
            order += names
        if sorted(order) != sorted(atoms):
            raise NkiSimError(f"rearrange: dst_pattern {dst_pattern} must use the names of src_pattern {src_pattern}")
        t = t.permute(tuple(atoms.index(nm) for nm in order))
        shape = []
        i = 0
        for g in groups:
            shape.append(_prod(t.shape[i : i + g]))
            i += g
        return t.reshape(tuple(shape)) if tuple(shape) != t.shape else t

    def view(self, dtype) -> NkiTensor:
        """Bit reinterpretation as `dtype`; the (contiguous) last dim scales by the itemsize ratio."""
        new = dt.as_dtype(dtype)
        old = self.dtype
        core = self._alloc.core
        precise = core.precise if core else True
        if old.storage(precise).itemsize != old.itemsize or new.storage(precise).itemsize != new.itemsize:
            raise NkiSimError(f"view: bitcast {old.name} -> {new.name} needs precise mode (NKI_PRECISE_FP=1)")
        if new.itemsize == old.itemsize:
            return self._derive(self.shape, self.strides, self.offset, dtype=new)
        if self.strides[-1] != 1:
            raise NkiSimError(f"view: the last dim of '{self.name}' must be contiguous for a bitcast")
        if new.itemsize < old.itemsize:
            r = old.itemsize // new.itemsize
            shape = self.shape[:-1] + (self.shape[-1] * r,)
            strides = tuple(s * r for s in self.strides[:-1]) + (1,)
            return self._derive(shape, strides, self.offset * r, dtype=new)
        r = new.itemsize // old.itemsize
        if self.shape[-1] % r or self.offset % r or any(s % r for s in self.strides[:-1]):
            raise NkiSimError(
                f"view: '{self.name}' {self.shape} {old.name} cannot be viewed as {new.name} "
                f"(limit: last dim and offsets multiples of {r})"
            )
        shape = self.shape[:-1] + (self.shape[-1] // r,)
        strides = tuple(s // r for s in self.strides[:-1]) + (1,)
        return self._derive(shape, strides, self.offset // r, dtype=new)

    reinterpret_cast = view

    def ap(self, pattern, offset=None, scalar_offset=None, vector_offset=None, indirect_dim=0, dtype=None) -> NkiTensor:
        """Access pattern view on the underlying storage: pattern = [[stride, count], ...] outermost first.

        Element (i0..in) = storage[offset + sum(stride_k * i_k)]; offset defaults to this view's offset.
        scalar_offset (register / 1-element tensor) adds value * prod(self.shape[indirect_dim+1:]).
        vector_offset ((P,1) int tensor, HBM only, indirect_dim 0): row i reads row idx[i].
        """
        if self._ap and (self._dyn or self._vec is not None):
            # NKI Access Patterns: .ap() on a view overrides its pattern; what becomes of the inner
            # view's runtime offset is not documented, so that case is refused.
            raise NkiSimError(
                f"ap: '{self.name}' is an access pattern with a runtime offset (limit: .ap() on it is not "
                "documented; apply .ap() to the tensor itself)"
            )
        try:
            pairs = [(int(p[0]), int(p[1])) for p in pattern]
        except (TypeError, IndexError, ValueError):
            raise NkiSimError(f"ap: pattern must be [[stride, count], ...], got {pattern!r}") from None
        if not pairs or any(c <= 0 for _, c in pairs):
            raise NkiSimError(f"ap: counts must be positive, got {pattern!r}")
        if scalar_offset is not None and vector_offset is not None:
            raise NkiSimError("ap: scalar_offset and vector_offset are mutually exclusive")
        new = dt.as_dtype(dtype) if dtype is not None else self.dtype
        base_off = self.offset if offset is None else int(offset)
        if new.itemsize != self.dtype.itemsize and offset is None:
            base_off = base_off * self.dtype.itemsize // new.itemsize
        strides = [s for s, _ in pairs]
        shape = [c for _, c in pairs]
        if self.on_chip:
            ps = self._alloc.pstride * self._alloc.dtype.itemsize // new.itemsize
            if len(pairs) < 2 and shape[0] > 1:
                raise NkiSimError("ap: on-chip pattern needs a partition pair and at least one free pair")
            if shape[0] > 1 and strides[0] != ps:
                raise NkiSimError(
                    f"ap: partition stride of '{self.name}' must equal the per-partition free size "
                    f"{ps}, got {strides[0]}"
                )
        d = int(indirect_dim)
        dyn = self._dyn
        vec = None
        if scalar_offset is not None:
            if not 0 <= d < len(self.shape):
                raise NkiSimError(f"ap: indirect_dim {indirect_dim} out of range for rank {len(self.shape)}")
            mult = _prod(self.shape[d + 1 :])
            dyn = dyn + ((scalar_offset, mult),)
        if vector_offset is not None:
            if d != 0:
                raise NkiSimError(f"ap: vector_offset supports indirect_dim=0 only, got {indirect_dim}")
            if self.on_chip:
                raise NkiSimError(f"ap: vector_offset indexes an HBM tensor; '{self.name}' is in {self.buffer.name}")
            if not isinstance(vector_offset, NkiTensor) or vector_offset.buffer is not MemoryRegion.sbuf:
                # nki.isa.dma_copy, "Indirect addressing": the index is "an SBUF tensor of shape (P, 1)"
                where = (
                    vector_offset.buffer.name if isinstance(vector_offset, NkiTensor) else type(vector_offset).__name__
                )
                raise NkiSimError(f"ap: vector_offset must be an SBUF tensor of shape (P, 1), got one in {where}")
            row = _prod(self.shape[1:]) * self.dtype.itemsize // new.itemsize
            nrows = self.shape[0]
            if vector_offset.shape[0] != shape[0]:
                raise NkiSimError(f"ap: vector_offset has {vector_offset.shape[0]} rows, pattern has {shape[0]}")
            vec = (vector_offset, row, nrows)
        t = NkiTensor._make(self._alloc, new, shape, strides, base_off, dyn, vec, self.name)
        t._ap = True
        return t

    def get_pattern(self) -> list:
        return [[s, n] for s, n in zip(self.strides, self.shape)]

    def is_contiguous(self) -> bool:
        return self._vec is None and self.strides == _contig(self.shape)

    def is_indirect(self) -> bool:
        return self._vec is not None or bool(self._dyn)

    def indirect(self, index, num_elem=None):
        raise NotImplementedError(
            "nki.language.NkiTensor.indirect (trn3 tensor indirection) is not implemented in moegen.sim"
        )


def _reshape_strides(shape, strides, new_shape):
    """Strides (elements) viewing a strided array of `shape` as `new_shape` without copying, or None."""
    dummy = np.lib.stride_tricks.as_strided(np.zeros(1, np.int8), shape=tuple(shape), strides=tuple(strides))
    v = dummy.view()
    try:
        v.shape = tuple(new_shape)
    except (AttributeError, ValueError):
        return None
    return tuple(v.strides)


def read_f32(t: NkiTensor) -> np.ndarray:
    """Values of `t` as float32 (floats) or the integer array (ints)."""
    return dt.to_f32(t.read())


def from_numpy(
    arr: np.ndarray, buffer=MemoryRegion.shared_hbm, name: str = "", dtype=None, share: bool = False
) -> NkiTensor:
    """Wrap a NumPy array as an HBM tensor (kernel argument): a copy, or with share=True the array's own
    memory when it is C-contiguous and already in the storage dtype, copy-on-write: reads see the
    caller's array, the first write gives the tensor its own copy (the caller's array is only updated
    after the run, by the write-back of modified inputs)."""
    arr = np.asarray(arr)
    d = dt.as_dtype(dtype if dtype is not None else arr.dtype)
    core = runtime.current()
    same = arr.dtype == d.storage(core.precise)
    if share and same and arr.flags.c_contiguous and arr.ndim:
        t = allocate(arr.shape, d, buffer, name=name, data=arr)
        t._alloc.cow = True  # reads see the caller's array; the first write copies it
        return t
    data = dt.convert(arr, d, core.precise) if not same else arr.copy()
    shape = arr.shape if arr.shape else (1,)
    return allocate(shape, d, buffer, name=name, data=np.ascontiguousarray(data).reshape(shape))


def record_origin(dst: NkiTensor, src: NkiTensor, version_before: int) -> None:
    """After a DMA dst <- src: if src is an integer kernel argument and dst an on-chip integer tile (plain
    views, no reinterpretation), remember which argument element each written element came from, so
    that a value later used as a dynamic offset can be named (`origin_of`). Any other write to the tile
    makes the record stale (it holds for one allocation version)."""
    a, s = dst._alloc, src._alloc
    plain = dst.dtype == a.dtype and src.dtype == s.dtype and dst._vec is None and src._vec is None
    if not (plain and s.arg_index is not None and dst.on_chip and not dst.dtype.is_float and not src.dtype.is_float):
        return
    if a.origin is not None and a.origin[3] == version_before:
        flat = a.origin[2]
    else:
        flat = np.full(a.data.size * a.data.itemsize // dst.dtype.itemsize, -1, np.int64)
    dst_index, _ = dst._flat_index("dma_copy", "dst")
    src_index, _ = src._flat_index("dma_copy", "src")
    flat[dst_index.reshape(-1)] = src_index.reshape(-1)
    a.origin = (s.name, s.shape, flat, a.version)


def origin_of(x) -> str | None:
    """'arg[i, j] = v' for a register or 1-element tile holding an id DMA-loaded from kernel argument arg."""
    if isinstance(x, VirtualRegister):
        return x.origin
    if isinstance(x, NkiTensor) and x.size == 1:
        return origin_at(x, 0)
    return None


def origin_at(t: NkiTensor, k: int) -> str | None:
    """The origin of the k-th element (row-major) of view t, or None."""
    a = t._alloc
    if a.origin is None or a.origin[3] != a.version or t._vec is not None:
        return None
    name, shape, flat, _ = a.origin
    position = int(t._flat_index("origin")[0].reshape(-1)[k])
    source = int(flat[position]) if 0 <= position < flat.size else -1
    if source < 0:
        return None
    where = ", ".join(str(int(i)) for i in np.unravel_index(source, shape))
    return f"{name}[{where}] = {t.read('origin').reshape(-1)[k]}"


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = [
    "MemoryRegion",
    "NkiTensor",
    "Allocation",
    "DynSlice",
    "ds",
    "allocate",
    "read_f32",
    "from_numpy",
    "is_on_chip",
    "is_hbm",
    "is_psum",
    "is_sbuf",
    "sbuf",
    "psum",
    "hbm",
    "private_hbm",
    "shared_hbm",
]
