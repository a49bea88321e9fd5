"""Cost tables of the timeline model: one per target, every number a documented fact or a named assumption.

A `Fact` carries its value, unit, and where it comes from: ``source`` is a documentation page for a
documented number; ``assumption`` is set (with the reason) where the docs give no number, and every
report lists the assumptions it used. The model (`moegen.perf.timeline`) reads only these tables.
"""

from __future__ import annotations

from dataclasses import dataclass

ARCH_TRN2 = "https://awsdocs-neuron.readthedocs-hosted.com/en/latest/nki/guides/architecture/trainium2_arch.html"
ARCH_TRN3 = "https://awsdocs-neuron.readthedocs-hosted.com/en/latest/nki/guides/architecture/trainium3_arch.html"
CHIP_TRN2 = "https://awsdocs-neuron.readthedocs-hosted.com/en/latest/about-neuron/arch/neuron-hardware/trainium2.html"
CHIP_TRN3 = "https://awsdocs-neuron.readthedocs-hosted.com/en/latest/about-neuron/arch/neuron-hardware/trainium3.html"
PERF_GUIDE = "https://awsdocs-neuron.readthedocs-hosted.com/en/latest/nki/nki_perf_guide.html"
DMA_GUIDE = "https://awsdocs-neuron.readthedocs-hosted.com/en/latest/nki/deep-dives/nki-dma-bandwidth-guide.html"
DMA_OVERVIEW = "https://awsdocs-neuron.readthedocs-hosted.com/en/latest/nki/about/nki-dma-overview.html"
ISA_BETA1 = "https://awsdocs-neuron.readthedocs-hosted.com/en/v2.26.1/nki/api/generated/nki.isa.nc_matmul.html"
LNC_PAGE = "https://awsdocs-neuron.readthedocs-hosted.com/en/latest/about-neuron/arch/neuron-features/logical-neuroncore-config.html"


@dataclass(frozen=True)
class Fact:
    """One number of a cost table: value in `unit`, with its documentation page or its assumption."""

    value: float
    unit: str
    source: str = ""
    assumption: str = ""  # non-empty: the docs give no number; the reason for this one

    def __post_init__(self):
        if not self.source and not self.assumption:
            raise ValueError("a cost fact needs a source page or a named assumption")


def _table(target: str) -> dict[str, Fact]:
    trn3 = target == "trn3"
    arch = ARCH_TRN3 if trn3 else ARCH_TRN2
    chip = CHIP_TRN3 if trn3 else CHIP_TRN2
    return {
        # engine clocks
        "tensor_clock_ghz": Fact(2.4, "GHz", arch),
        "vector_clock_ghz": Fact(1.2 if trn3 else 0.96, "GHz", arch),
        "scalar_clock_ghz": Fact(1.2, "GHz", arch),
        "gpsimd_clock_ghz": Fact(1.2, "GHz", arch),
        # TensorE: max(64, N_moving) cycles for a 128-row pass (bf16/fp16/tf32/fp8), 4 passes for fp32,
        # FP8 double_row contracts 256 rows in the time of 128 (2x FP8 throughput)
        "matmul_min_cycles": Fact(64, "cycles", ISA_BETA1),
        "matmul_fp32_passes": Fact(4, "x", ISA_BETA1),
        "matmul_pe_rows": Fact(128, "rows", arch),
        "matmul_pe_cols": Fact(128, "columns", arch),
        # Vector / Scalar / GpSimd: one element per partition per cycle, floor MIN_II
        "min_ii_cycles": Fact(64, "cycles", ISA_BETA1),
        # the static instruction overhead the performance guide gives (~100 cycles) plus the wait for the
        # producer's output to be committed: calibrated so that back-to-back dependent one-element
        # instructions start every ~264 engine cycles, the guide's measured initiation interval
        "instruction_latency_cycles": Fact(
            200,
            "cycles",
            PERF_GUIDE,
            "static overhead ~100 cycles (perf guide) + ~100 cycles to commit the output before a dependent "
            "instruction reads it; the sum reproduces the guide's 264-cycle initiation interval",
        ),
        "tensor_result_latency_cycles": Fact(
            0,
            "cycles",
            assumption="a matmul's PSUM result is usable at once: accumulation groups stream back to back",
        ),
        "vector_bf16_speedup": Fact(
            2 if trn3 else 4,
            "x",
            arch,
            "" if not trn3 else "trn3 guide names the 2x mode for ScalarE; VectorE taken as 2x",
        ),
        # the sync engine: registers and runtime-loop bookkeeping
        "sync_clock_ghz": Fact(
            1.2, "GHz", assumption="the docs give no sequencer clock; taken as the ScalarE / GpSimd clock"
        ),
        "sync_instruction_cycles": Fact(
            100,
            "cycles",
            PERF_GUIDE,
            "a register instruction (register_alloc / move / load / store) and each step of a runtime loop "
            "(fori_loop / dynamic_range / while_loop: entry, then one branch + induction update + bound compare "
            "per iteration) costs the guide's ~100-cycle static instruction overhead; the docs give no figure "
            "for control instructions. Charged once, on the sync queue (the loop's copies in the other "
            "engines' instruction streams are not charged)",
        ),
        # DMA
        "dma_engines": Fact(16, "engines per core", DMA_OVERVIEW),
        # the per-engine peak of the tables of both DMA pages (TRN2 23 B/ns, TRN3 33 B/ns); the overview's prose
        # gives 27.2 / 38.4 GB/s as the engine's theoretical rate, but its own single-engine profile moves
        # 32 KiB in 1416 ns (23.1 B/ns) and the optimisation tutorial's profiles are slower still
        # (docs/perf_model.md, calibration)
        "dma_engine_gbps": Fact(33.0 if trn3 else 23.0, "GB/s per engine", f"{DMA_OVERVIEW} ; {DMA_GUIDE}"),
        "dma_fixed_latency_ns": Fact(
            1300,
            "ns",
            DMA_GUIDE,
            "the guide's ~1.3 us semaphore-to-start latency, paid by every dma_copy (descriptor generation "
            "(~0.6 us for HWDGE) is taken as overlapped with it)",
        ),
        "dma_descriptor_overhead_bytes": Fact(
            256,
            "bytes",
            DMA_GUIDE,
            "each contiguous run (descriptor) costs as much as moving 256 B: under 256 B a transfer is "
            "overhead-bound, from 2 KiB it is within ~10% of peak, as the guide states",
        ),
        "dma_queues": Fact(
            16,
            "queues per core",
            DMA_OVERVIEW,
            "one in-order queue per DMA engine; each DMA goes to the queue that frees first (the compiler's "
            "queue choice is not documented)",
        ),
        # HBM
        "hbm_tbps_chip": Fact(4.9 if trn3 else 2.9, "TB/s", chip),
        "cores_per_chip": Fact(8, "cores", chip),
        "cores_per_hbm_stack": Fact(
            2, "cores", LNC_PAGE, "an LNC=2 pair shares one HBM stack: each stack serves 2 of the 8 cores"
        ),
        # TensorE peak (for the compute bound): bf16 dense
        "tensor_peak_tflops_bf16": Fact(79.0, "TFLOPS", arch),
    }


