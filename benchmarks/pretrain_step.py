"""Training-step throughput and peak memory: MAE vs MLM at equal encoder size, and ours vs a stock-transformers MAE.

One step = forward + backward + AdamW step (fused, like the Trainer's default ``adamw_torch_fused``) + zero_grad on
a fixed batch of simulated 658-660 bp barcodes (109-110 tokens of non-overlapping 6-mers). Masking is drawn inside
the model on every step.

* ``small``: `BarcodeMAEForPreTraining` with the ``configs/small.json`` encoder (4x256, rotary positions),
  ``objective="mae"`` with a light 2x128 decoder and the masked-token loss only vs ``"mlm"`` at mask ratio 0.5
  and 0.75, batch 64; plus, at 0.5, the MAE as the preset trains it (``preset-mae``: its decoder and the
  visible-token loss, so the output head runs on every k-mer) and with a decoder as large as the encoder
  (``big-decoder-mae``: the recipe of the shipped ``barcodemae-small``, trained before the preset's decoder shrank).
* ``paper``: ``configs/paper.json`` (encoder and decoder 6x6x768, absolute positions, dropout 0.1) at mask 0.5,
  ours (MAE and MLM) vs a reference MAE assembled from stock `transformers` blocks as the BarcodeMAE authors do:
  a `BertModel` encoder on the kept tokens gathered and padded to the batch maximum (position_ids = original
  positions), its output scattered back to full length with a mask embedding at masked positions, then a
  `BertForTokenClassification` decoder over every position predicting the vocabulary; cross-entropy on the masked
  positions; SDPA attention. Both MAEs mask the same way (`random_masking`).
* ``--profile``: the PyTorch profiler on one MAE and one MLM step (mask 0.5) of the small (or ``--profile-preset
  paper``) preset: top ops by self CPU time (with input shapes; on CUDA: GPU kernels by kernel time) and the time
  in forward / backward / optimizer.
* ``flop_ratios``: each MAE case's speed ratio to the MLM were it to run at the MLM's FLOP/s (the FLOPs of a step
  by `torch.utils.flop_counter`): the ceiling of its measured ratio.
* ``--bf16`` (autocast), ``--compile``, ``--device cuda``: the GPU run; MFU from `torch.utils.flop_counter`.
* ``--precision-ratio``: the small MLM and preset MAE at mask 0.5 also under bf16 autocast, in the same rounds
  (``BF16=1`` of scripts/equal_flops.sh on a CPU with bf16 matmul in hardware).

Run: ``python -m benchmarks.pretrain_step --threads 2 --profile``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import DeviceType
from transformers import BertForTokenClassification, BertModel

from benchmarks.common import (
    base_parser,
    bert_config,
    format_table,
    load_preset,
    machine_info,
    peak_memory_mb,
    report,
    setup,
    simulated_barcodes,
    speed_ratio,
    summarize,
    synchronize,
    tensor_mb,
    time_interleaved,
)
from modeling_barcodemae import IGNORE_INDEX, BarcodeMAEForPreTraining, random_masking
from tokenization_barcodemae import BarcodeMAETokenizer

Batch = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------------- reference MAE
class ReferenceMAE(nn.Module):
    """The authors' MAE layout on stock `transformers` blocks (see module docstring); returns the loss."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.encoder = BertModel(
            bert_config(
                config.hidden_size,
                config.num_hidden_layers,
                config.num_attention_heads,
                config.intermediate_size,
                config,
            )
        )
        self.decoder = BertForTokenClassification(
            bert_config(
                config.decoder_hidden_size,
                config.decoder_num_hidden_layers,
                config.decoder_num_attention_heads,
                config.decoder_intermediate_size,
                config,
                num_labels=config.vocab_size,
            )
        )
        same_width = config.hidden_size == config.decoder_hidden_size
        self.projection = nn.Identity() if same_width else nn.Linear(config.hidden_size, config.decoder_hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        config = self.config
        masked = random_masking(
            input_ids, attention_mask, config.mask_ratio, config.first_kmer_id, config.mask_sampling
        ).mask
        batch, length = input_ids.shape
        seen = attention_mask.bool() & ~masked
        seen_count = seen.sum(1)
        slots = torch.arange(int(seen_count.max()), device=input_ids.device)[None, :] < seen_count[:, None]
        positions = torch.arange(length, device=input_ids.device).expand(batch, length)
        encoder_ids = torch.full(slots.shape, config.unk_token_id, dtype=input_ids.dtype, device=input_ids.device)
        encoder_ids[slots] = input_ids[seen]
        encoder_positions = torch.zeros_like(encoder_ids)
        encoder_positions[slots] = positions[seen]
        encoded = self.encoder(
            input_ids=encoder_ids, attention_mask=slots.long(), position_ids=encoder_positions
        ).last_hidden_state
        encoded = self.projection(encoded)
        decoder_input = encoded.new_zeros(batch, length, encoded.shape[-1])
        decoder_input[seen] = encoded[slots]
        mask_embedding = self.decoder.bert.embeddings.word_embeddings.weight[config.pad_token_id]
        decoder_input[masked] = mask_embedding.to(decoder_input.dtype)
        logits = self.decoder(inputs_embeds=decoder_input, attention_mask=attention_mask, position_ids=positions).logits
        labels = input_ids.masked_fill(~masked, IGNORE_INDEX)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


# ------------------------------------------------------------------------------------------- steps
def make_batch(count: int, device: torch.device, seed: int = 0) -> Batch:
    tokenizer = BarcodeMAETokenizer(k_mer=6)
    encoded = tokenizer(simulated_barcodes(count, seed=seed), padding=True, truncation=True, return_tensors="pt")
    return {"input_ids": encoded["input_ids"].to(device), "attention_mask": encoded["attention_mask"].to(device)}


def loss_of(model: nn.Module, batch: Batch) -> torch.Tensor:
    if isinstance(model, ReferenceMAE):
        return model(**batch)
    return model(**batch).loss


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, autocast: torch.dtype | None = None
) -> Callable[[], None]:
    device_type = batch["input_ids"].device.type

    def step() -> None:
        with torch.autocast(device_type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss = loss_of(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def step_flops(step: Callable[[], None]) -> int:
    """Floating-point operations of one training step (forward + backward matmuls and attention), counted by
    `torch.utils.flop_counter`; the optimizer's elementwise work is not counted (as usual for MFU)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch._dynamo.config.patch(disable=True):  # count eagerly
        step()
    return counter.get_total_flops()


def peak_tflops(args, device: torch.device) -> float | None:
    """Dense bf16 peak of the GPU for MFU: ``--peak-tflops``, else the spec of an H100/H200 SXM (989 TFLOP/s)."""
    if args.peak_tflops or device.type != "cuda":
        return args.peak_tflops
    name = torch.cuda.get_device_name(device)
    return 989.4 if ("H100" in name or "H200" in name) else None


def build(kind: str, config, device: torch.device, compile: bool = False) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = ReferenceMAE(config) if kind == "reference" else BarcodeMAEForPreTraining(config)
    model = model.to(device).train()
    if compile:
        model.compile()  # as TrainingArguments(torch_compile=True)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)


def measure(
    cases: dict[str, tuple[nn.Module, torch.optim.Optimizer]], batch: Batch, args, device, bf16: set[str] = frozenset()
) -> tuple[dict[str, dict[str, Any]], dict[str, list[float]]]:
    """Per-case throughput, memory and model FLOP utilisation, and the raw per-round step times; the cases named
    in ``bf16`` (all with ``--bf16``) run under bf16 autocast."""
    steps = {
        name: train_step(model, optimizer, batch, torch.bfloat16 if args.bf16 or name in bf16 else None)
        for name, (model, optimizer) in cases.items()
    }
    times = time_interleaved(steps, args.repeats, args.warmup, device)
    peak = peak_tflops(args, device)
    results = {}
    for name, (model, optimizer) in cases.items():
        params = list(model.parameters())
        state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        summary = summarize(times[name], len(batch["input_ids"]))
        flops = step_flops(steps[name])
        achieved = flops / summary["median_s"] / 1e12
        results[name] = {
            **summary,
            "gflop_per_step": flops / 1e9,
            "parameters_m": sum(p.numel() for p in params) / 1e6,
            "params_and_adam_state_mb": tensor_mb(params) + tensor_mb(state),
            "peak_step_mb": peak_memory_mb(steps[name], device),
            "achieved_tflops": achieved,
            "mfu": achieved / peak if peak else None,
        }
    return results, times


def encoder_padding(model: BarcodeMAEForPreTraining, batch: Batch) -> dict[str, Any]:
    """What the MAE encoder is given: its input shape vs the kept tokens, from a hook on one forward."""
    seen: dict[str, Any] = {}

    def hook(module, args, kwargs):
        seen["shape"] = tuple(kwargs.get("input_ids", args[0] if args else None).shape)
        seen["real"] = int(kwargs["attention_mask"].sum())

    handle = model.barcodemae.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        handle.remove()
    rows, width = seen["shape"]
    return {
        "batch_full_length": int(batch["input_ids"].shape[1]),
        "encoder_input_shape": [rows, width],
        "kept_tokens": seen["real"],
        "encoder_slots": rows * width,
        "padding_fraction": 1 - seen["real"] / (rows * width),
    }


# ------------------------------------------------------------------------------------------- profile
KERNEL_CATEGORIES = (  # substrings of GPU kernel names (cuBLAS, cuDNN, PyTorch) -> bucket
    (("adam",), "optimizer"),
    (("gemm", "nvjet", "cutlass", "xmma", "splitk"), "matmuls (cuBLAS)"),
    (("sdpa", "flash", "fmha", "attention"), "attention kernels (SDPA)"),
    (("layer_norm", "layernorm", "gammabeta"), "LayerNorm"),
    (("gelu",), "GELU"),
    (("dropout", "bernoulli"), "dropout"),
    (("softmax", "nll_loss", "cross_entropy", "log_softmax"), "loss (log-softmax, NLL)"),
    (("cat", "copy", "index", "scatter", "gather"), "copies, casts, gather/scatter"),
    (("reduce",), "reductions (bias grads, sums)"),
)


def kernel_category(name: str) -> str:
    lowered = name.lower()
    for needles, bucket in KERNEL_CATEGORIES:
        if any(needle in lowered for needle in needles):
            return bucket
    return "other elementwise"


def category(name: str, shapes: list, config) -> str:
    """Heuristic bucket of one profiled op, from its name and input shapes (``config`` gives the sizes)."""
    dims = {d for shape in shapes if isinstance(shape, list) for d in shape}
    lowered = name.lower()
    if "adam" in lowered or "optimizer" in lowered:
        return "optimizer"
    if "embedding" in lowered:
        return "token/position embeddings (fwd + bwd)"
    if config.vocab_size in dims:
        return f"output head over {config.vocab_size} classes (matmuls, log-softmax, loss)"
    if "scaled_dot_product" in lowered or lowered in ("aten::bmm", "aten::_softmax", "aten::_softmax_backward_data"):
        return "attention kernels (SDPA)"
    if lowered in ("aten::mm", "aten::addmm"):
        ffn = {config.intermediate_size, config.decoder_intermediate_size}
        return "FFN matmuls" if dims & ffn else "QKV/output/projection matmuls"
    if "gelu" in lowered:
        return "GELU"
    if "layer_norm" in lowered:
        return "LayerNorm"
    if "bernoulli" in lowered or "dropout" in lowered:
        return "dropout"
    return "other (elementwise incl. rotary, indexing, copies, masking)"


def profile_step(
    model: BarcodeMAEForPreTraining, optimizer, batch: Batch, top: int, autocast: torch.dtype | None = None
) -> dict[str, Any]:
    """Top ops of one step by self time: CPU time on CPU, GPU kernel time on CUDA."""
    from torch.profiler import ProfilerActivity, profile, record_function

    device = batch["input_ids"].device
    on_gpu = device.type == "cuda"
    train_step(model, optimizer, batch, autocast)()  # warm-up
    synchronize(device)
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if on_gpu else [ProfilerActivity.CPU]
    with profile(activities=activities, record_shapes=True) as prof:
        precision = torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None)
        with record_function("phase:forward"), precision:
            loss = loss_of(model, batch)
        with record_function("phase:backward"):
            loss.backward()
        with record_function("phase:optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        synchronize(device)

    def self_time(event) -> float:
        return event.self_device_time_total if on_gpu else event.self_cpu_time_total

    averages = prof.key_averages(group_by_input_shape=not on_gpu)
    phases = {e.key.split(":", 1)[1]: e.cpu_time_total / 1e3 for e in averages if e.key.startswith("phase:")}
    if on_gpu:  # the kernels themselves (an aten op's device time repeats its kernels')
        ops = [e for e in averages if e.device_type == DeviceType.CUDA]
    else:
        ops = [e for e in averages if not e.key.startswith("phase:")]
    ops.sort(key=lambda e: -self_time(e))
    total = sum(self_time(event) for event in ops)
    categories: dict[str, float] = {}
    for event in ops:
        bucket = kernel_category(event.key) if on_gpu else category(event.key, event.input_shapes, model.config)
        categories[bucket] = categories.get(bucket, 0.0) + self_time(event) / total
    return {
        "clock": "self GPU time" if on_gpu else "self CPU time",
        "total_self_ms": total / 1e3,
        "phases_ms": phases,
        "category_shares": dict(sorted(categories.items(), key=lambda item: -item[1])),
        "top_ops": [
            {
                "op": event.key,
                "input_shapes": str(event.input_shapes)[:120],
                "self_ms": self_time(event) / 1e3,
                "share": self_time(event) / total,
                "calls": event.count,
            }
            for event in ops[:top]
        ],
    }


def run_profile(config_name: str, batch: Batch, device, top: int, autocast: torch.dtype | None) -> dict[str, Any]:
    profiles = {}
    for objective in ("mae", "mlm"):
        model, optimizer = build("ours", load_preset(config_name, objective=objective, mask_ratio=0.5), device)
        profiles[objective] = profile_step(model, optimizer, batch, top, autocast)
    return profiles


# ------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = base_parser(__doc__.split("\n")[0], "pretrain_step")
    parser.add_argument("--batch-size", type=int, default=64, help="small-preset batch")
    parser.add_argument("--paper-batch-size", type=int, default=16)
    parser.add_argument("--paper-repeats", type=int, default=3)
    parser.add_argument("--skip-paper", action="store_true", help="skip the paper-size comparison")
    parser.add_argument("--skip-small", action="store_true", help="skip the small-preset MAE vs MLM comparison")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (compile time excluded)")
    parser.add_argument("--profile", action="store_true", help="profile one MAE and one MLM small-preset step")
    parser.add_argument("--profile-top", type=int, default=15)
    parser.add_argument("--profile-preset", choices=("small", "paper"), default="small")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (as the Trainer's --bf16)")
    parser.add_argument(
        "--precision-ratio", action="store_true", help="also the small MLM and preset MAE under bf16 autocast"
    )
    parser.add_argument("--peak-tflops", type=float, help="peak for MFU (default: 989.4 on an H100/H200)")
    return parser.parse_args(argv)


LIGHT_DECODER = dict(  # the efficiency case: a 2 x 128 decoder, masked-token loss only
    decoder_hidden_size=128,
    decoder_num_hidden_layers=2,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=512,
    visible_loss_weight=0.0,
)


def decoder_like_encoder(preset: str) -> dict[str, int]:
    """Decoder overrides that give the preset's MAE a decoder as large as its encoder."""
    config = load_preset(preset)
    fields = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    return {f"decoder_{name}": getattr(config, name) for name in fields}


def small_benchmark(args, device, preset: str) -> dict[str, Any]:
    batch = make_batch(args.batch_size, device)

    def case(objective: str, ratio: float, **overrides):
        config = load_preset(preset, objective=objective, mask_ratio=ratio, **overrides)
        return build("ours", config, device, args.compile)

    cases = {}
    for ratio in (0.5, 0.75):
        cases[f"mae@{ratio}"] = case("mae", ratio, **LIGHT_DECODER)
        cases[f"mlm@{ratio}"] = case("mlm", ratio)
    cases["preset-mae@0.5"] = case("mae", 0.5)  # the preset as it trains: its decoder and visible-token loss
    cases["big-decoder-mae@0.5"] = case("mae", 0.5, **decoder_like_encoder(preset))
    bf16 = {f"{name} bf16" for name in ("mlm@0.5", "preset-mae@0.5")} if args.precision_ratio else set()
    for name in bf16:
        cases[name] = case("mae" if "mae" in name else "mlm", 0.5)
    results, times = measure(cases, batch, args, device, bf16)
    ratios = {f"mae/mlm@{r}": speed_ratio(times, f"mae@{r}", f"mlm@{r}") for r in (0.5, 0.75)}
    for name in ("preset-mae", "big-decoder-mae"):
        ratios[f"{name}/mlm@0.5"] = speed_ratio(times, f"{name}@0.5", "mlm@0.5")
    for name in sorted(bf16):
        ratios[f"{name}/fp32"] = speed_ratio(times, name, name.removesuffix(" bf16"))
    # the speed ratio each MAE would reach at the MLM's FLOP/s: the ceiling of its speed ratio
    flop_ratios = {
        f"{name}/mlm@{r}": results[f"mlm@{r}"]["gflop_per_step"] / results[f"{name}@{r}"]["gflop_per_step"]
        for name, r in (("mae", 0.5), ("mae", 0.75), ("preset-mae", 0.5), ("big-decoder-mae", 0.5))
    }
    padding = {f"mae@{r}": encoder_padding(cases[f"mae@{r}"][0], batch) for r in (0.5, 0.75)}
    return {
        "preset": preset,
        "batch_size": args.batch_size,
        "cases": results,
        "ratios": ratios,
        "flop_ratios": flop_ratios,
        "padding": padding,
    }


def paper_benchmark(args, device, preset: str) -> dict[str, Any]:
    batch = make_batch(args.paper_batch_size, device, seed=1)
    cases = {
        "ours_mae": build("ours", load_preset(preset, objective="mae", mask_ratio=0.5), device, args.compile),
        "reference_mae": build("reference", load_preset(preset, objective="mae", mask_ratio=0.5), device, args.compile),
        "ours_mlm": build("ours", load_preset(preset, objective="mlm", mask_ratio=0.5), device, args.compile),
    }
    paper_args = argparse.Namespace(**{**vars(args), "repeats": args.paper_repeats})
    results, times = measure(cases, batch, paper_args, device)
    ratios = {
        "ours_mae/reference_mae": speed_ratio(times, "ours_mae", "reference_mae"),
        "ours_mae/ours_mlm": speed_ratio(times, "ours_mae", "ours_mlm"),
    }
    return {"preset": preset, "batch_size": args.paper_batch_size, "cases": results, "ratios": ratios}


def case_rows(section: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "case": name,
            "barcodes/s": case["per_s"],
            "median step s": case["median_s"],
            "min-max s": f"{case['min_s']:.3g}-{case['max_s']:.3g}",
            "params M": case["parameters_m"],
            "static MiB": case["params_and_adam_state_mb"],
            "peak step MiB": case["peak_step_mb"],
            "TFLOP/s": case["achieved_tflops"],
            "MFU": f"{100 * case['mfu']:.1f}%" if case["mfu"] else "-",
        }
        for name, case in section["cases"].items()
    ]


def ratio_table(ratios: dict[str, dict[str, float]]) -> str:
    columns = ["ratio", "ratio_of_medians", "paired_median", "paired_min", "paired_max"]
    return format_table([{"ratio": name, **values} for name, values in ratios.items()], columns)


def profile_rows(profile: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "op": op["op"],
            "input shapes": op["input_shapes"],
            "self ms": op["self_ms"],
            "share": f"{100 * op['share']:.1f}%",
            "calls": op["calls"],
        }
        for op in profile["top_ops"]
    ]


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    device = setup(args)
    machine = machine_info(device)
    small_preset, paper_preset = ("tiny", "tiny") if args.tiny else ("small", "paper")
    if args.tiny:
        args.batch_size, args.paper_batch_size = min(args.batch_size, 4), min(args.paper_batch_size, 2)
    columns = ["case", "barcodes/s", "median step s", "min-max s", "params M", "static MiB", "peak step MiB"]
    columns += ["TFLOP/s", "MFU"]
    payload: dict[str, Any] = {"compiled": args.compile}
    tables = {}
    if not args.skip_small:
        payload["small"] = small_benchmark(args, device, small_preset)
        small_table = format_table(case_rows(payload["small"]), columns)
        tables[f"{small_preset} preset, batch {args.batch_size}"] = small_table
        tables["throughput ratios (small)"] = ratio_table(payload["small"]["ratios"])
        pad = payload["small"]["padding"]
        tables["MAE encoder input"] = format_table(
            [{"case": k, **v} for k, v in pad.items()], ["case", *next(iter(pad.values()))]
        )
    if not args.skip_paper:
        payload["paper"] = paper_benchmark(args, device, paper_preset)
        tables[f"{paper_preset} preset, batch {args.paper_batch_size}"] = format_table(
            case_rows(payload["paper"]), columns
        )
        tables["throughput ratios (paper)"] = ratio_table(payload["paper"]["ratios"])
    if args.profile:
        preset = paper_preset if args.profile_preset == "paper" else small_preset
        size = args.paper_batch_size if args.profile_preset == "paper" else args.batch_size
        autocast = torch.bfloat16 if args.bf16 else None
        payload["profile"] = run_profile(preset, make_batch(size, device), device, args.profile_top, autocast)
        for objective, profile in payload["profile"].items():
            phases = ", ".join(f"{name} {ms:.0f} ms" for name, ms in profile["phases_ms"].items())
            clock = profile["clock"]
            title = f"profile {preset} {objective}, batch {size} ({clock} {profile['total_self_ms']:.0f} ms; {phases})"
            tables[title] = format_table(profile_rows(profile), ["op", "input shapes", "self ms", "share", "calls"])
            shares = [{"category": k, "share": f"{100 * v:.1f}%"} for k, v in profile["category_shares"].items()]
            tables[f"profile {preset} {objective}: {clock} by category"] = format_table(shares, ["category", "share"])
    return report(args, machine, payload, tables)


if __name__ == "__main__":
    main()
