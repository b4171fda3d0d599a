"""Embedding throughput: `BarcodeMAEModel` (through `Embedder`) vs `transformers.BertModel` of identical size, and
tokenizer throughput vs a plain-Python k-mer split.

Inputs: simulated COI-like barcodes (`barcodemae.simulate`, 660 bp) cut to lengths drawn from a mixture that mirrors
the cleaned length histogram of real COI barcodes (capped at 660 bp, the model's limit): 45% 657-660 bp, 21%
600-656, 30% 500-599, 4% 300-499 (uniform within each bin); a random window of that length is kept. Sequences are
shuffled, so unsorted batches mix lengths as a file would.

Every case embeds the same sequences end to end, tokenisation included (what ``barcodemae embed`` does): batches
of ``--batch-size``, padded to the batch maximum, mean of the last hidden states over real tokens.

* ours: `Embedder(model, tokenizer, sort_by_length=True/False)` on a random-init ``configs/small.json`` encoder
  (rotary positions, as shipped) read out from one frame like BERT and, for an architecture-matched row, the same
  with absolute positions; plus one row with the shipped readout (``embedding_frames=k``: every reading frame
  encoded, so ~k times the work).
* BERT: `BertModel` (SDPA, no pooler) with the same hidden size, layers, heads, FFN, vocabulary and max positions,
  batched by this script in the same two ways (input order; or sorted by length, then restored).
* fp32 at ``--batch-size`` (128, the `Embedder` default), plus length-sorted rows at ``--sweep-batch-sizes``
  (default 32) and bf16 autocast rows (length-sorted, on the first ``--bf16-sequences`` barcodes).
* the padding the two batchings cost (token slots computed per real token), and a check that both batchings give
  the same embeddings.

Run: ``python -m benchmarks.embed --threads 2``.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import BertModel

from barcodemae.embedding import Embedder
from benchmarks.common import (
    base_parser,
    bert_config,
    format_table,
    load_preset,
    machine_info,
    report,
    setup,
    simulated_barcodes,
    speed_ratio,
    summarize,
    time_interleaved,
)
from modeling_barcodemae import BarcodeMAEModel
from tokenization_barcodemae import BarcodeMAETokenizer, kmer_vocabulary, normalize_barcode

LENGTH_BINS = ((657, 660, 0.45), (600, 656, 0.21), (500, 599, 0.30), (300, 499, 0.04))


# ------------------------------------------------------------------------------------------- inputs
def draw_lengths(count: int, rng: np.random.Generator) -> np.ndarray:
    weights = np.array([weight for _, _, weight in LENGTH_BINS])
    bins = rng.choice(len(LENGTH_BINS), size=count, p=weights / weights.sum())
    return np.array([rng.integers(LENGTH_BINS[b][0], LENGTH_BINS[b][1] + 1) for b in bins])


def realistic_barcodes(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    full = simulated_barcodes(count, length=660, end_variation=0, seed=seed)
    rng.shuffle(full)
    sequences = []
    for sequence, length in zip(full, draw_lengths(count, rng)):
        start = int(rng.integers(0, len(sequence) - length + 1))
        sequences.append(sequence[start : start + length])
    return sequences


def padded_slots(token_counts: np.ndarray, batch_size: int) -> int:
    """Token slots the encoder computes when batches of ``batch_size`` are padded to their longest member."""
    return sum(
        int(chunk.max()) * len(chunk)
        for chunk in np.array_split(token_counts, range(batch_size, len(token_counts), batch_size))
    )


# ------------------------------------------------------------------------------------------- BERT
def matching_bert(config) -> BertModel:
    shape = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size)
    return BertModel(bert_config(*shape, config), add_pooling_layer=False).eval()


class BertEmbedder:
    """The `Embedder` pipeline for a `BertModel`: tokenise, pad to the batch maximum, mean-pool real tokens;
    batches in input order, or length-sorted with the input order restored."""

    def __init__(self, model: BertModel, tokenizer, batch_size: int, sort_by_length: bool, bf16: bool):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.sort_by_length, self.bf16 = sort_by_length, bf16
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def __call__(self, sequences: Sequence[str]) -> np.ndarray:
        order = np.argsort([-len(s) for s in sequences], kind="stable") if self.sort_by_length else None
        ordered = [sequences[i] for i in order] if order is not None else list(sequences)
        output = np.empty((len(sequences), self.model.config.hidden_size), dtype=np.float32)
        for start in range(0, len(ordered), self.batch_size):
            batch = ordered[start : start + self.batch_size]
            encoded = self.tokenizer(batch, padding=True, truncation=True, return_tensors="pt")
            input_ids = encoded["input_ids"].to(self.device)
            mask = encoded["attention_mask"].to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).float()
            pooled = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            output[start : start + len(batch)] = pooled.cpu().numpy()
        if order is None:
            return output
        restored = np.empty_like(output)
        restored[order] = output
        return restored


# ------------------------------------------------------------------------------------------- tokenizers
def plain_python_tokenize(sequences: Sequence[str], k_mer: int, max_tokens: int) -> torch.Tensor:
    """Baseline: normalise, cut into non-overlapping k-mers with a dict lookup, pad into a tensor."""
    vocabulary = kmer_vocabulary(k_mer)
    rows = []
    for sequence in sequences:
        sequence = normalize_barcode(sequence)[: max_tokens * k_mer]
        rows.append([vocabulary.get(sequence[i : i + k_mer], 1) for i in range(0, len(sequence) - k_mer + 1, k_mer)])
    ids = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long)
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens)
    return ids


def tokenizer_benchmark(sequences: list[str], args) -> dict[str, Any]:
    tokenizer = BarcodeMAETokenizer(k_mer=6)
    fast = tokenizer(sequences, padding=True, truncation=True, return_tensors="pt")["input_ids"]
    plain = plain_python_tokenize(sequences, 6, tokenizer.model_max_length)
    if not torch.equal(fast, plain) or not torch.equal(fast, tokenizer.encode_barcodes(sequences)["input_ids"]):
        raise AssertionError("the plain-Python baseline or encode_barcodes does not reproduce BarcodeMAETokenizer")
    cases = {
        "BarcodeMAETokenizer (batch call)": lambda: tokenizer(
            sequences, padding=True, truncation=True, return_tensors="pt"
        ),
        "BarcodeMAETokenizer.encode_barcodes (numpy, used by the Embedder)": lambda: tokenizer.encode_barcodes(
            sequences
        ),
        "plain-Python k-mer split": lambda: plain_python_tokenize(sequences, 6, tokenizer.model_max_length),
    }
    times = time_interleaved(cases, args.repeats, 1, torch.device("cpu"))
    results = {name: summarize(values, len(sequences)) for name, values in times.items()}
    per_s = [result["per_s"] for result in results.values()]
    return {
        "sequences": len(sequences),
        "cases": results,
        "ratio_fast/plain": per_s[0] / per_s[2],
        "ratio_encode_barcodes/batch_call": per_s[1] / per_s[0],
    }


# ------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = base_parser(__doc__.split("\n")[0], "embed")
    parser.add_argument("--sequences", type=int, default=512, help="barcodes embedded per timed fp32 call")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--tokenizer-sequences", type=int, default=8192)
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast rows")
    parser.add_argument("--bf16-sequences", type=int, default=128, help="barcodes per timed bf16 call")
    parser.add_argument(
        "--sweep-batch-sizes",
        type=lambda text: [int(x) for x in text.split(",") if x],
        default=[32],
        help="extra length-sorted fp32 rows at these batch sizes (comma-separated; empty for none)",
    )
    parser.set_defaults(repeats=5)
    return parser.parse_args(argv)


Case = tuple[str, str, Callable[[Sequence[str]], np.ndarray]]


def build_cases(args, device, preset: str) -> tuple[dict[str, Case], dict[str, Case]]:
    """fp32 and bf16 cases, each ``name -> (model, batching, embed function)``. bf16 (an extra row): the preset's
    encoder and BERT, length-sorted only."""
    tokenizer = BarcodeMAETokenizer(k_mer=6)
    torch.manual_seed(0)
    config = load_preset(preset, embedding_frames=1)  # one encoder pass per barcode, as BertModel
    main_name = f"ours ({config.position_embedding_type} positions)"
    models = {main_name: BarcodeMAEModel(config).to(device)}
    if config.position_embedding_type != "absolute":  # the architecture-matched extra row
        absolute = load_preset(preset, position_embedding_type="absolute", embedding_frames=1)
        models["ours (absolute positions)"] = BarcodeMAEModel(absolute).to(device)
    bert = matching_bert(config).to(device)
    fp32: dict[str, Case] = {}
    for sort in (False, True):
        batching = "length-sorted" if sort else "input order"
        for name, model in models.items():
            embedder = Embedder(model, tokenizer, args.batch_size, "fp32", sort_by_length=sort)
            fp32[f"{name}, {batching}, fp32"] = (name, batching, embedder)
        bert_embedder = BertEmbedder(bert, tokenizer, args.batch_size, sort, bf16=False)
        fp32[f"BertModel, {batching}, fp32"] = ("BertModel", batching, bert_embedder)
    for batch_size in args.sweep_batch_sizes:  # the same, length-sorted, at other batch sizes
        batching = f"length-sorted, batch {batch_size}"
        embedder = Embedder(models[main_name], tokenizer, batch_size, "fp32", sort_by_length=True)
        fp32[f"{main_name}, {batching}, fp32"] = (main_name, batching, embedder)
        bert_embedder = BertEmbedder(bert, tokenizer, batch_size, True, bf16=False)
        fp32[f"BertModel, {batching}, fp32"] = ("BertModel", batching, bert_embedder)
    pooled_config = load_preset(preset, embedding_frames=config.k_mer)  # the shipped readout: every frame
    pooled = BarcodeMAEModel(pooled_config).to(device)
    pooled.load_state_dict(models[main_name].state_dict())
    name = f"ours, {config.k_mer}-frame readout"
    fp32[f"{name}, length-sorted, fp32"] = (name, "length-sorted", Embedder(pooled, tokenizer, args.batch_size, "fp32"))
    bf16: dict[str, Case] = {}
    if not args.no_bf16:
        ours = Embedder(models[main_name], tokenizer, args.batch_size, "bf16", sort_by_length=True)
        bf16[f"{main_name}, length-sorted, bf16"] = (main_name, "length-sorted", ours)
        bert_embedder = BertEmbedder(bert, tokenizer, args.batch_size, True, bf16=True)
        bf16["BertModel, length-sorted, bf16"] = ("BertModel", "length-sorted", bert_embedder)
    return fp32, bf16


def time_cases(cases: dict[str, Case], sequences: list[str], args, device) -> tuple[dict, dict[str, list[float]]]:
    """Interleaved timing of embedding ``sequences`` (warm-up: two batches); ``(results, raw times)``."""
    warm = sequences[: args.batch_size]
    times = time_interleaved(
        {name: (lambda fn=fn: fn(sequences)) for name, (_, _, fn) in cases.items()},
        args.repeats,
        args.warmup,
        device,
        warmup_cases={name: (lambda fn=fn: fn(warm)) for name, (_, _, fn) in cases.items()},
    )
    results = {
        name: {
            "model": model,
            "batching": batching,
            "sequences": len(sequences),
            **summarize(times[name], len(sequences)),
        }
        for name, (model, batching, _) in cases.items()
    }
    return results, times


def ratios_against_bert(times: dict[str, list[float]], ours: str) -> dict[str, dict[str, float]]:
    """Ours / BERT at the same batching and precision, and ours length-sorted / BERT in input order (the target)."""
    ratios = {}
    for precision in ("fp32", "bf16"):
        pairs = {
            f"{ours} / BertModel, both {batching}, {precision}": (batching, batching)
            for batching in ("input order", "length-sorted")
        }
        pairs[f"{ours} length-sorted / BertModel input order, {precision}"] = ("length-sorted", "input order")
        for name, (mine, bert) in pairs.items():
            mine_case, bert_case = f"{ours}, {mine}, {precision}", f"BertModel, {bert}, {precision}"
            if mine_case in times and bert_case in times:
                ratios[name] = speed_ratio(times, mine_case, bert_case)
    return ratios


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    device = setup(args)
    machine = machine_info(device)
    if args.tiny:
        args.sequences, args.batch_size, args.tokenizer_sequences, args.bf16_sequences = 24, 8, 64, 16
        args.sweep_batch_sizes = [4]
    preset = "tiny" if args.tiny else "small"
    sequences = realistic_barcodes(args.sequences, seed=0)
    lengths = np.array([len(s) for s in sequences])
    fp32, bf16 = build_cases(args, device, preset)
    started = time.perf_counter()
    results, times = time_cases(fp32, sequences, args, device)
    checks = {}
    for name in dict.fromkeys(m for m, _, _ in fp32.values()):
        if f"{name}, input order, fp32" not in fp32:  # the shipped-readout row is length-sorted only
            continue
        embedded = []
        for batching in ("input order", "length-sorted"):
            embedder = copy.copy(fp32[f"{name}, {batching}, fp32"][2])
            embedder.batch_size = 16  # several batches, so the two orders pad differently
            embedded.append(embedder(sequences[:64]))
        checks[f"{name}: max abs difference, length-sorted vs input order (fp32, 64 barcodes, batch 16)"] = float(
            np.abs(embedded[0] - embedded[1]).max()
        )
    ratios = {}
    for name in dict.fromkeys(m for m, _, _ in fp32.values() if m.startswith("ours")):
        ratios |= ratios_against_bert(times, name)
    main_name = next(iter(fp32.values()))[0]
    for name, (model, _, _) in fp32.items():
        if model.endswith("-frame readout"):
            ratios[f"{model} / {main_name}, length-sorted, fp32"] = speed_ratio(
                times, name, f"{main_name}, length-sorted, fp32"
            )
    for batch_size in args.sweep_batch_sizes:
        mine = f"{main_name}, length-sorted, batch {batch_size}, fp32"
        ratios[f"{main_name} / BertModel, both length-sorted, batch {batch_size}, fp32"] = speed_ratio(
            times, mine, f"BertModel, length-sorted, batch {batch_size}, fp32"
        )
        ratios[f"{main_name}: batch {batch_size} / batch {args.batch_size}, length-sorted, fp32"] = speed_ratio(
            times, mine, f"{main_name}, length-sorted, fp32"
        )
    if bf16:
        bf16_results, bf16_times = time_cases(bf16, sequences[: args.bf16_sequences], args, device)
        results |= bf16_results
        ratios |= ratios_against_bert(bf16_times, next(iter(bf16.values()))[0])
    token_counts = lengths // 6
    payload = {
        "preset": preset,
        "inputs": {
            "sequences": len(sequences),
            "length_bins_bp_weight": [list(b) for b in LENGTH_BINS],
            "length_percentiles_5_25_50_75_95": np.percentile(lengths, [5, 25, 50, 75, 95]).tolist(),
            "mean_tokens": float(token_counts.mean()),
            "padded_slots_per_real_token": {
                "input order": padded_slots(token_counts, args.batch_size) / token_counts.sum(),
                "length-sorted": padded_slots(np.sort(token_counts), args.batch_size) / token_counts.sum(),
            },
            "batch_size": args.batch_size,
        },
        "cases": results,
        "ratios": ratios,
        "padding_invariance_checks": checks,
        "tokenizer": tokenizer_benchmark(realistic_barcodes(args.tokenizer_sequences, seed=1), args),
        "wall_s": time.perf_counter() - started,
    }
    rows = [
        {
            "case": name,
            "barcodes": r["sequences"],
            "barcodes/s": r["per_s"],
            "median s": r["median_s"],
            "min-max s": f"{r['min_s']:.3g}-{r['max_s']:.3g}",
        }
        for name, r in results.items()
    ]
    tokenizer_rows = [
        {"tokenizer": name, "sequences/s": r["per_s"], "median s": r["median_s"]}
        for name, r in payload["tokenizer"]["cases"].items()
    ]
    tables = {
        f"embedding, batch {args.batch_size}": format_table(
            rows, ["case", "barcodes", "barcodes/s", "median s", "min-max s"]
        ),
        "throughput ratios": format_table(
            [{"ratio": name, **values} for name, values in ratios.items()],
            ["ratio", "ratio_of_medians", "paired_median", "paired_min", "paired_max"],
        ),
        "padding invariance": format_table([{"check": k, "value": v} for k, v in checks.items()], ["check", "value"]),
        f"tokenizer, {payload['tokenizer']['sequences']} barcodes": format_table(
            tokenizer_rows, ["tokenizer", "sequences/s", "median s"]
        ),
    }
    return report(args, machine, payload, tables)


if __name__ == "__main__":
    main()