TABLES: dict[str, dict[str, Fact]] = {target: _table(target) for target in ("trn2", "trn3")}


def table(target: str) -> dict[str, Fact]:
    """The cost table of `target` ('trn2' | 'trn3')."""
    if target not in TABLES:
        raise ValueError(f"target: unknown target {target!r} (limit: trn2 or trn3)")
    return TABLES[target]


@dataclass(frozen=True)
class Costs:
    """The cost table as plain numbers in the units the model uses (ns, bytes per ns)."""

    target: str
    clock_ghz: dict  # engine -> GHz
    matmul_min_cycles: float
    matmul_fp32_passes: float
    min_ii_cycles: float
    latency_cycles: float
    sync_instruction_ns: float  # a register or loop-bookkeeping instruction on the sync queue
    vector_bf16_speedup: float
    dma_bytes_per_ns: float  # per core, all engines
    dma_latency_ns: float
    dma_descriptor_overhead_bytes: float
    dma_queues: int
    hbm_stack_bytes_per_ns: float  # one stack, shared by the cores of an LNC=2 pair
    hbm_core_bytes_per_ns: float  # one core's share of the chip's HBM bandwidth
    macs_per_ns_bf16: float  # TensorE peak multiply-accumulates per ns (bf16)

    @staticmethod
    def of(target: str) -> Costs:
        t = table(target)
        v = {k: f.value for k, f in t.items()}
        chip_bytes_per_ns = v["hbm_tbps_chip"] * 1000.0
        stacks = v["cores_per_chip"] / v["cores_per_hbm_stack"]
        return Costs(
            target=target,
            clock_ghz={
                "tensor": v["tensor_clock_ghz"],
                "vector": v["vector_clock_ghz"],
                "scalar": v["scalar_clock_ghz"],
                "gpsimd": v["gpsimd_clock_ghz"],
            },
            matmul_min_cycles=v["matmul_min_cycles"],
            matmul_fp32_passes=v["matmul_fp32_passes"],
            min_ii_cycles=v["min_ii_cycles"],
            latency_cycles=v["instruction_latency_cycles"],
            sync_instruction_ns=v["sync_instruction_cycles"] / v["sync_clock_ghz"],
            vector_bf16_speedup=v["vector_bf16_speedup"],
            dma_bytes_per_ns=v["dma_engines"] * v["dma_engine_gbps"],
            dma_latency_ns=v["dma_fixed_latency_ns"],
            dma_descriptor_overhead_bytes=v["dma_descriptor_overhead_bytes"],
            dma_queues=int(v["dma_queues"]),
            hbm_stack_bytes_per_ns=chip_bytes_per_ns / stacks,
            hbm_core_bytes_per_ns=chip_bytes_per_ns / v["cores_per_chip"],
            macs_per_ns_bf16=v["tensor_peak_tflops_bf16"] * 1000.0 / 2.0,
        )


def assumptions(target: str) -> dict[str, str]:
    """The named assumptions of a target's table (fact name -> reason)."""
    return {name: f.assumption for name, f in table(target).items() if f.assumption}
