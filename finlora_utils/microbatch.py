"""How many micro-batches a pipeline step splits its batch into, when the run leaves it to the kit (micro_batches=0).

    from finlora_utils import microbatch
    choice = microbatch.choose(batch=64, stages=2, schedule="1f1b", device="cpu")
    choice.micro_batches, choice.efficiency, choice.table     # 4, 0.71, [(m, predicted efficiency, fits), ...]

Two costs pull against each other. The schedule's bubble: with p stages and m equal micro-batches every stage
idles (p - 1) / (m + p - 1) of a step, under GPipe and 1F1B alike, which asks for many micro-batches. And the
cost of each micro-batch: a stage runs its whole op sequence once per micro-batch (on a CPU that is thousands
of small ops, bitsandbytes dequantizing every 4-bit weight, and with shared_prefix each micro-batch's own copy
of the prompt prefix), which asks for few, large ones. The kit prices a micro-batch of r rows as r + o rows
of work (o: the fixed cost of one micro-batch, in rows) and predicts a pipeline's efficiency against p single
processes at the same global batch B, each of which pays o once:

    efficiency(m) = m / (m + p - 1) * (B + o) / (B + m * o)

It picks the m with the highest prediction among the divisors of B (every micro-batch has the same shape; 1F1B
needs m >= p), fewer micro-batches on a tie, and among those whose planned peak fits when the caller says what
fits. o depends on what a step computes in:
- CPU in bf16: 3 rows, fitted on one process training the embedded model on 1 thread (Zen 4 EPYC, nf4, FPB with
  the shared prefix, 2026-12-04: 198 tokens/s at 4 rows, 283 at 8, 336-375 at 16, 358-372 at 64). It predicts
  the pipeline runs there within ~0.05: batch 16 in 2 micro-batches 0.58 (measured 0.58) and in 4 0.54 (0.51),
  batch 32 in 4 0.64 (0.64), batch 64 in 4 0.71 (0.76).
- CPU in fp32 (the AVX2-only kind): 1 row. A row costs ~2.5x the matmul time there, so the same fixed cost is
  fewer rows; fitted on pairs of pipeline runs on the Zen 4 capped at AVX2 (batch 16 in 2 and 4 micro-batches:
  0.51 and 0.53, o = 1.5; batch 32 in 4 and 8: 0.64 and 0.66, o = 0.7). It picks the better count of each pair
  (up to a tie), but predicts 0.1-0.15 more than measured: those runs lose more to other causes than bf16 ones do.
- CUDA: 0.5 rows, not measured; it makes the choice follow GPipe's advice (m about 4p: batch 8 in 4, batch 32 in
  8 at 2 stages).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import hardware
from .config import SCHEDULES, ConfigError, resolve_precision

# The fixed cost of one micro-batch, in rows of its work, by device and compute dtype (see the docstring).
OVERHEAD_ROWS = {"cpu-bf16": 3.0, "cpu-fp32": 1.0, "cuda": 0.5}


@dataclass(frozen=True)
class Choice:
    micro_batches: int
    efficiency: float                       # predicted, against one process per stage at the same global batch
    overhead_rows: float
    table: list = field(default_factory=list)   # (m, predicted efficiency, fits) for every candidate
    reason: str = ""

    def as_dict(self) -> dict:
        return dict(micro_batches=self.micro_batches, predicted_efficiency=round(self.efficiency, 4),
                    overhead_rows=self.overhead_rows, reason=self.reason,
                    candidates=[dict(micro_batches=m, predicted_efficiency=round(e, 4), fits=f)
                                for m, e, f in self.table])


def efficiency(batch: int, micro_batches: int, stages: int, overhead_rows: float) -> float:
    """Predicted pipeline efficiency (see the module's docstring): bubble times per-micro-batch cost."""
    m, p, o = micro_batches, stages, overhead_rows
    return m / (m + p - 1) * (batch + o) / (batch + m * o)


def candidates(batch: int, stages: int, schedule: str) -> list[int]:
    """Micro-batch counts a pipeline step can use: divisors of the batch, at least `stages` under 1F1B."""
    low = stages if schedule == "1f1b" else 1
    return [m for m in range(low, batch + 1) if batch % m == 0]


def kind(device: str, compute: str = "bf16") -> str:
    """The OVERHEAD_ROWS key: 'cuda', or 'cpu-bf16' / 'cpu-fp32' by the dtype a CPU step's matmuls run in."""
    if str(device).startswith("cuda"):
        return "cuda"
    if compute not in ("bf16", "fp32"):
        raise ConfigError(f"compute={compute!r}: expected bf16 or fp32 (the dtype a CPU step computes in)")
    return f"cpu-{compute}"


def compute_for(precision: str | None) -> str:
    """'bf16' or 'fp32': what a CPU step computes its matmuls in at this precision (as flops.compute_dtype: fp32
    and bf16 as named, a quantized base in bitsandbytes' compute dtype, bf16 only where the CPU has it)."""
    p = resolve_precision(precision or "auto")
    if p in ("fp32", "bf16"):
        return p
    return "bf16" if hardware.cpu_bf16_native() else "fp32"


def choose(batch: int, stages: int, schedule: str = "1f1b", device: str = "cpu",
           fits: Callable[[int], bool] | None = None, compute: str = "bf16") -> Choice:
    """The micro-batch count for a `stages`-stage pipeline at global batch `batch` (see the module's docstring).
    compute: bf16 or fp32, what a CPU step computes in (flops.compute_dtype). fits(m): whether m micro-batches
    fit in memory (the planner's peak per stage against the device); the fastest that fits is taken, and when
    none fits the one with the most micro-batches (the smallest in-flight activations), saying so."""
    for name, value in (("batch_size", batch), ("nproc", stages)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r}: expected an integer >= 1")
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule={schedule!r}: expected one of {', '.join(SCHEDULES)}")
    dev = kind(device, compute)
    o = OVERHEAD_ROWS[dev]
    ms = candidates(batch, stages, schedule)
    if not ms:
        raise ConfigError(f"batch_size={batch}: expected at least nproc={stages} rows for schedule='1f1b' (one "
                          f"micro-batch per stage at least), or schedule='gpipe'")
    table = [(m, efficiency(batch, m, stages, o), True if fits is None else bool(fits(m))) for m in ms]
    ok = [row for row in table if row[2]]
    if ok:
        best = max(ok, key=lambda row: (round(row[1], 9), -row[0]))
        why = (f"highest predicted efficiency of {len(ms)} divisors of batch {batch} on {dev} (a micro-batch costs "
               f"{o:g} rows more)" + ("" if len(ok) == len(table) else f"; {len(table) - len(ok)} did not fit"))
    else:
        best = table[-1]
        why = f"none of {[m for m, _, _ in table]} fits the planned memory; the most micro-batches holds the least"
    return Choice(best[0], best[1], o, table, why)


def count_for(batch: int, stages: int, schedule: str, device: str, precision: str | None) -> int:
    """The count `choose` gives a run at this precision where memory is not the limit (the planner's readers,
    which have no device to fit)."""
    return choose(batch, stages, schedule, device, compute=compute_for(precision)).micro_batches
