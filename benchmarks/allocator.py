"""Memory allocators for CPU pretraining: glibc's malloc (the default) vs tcmalloc and jemalloc, loaded with
``LD_PRELOAD`` (Debian: ``apt-get install libtcmalloc-minimal4 libjemalloc2``).

Each case is a fresh process (the allocator is chosen when the process starts) running ``--steps`` training steps
of the ``configs/small.json`` model (``--objective``, forward + backward + fused AdamW) on batches of 64 simulated
barcodes cut to a random length of 60-110 tokens, as real barcodes vary: varying shapes are what fragments the
heap. Reported per case: the median step seconds (after 5 untimed steps), the process's resident memory at the end
and its peak (``VmRSS``, ``VmHWM``); processes are run in interleaved rounds, the ratios are against glibc's
malloc in the same run. Allocators whose library is not installed are skipped (the JSON says which).

Run: ``python -m benchmarks.allocator --threads 2 --repeats 2``.
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import ROOT, base_parser, format_table, load_preset, machine_info, report, setup, speed_ratio

LIBRARIES = {"tcmalloc": "tcmalloc_minimal", "jemalloc": "jemalloc"}  # names for ctypes.util.find_library
UNTIMED_STEPS = 5
RESULT_PREFIX = "allocator-result: "


def parse_args(argv=None) -> argparse.Namespace:
    parser = base_parser(__doc__.split("\n")[0], "allocator")
    parser.add_argument("--objective", choices=("mlm", "mae"), default="mlm")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps a process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(repeats=2, warmup=0)
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps = 2
    return args


def memory_mb() -> dict[str, float]:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {name: int(status[field].split()[0]) / 1024 for name, field in (("rss_mb", "VmRSS"), ("peak_mb", "VmHWM"))}


def worker(args: argparse.Namespace) -> None:
    """Train ``args.steps`` steps in this process and print one result line."""
    from benchmarks.pretrain_step import build, make_batch, train_step

    setup(args)
    preset = "tiny" if args.tiny else "small"
    model, optimizer = build("ours", load_preset(preset, objective=args.objective), torch.device("cpu"))
    pool = make_batch(64 * 4, torch.device("cpu"))
    rng = np.random.default_rng(0)
    seconds = []
    for _ in range(UNTIMED_STEPS + args.steps):
        rows = torch.from_numpy(rng.choice(len(pool["input_ids"]), 64, replace=False))
        length = int(rng.integers(60, pool["input_ids"].shape[1] + 1))
        batch = {name: tensor[rows, :length].contiguous() for name, tensor in pool.items()}
        start = time.perf_counter()
        train_step(model, optimizer, batch)()
        seconds.append(time.perf_counter() - start)
    print(RESULT_PREFIX + json.dumps({"median_step_s": statistics.median(seconds[UNTIMED_STEPS:]), **memory_mb()}))


def run_case(args: argparse.Namespace, library: str | None) -> dict[str, float]:
    """One worker process with ``library`` preloaded (None: glibc's malloc)."""
    command = [sys.executable, "-m", "benchmarks.allocator", "--worker", "--objective", args.objective]
    command += ["--steps", str(args.steps), "--threads", str(args.threads), *(["--tiny"] if args.tiny else [])]
    env = {**os.environ, "LD_PRELOAD": library or ""}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command)} failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    device = setup(args)
    machine = machine_info(device)
    found = {name: ctypes.util.find_library(library) for name, library in LIBRARIES.items()}
    libraries = {"glibc malloc": None} | {name: soname for name, soname in found.items() if soname}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in libraries}
    for _ in range(args.repeats):
        for name, library in libraries.items():
            rounds[name].append(run_case(args, library))
    cases = {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in rounds.items()
    }
    step_times = {name: [r["median_step_s"] for r in results] for name, results in rounds.items()}
    for name, case in cases.items():
        case["speed_vs_glibc"] = speed_ratio(step_times, name, "glibc malloc")["ratio_of_medians"]
        case["rss_vs_glibc"] = case["rss_mb"] / cases["glibc malloc"]["rss_mb"]
    payload = {
        "libraries": libraries,
        "objective": args.objective,
        "steps": args.steps,
        "skipped": sorted(set(LIBRARIES) - set(libraries)),
        "cases": cases,
        "rounds": rounds,
    }
    rows = [{"allocator": name, **case} for name, case in cases.items()]
    columns = ["allocator", "median_step_s", "speed_vs_glibc", "rss_mb", "rss_vs_glibc", "peak_mb"]
    title = f"{args.objective} training steps by allocator ({args.steps} steps a process, {args.threads} threads)"
    return report(args, machine, payload, {title: format_table(rows, columns)})


if __name__ == "__main__":
    main()
