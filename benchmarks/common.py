"""Shared helpers for the benchmark scripts: argument parsing, thread pinning, interleaved timing, peak memory,
machine description, simulated inputs, tables and JSON output.

Timing rule: every case is warmed up (not timed), then the cases are timed in interleaved rounds (one call of each
case per round), so slow drift of the machine (other processes, frequency) hits all cases alike; the reported
figure is the median over rounds. Ratios are always between cases timed in the same run.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after a reset; on CPU the rise of the process's peak
resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) over its resident set just before the call, after
returning freed heap to the OS (``malloc_trim``). ``tracemalloc`` is no use here: it only sees Python's own
allocator, not the tensor allocator.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------- arguments
def base_parser(description: str, name: str) -> argparse.ArgumentParser:
    """Options every script shares; ``name`` sets the default JSON path ``benchmarks/results/NAME.json``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (torch.set_num_threads)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each case before timing")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes for the smoke test (numbers meaningless)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / f"{name}.json", help="JSON result file")
    return parser


def setup(args: argparse.Namespace) -> torch.device:
    """Pin threads, seed, and return the device (refusing ``cuda`` when there is none)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        raise SystemExit("--threads and --repeats must be at least 1, --warmup at least 0")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return torch.device(args.device)


def load_preset(name: str, **overrides: Any):
    """A `BarcodeMAEConfig` from ``configs/NAME.json`` with ``overrides``."""
    from configuration_barcodemae import BarcodeMAEConfig

    settings = json.loads((ROOT / "configs" / f"{name}.json").read_text())
    settings.pop("training", None)  # train.py's arguments, not the model's
    return BarcodeMAEConfig(**{**settings, **overrides})


def bert_config(width: int, layers: int, heads: int, ffn: int, config, **extra) -> BertConfig:
    """A SDPA `BertConfig` of the given shape with the vocabulary, positions, dropout and norms of ``config``."""
    return BertConfig(
        vocab_size=config.vocab_size,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=config.max_position_embeddings,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        hidden_act=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        pad_token_id=config.pad_token_id,
        attn_implementation="sdpa",
        **extra,
    )


# ------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    cases: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    device: torch.device,
    warmup_cases: dict[str, Callable[[], object]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each case: ``warmup`` untimed calls of each (of ``warmup_cases[name]`` instead, when
    given: e.g. a smaller input), then ``repeats`` interleaved rounds."""
    for _ in range(warmup):
        for fn in (warmup_cases or cases).values():
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def summarize(times: Sequence[float], items: int) -> dict[str, float]:
    """Median/min/max seconds per call and ``items`` per second at the median."""
    median = statistics.median(times)
    return {
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "per_s": items / median,
        "repeats": len(times),
    }


def speed_ratio(times: dict[str, list[float]], ours: str, baseline: str) -> dict[str, float]:
    """Throughput of ``ours`` over ``baseline``: ratio of the medians, and the median and range of the per-round
    ratios (each round times both back to back, so the per-round ratios cancel slow drift)."""
    rounds = [b / a for a, b in zip(times[ours], times[baseline])]
    return {
        "ratio_of_medians": statistics.median(times[baseline]) / statistics.median(times[ours]),
        "paired_median": statistics.median(rounds),
        "paired_min": min(rounds),
        "paired_max": max(rounds),
    }


# ------------------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _release_heap() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak extra memory (MiB) that one call of ``fn`` needs beyond what is allocated before it (see module doc)."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    _release_heap()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset VmHWM to the current resident set
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) / 1024


def tensor_mb(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


# ------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    """What ran the benchmark: CPU, cores, versions, threads, GPU, load average at the time of the call."""
    import transformers

    info = {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ------------------------------------------------------------------------------------------- inputs
def simulated_barcodes(count: int, length: int = 660, end_variation: int = 1, seed: int = 0) -> list[str]:
    """``count`` COI-like barcodes from `barcodemae.simulate` (``length - 2*end_variation``..``length`` bp)."""
    from barcodemae.simulate import simulate_barcodes

    species = 48  # simulate_barcodes' default tree: 2 orders x 2 families x 3 genera x 4 species
    specimens = max(1, -(-count // species))
    records = simulate_barcodes(specimens_per_species=specimens, length=length, end_variation=end_variation, seed=seed)
    return [record["dna_barcode"] for record in records[:count]]


# ------------------------------------------------------------------------------------------- output
def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` (floats with 3 significant digits, or 1 decimal when ≥ 100)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON, atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path


def report(args: argparse.Namespace, machine: dict[str, Any], payload: dict[str, Any], tables: dict[str, str]) -> dict:
    """Print the tables, write the JSON (settings, ``machine`` as described at the start, results) and return it."""
    result = {
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
        **payload,
    }
    for title, table in tables.items():
        print(f"\n## {title}\n\n{table}")
    write_json(args.output, result)
    print(f"\nwrote {args.output}")
    return result
