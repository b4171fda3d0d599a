"""The ``barcodemae`` command: embed, identify, serve, finetune, evaluate, export, convert, card, push.

Thin layer: parse the arguments, call ``barcodemae.identify`` / ``barcodemae.hub`` / ``barcodemae.evaluation``,
report. Errors in the input or output (``DataError``, missing files, bad values) print one line
``barcodemae: error: ...`` on stderr and exit with status 2, without a traceback; outputs are written atomically,
so nothing half-written is left behind. Progress bars and cleaning reports go to stderr. torch and transformers are
imported inside the commands, so ``--help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from barcodemae import __version__
from barcodemae.assign import DEFAULT_MIN_CONFIDENCE

EPILOG = "Inputs: FASTA (.fasta .fa .fas .fna .ffn) or BIOSCAN-style tables (.tsv .txt .csv), optionally .gz."


# ------------------------------------------------------------------------------------------- parser
def _add_model_options(parser: argparse.ArgumentParser, default_help: str = "the shipped encoder") -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", help=f"exported encoder folder (default: {default_help}; or $BARCODEMAE_MODEL)")
    group.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    group.add_argument("--batch-size", type=int, help="barcodes per forward pass (default: 32 on CPU, 256 on GPU)")
    group.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="auto: bf16 on CUDA")
    group.add_argument("--threads", type=int, help="CPU threads for torch (torch.set_num_threads)")
    group.add_argument("--chunk-size", type=int, default=16384, help="barcodes read and written per chunk")
    group.add_argument("--strict", action="store_true", help="stop at the first record that would be skipped")
    group.add_argument("--quiet", action="store_true", help="no progress bars or summaries: errors and warnings only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barcodemae", description="BarcodeMAE DNA-barcode foundation models.")
    parser.add_argument("--version", action="version", version=f"barcodemae {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    embed = commands.add_parser("embed", help="barcodes → embeddings", epilog=EPILOG)
    embed.add_argument("input", help="FASTA or BIOSCAN-style table")
    embed.add_argument("-o", "--output", required=True, help="OUT.npy (+ OUT.ids.txt), OUT.parquet, OUT.safetensors")
    _add_model_options(embed)
    embed.set_defaults(handler=_embed)

    identify = commands.add_parser(
        "identify", help="an answer at every rank with its confidence, against a reference", epilog=EPILOG
    )
    identify.add_argument("query", nargs="?", help="barcodes to identify (omit to only build --save-index)")
    source = identify.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--reference",
        help="labelled reference: BIOSCAN-5M, BOLD v4 or BOLD v5 TSV/CSV, FASTA with SINTAX or BOLD headers, or "
        "FASTA with --taxonomy",
    )
    source.add_argument("--index", help="reference index folder written by --save-index")
    identify.add_argument("-o", "--output", help="predictions .tsv (or SINTAX tabbed output with --format sintax)")
    identify.add_argument(
        "--taxonomy", help="TSV of labels by id (a header row with rank columns, or id + SINTAX/QIIME string)"
    )
    identify.add_argument(
        "--min-confidence",
        type=float,
        help="commit to the deepest rank whose confidence reaches this, for every rank (default, per rank, chosen on "
        f"the val open-set benchmark: {', '.join(f'{k} {v}' for k, v in DEFAULT_MIN_CONFIDENCE.items())})",
    )
    identify.add_argument(
        "--format", choices=("tsv", "sintax"), default="tsv", help="tsv (default) or vsearch's SINTAX tabbed output"
    )
    identify.add_argument("--save-index", help="write the reference index folder (embeddings, ids, taxonomy)")
    identify.add_argument("--top-k", type=int, default=5, help="neighbours listed per query (default: 5)")
    identify.add_argument(
        "--novel-threshold",
        type=float,
        help="cosine similarity below which the species confidence drops, for every genus (default: calibrated on "
        "the reference, per genus)",
    )
    identify.add_argument(
        "--search",
        choices=("exact", "ann", "auto"),
        help="cosine search: exact, approximate (faiss, pip install 'barcodemae[ann]') or auto (approximate from "
        "15,000 distinct reference barcodes); default: auto, or what a loaded --index was saved with",
    )
    identify.add_argument(
        "--rerank",
        choices=("none", "align"),
        default="none",
        help="align: re-rank the --candidates nearest references by alignment identity (edlib, "
        "pip install 'barcodemae[align]'); adds alignment_identity columns",
    )
    identify.add_argument("--candidates", type=int, default=10, help="neighbours re-ranked by --rerank (default: 10)")
    _add_model_options(identify, "the index's model, else the shipped encoder")
    identify.set_defaults(handler=_identify)

    serve = commands.add_parser("serve", help="the identification web page (pip install 'barcodemae[app]')")
    served = serve.add_mutually_exclusive_group(required=True)
    served.add_argument("--reference", help="labelled reference file, embedded at start-up (as identify reads it)")
    served.add_argument("--index", help="reference index folder written by identify --save-index")
    serve.add_argument("--model", help="encoder folder (default: the index's model, else the shipped encoder)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    serve.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    serve.set_defaults(handler=_serve)

    commands.add_parser(
        "finetune", help="taxonomy-aware training of an encoder (Trainer flags: barcodemae finetune --help)"
    )

    evaluate = commands.add_parser("evaluate", help="benchmark encoders (and baselines) on a labelled table")
    evaluate.add_argument(
        "--model",
        action="append",
        help="encoder folder, or a fine-tuned classifier folder (barcodemae finetune's OUTPUT_DIR: also scored as "
        "the species fine-tune column); repeat for several (default: the shipped encoder)",
    )
    evaluate.add_argument(
        "--data", required=True, help="BIOSCAN-5M metadata CSV/TSV (as shipped) or a table with its columns"
    )
    evaluate.add_argument("--output", required=True, help="output folder for results and plots")
    evaluate.add_argument("--no-plots", action="store_true")
    evaluate.add_argument("--baselines", default="", help="comma-separated: kmer,vsearch,random")
    evaluate.add_argument("--unseen-split", default="test_unseen")
    evaluate.add_argument("--seen-split", default="test")
    evaluate.add_argument("--max-seen-rows", type=int, help="cap the train/test partitions (compute budget)")
    evaluate.add_argument("--max-unseen-rows", type=int, help="cap the unseen queries (compute budget)")
    evaluate.add_argument("--robustness-queries", type=int, default=2000, help="unseen queries for the Fig. 3 curves")
    evaluate.add_argument(
        "--cache-dir",
        default=".cache/embeddings",
        help="embeddings cached per (model weights, partition barcodes); default: %(default)s",
    )
    evaluate.add_argument("--no-cache", action="store_true", help="embed everything afresh, cache nothing")
    evaluate.add_argument(
        "--workers",
        type=int,
        default=1,
        help="rows evaluated at a time in worker processes sharing the threads (seeded UMAP uses one core each)",
    )
    evaluate.set_defaults(handler=_evaluate)

    export = commands.add_parser(
        "export", help="pretraining checkpoint (or encoder folder) → encoder-only Hub folder + model card"
    )
    export.add_argument(
        "checkpoint", help="checkpoint folder, a run folder with checkpoint-N sub-folders, or an encoder folder"
    )
    export.add_argument("out", help="new folder to write")
    export.add_argument("--overwrite", action="store_true", help="replace an existing OUT folder")
    export.add_argument("--embedding-frames", type=int, help="reading frames pooled into the embedding (1..k)")
    export.add_argument("--readout", help="the embedding: mean, kmer_bag or mean+kmer_bag (see BarcodeMAEConfig)")
    _add_card_options(export)
    export.set_defaults(handler=_export)

    convert = commands.add_parser(
        "convert", help="the authors' checkpoint (.pt) or a BERT k-mer model folder → encoder Hub folder + model card"
    )
    convert.add_argument("source", help="checkpoint of the BarcodeMAE/BarcodeBERT authors' code, or a BERT folder")
    convert.add_argument("out", help="new folder to write")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing OUT folder")
    convert.add_argument(
        "--max-length", type=int, default=660, help="bases read per barcode, for a folder (default: 660)"
    )
    convert.set_defaults(handler=_convert)

    card = commands.add_parser("card", help="(re)write README.md (model card) in an exported folder")
    card.add_argument("folder")
    _add_card_options(card)
    card.set_defaults(handler=_card)

    push = commands.add_parser("push", help="upload an exported folder to the Hugging Face Hub")
    push.add_argument("folder")
    push.add_argument("repo_id", help="namespace/name")
    push.add_argument("--private", action="store_true", help="create the repo private (if it does not exist)")
    push.add_argument("--dry-run", action="store_true", help="check and list the files, upload nothing")
    push.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    push.add_argument("--endpoint", help="Hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    push.add_argument("--commit-message", default="Upload BarcodeMAE encoder")
    push.set_defaults(handler=_push)
    return parser


def _add_card_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", help="evaluation results JSON (fills the model-index metadata)")
    parser.add_argument("--results-key", help="which model's entry of the results JSON")
    parser.add_argument("--model-name", help="model name in the card (default: the folder name)")
    parser.add_argument("--repo-id", help="Hub repo id shown in the usage example")


# ------------------------------------------------------------------------------------------- handlers
def _embedder(args: argparse.Namespace, model_path: str):
    from barcodemae.embedding import load_embedder

    if args.threads:
        from barcodemae.search import set_threads

        set_threads(args.threads)
    if (args.batch_size is not None and args.batch_size < 1) or args.chunk_size < 1:
        raise ValueError("--batch-size and --chunk-size must be at least 1")
    return load_embedder(
        model_path, args.device, batch_size=args.batch_size, precision=args.precision, progress=not args.quiet
    )


def _embed(args: argparse.Namespace) -> None:
    from barcodemae.embedding import check_embedding_output, check_input, default_model_path, embed_file
    from barcodemae.identify import print_report

    check_input(args.input)
    check_embedding_output(args.output)
    embedder = _embedder(args, args.model or default_model_path())
    report = embed_file(
        args.input, args.output, embedder, strict=args.strict, chunk_size=args.chunk_size, progress=not args.quiet
    )
    print_report(args.input, report, sys.stderr)
    print(f"wrote {report.n_kept} embeddings ({embedder.hidden_size} dimensions) to {args.output}", file=sys.stderr)


def _identify(args: argparse.Namespace) -> None:
    try:
        _run_identify(args)
    except ImportError as error:  # an optional library (faiss, edlib) is missing: one error line, how to install it
        raise ValueError(str(error)) from error


def _run_identify(args: argparse.Namespace) -> None:
    from barcodemae.embedding import check_input, default_model_path
    from barcodemae.formats import read_taxonomy
    from barcodemae.identify import check_model, identify_file, print_report
    from barcodemae.io import check_output_path
    from barcodemae.reference import ReferenceIndex

    if args.query is None and not args.save_index:
        raise ValueError("give a QUERY file (with -o OUT.tsv), or --save-index to only build the index")
    if args.query is not None:
        if not args.output:
            raise ValueError("-o/--output OUT.tsv is required with a QUERY file")
        check_input(args.query)
        check_output_path(args.output, (".tsv", ".txt", ".sintax"))
    if args.index and args.taxonomy:
        raise ValueError("--taxonomy labels a --reference; an --index holds its labels already")
    if args.index and args.save_index:
        raise ValueError("--save-index needs --reference (an --index is already saved)")
    index = ReferenceIndex.load(args.index, with_sequences=args.rerank == "align") if args.index else None
    if index is not None and args.model and Path(args.model).resolve() != Path(index.model).resolve():
        raise ValueError(f"{args.index} was built with the model {index.model}, not {args.model}")
    model_path = args.model or (index.model if index is not None else default_model_path())
    if index is None:
        check_input(args.reference)
    if args.save_index:
        ReferenceIndex.check_target(args.save_index)
    taxonomy = read_taxonomy(args.taxonomy) if args.taxonomy else None
    embedder = _embedder(args, model_path)
    if index is None:
        index = _build_reference(args, embedder, model_path, taxonomy)
    else:
        check_model(index, embedder)
        if args.search:
            index.use_search(args.search)
        if args.novel_threshold is not None:
            index.set_threshold(args.novel_threshold)
    if "warning" in index.calibration:
        print(f"barcodemae: warning: {index.calibration['warning']}", file=sys.stderr)
    if not args.quiet:
        how = index.calibration.get("rule", "given")
        print(f"search: {index.search}; novel-species threshold {index.threshold:.4f} ({how})", file=sys.stderr)
    if args.query is not None:
        report, summary = identify_file(
            args.query,
            args.output,
            index,
            embedder,
            top_k=args.top_k,
            rerank=args.rerank,
            candidates=args.candidates,
            min_confidence=args.min_confidence,
            output_format=args.format,
            strict=args.strict,
            chunk_size=args.chunk_size,
            progress=not args.quiet,
        )
        if not args.quiet:
            print_report(f"query {args.query}", report, sys.stderr)
            print(f"wrote {report.n_kept} answers to {args.output}\n{summary.format()}", file=sys.stderr)


def _serve(args: argparse.Namespace) -> None:
    from barcodemae.app import launch, load_identifier, require_gradio

    require_gradio()
    identifier = load_identifier(reference=args.reference, index=args.index, model=args.model)
    print(f"barcodemae: serving on http://{args.host}:{args.port} (Ctrl+C stops)", file=sys.stderr)
    launch(identifier, args.host, args.port)


def _build_reference(args: argparse.Namespace, embedder, model_path: str, taxonomy):
    from barcodemae.identify import print_report
    from barcodemae.reference import build_index

    index, report = build_index(
        args.reference,
        embedder,
        str(Path(model_path).resolve()),
        threshold=args.novel_threshold,
        search=args.search or "auto",
        strict=args.strict,
        chunk_size=args.chunk_size,
        progress=not args.quiet,
        taxonomy=taxonomy,
    )
    if not args.quiet:
        print_report(f"reference {args.reference}", report, sys.stderr)
    if args.save_index:
        index.save(args.save_index)
        if not args.quiet:
            print(f"wrote the reference index ({len(index.ids)} barcodes) to {args.save_index}", file=sys.stderr)
    return index


def _evaluate(args: argparse.Namespace) -> None:
    try:
        from barcodemae.embedding import default_model_path
        from barcodemae.evaluation import run_evaluation
    except ImportError as error:
        raise ValueError(f"evaluation is not available: {error}") from error

    run_evaluation(
        models=args.model or [default_model_path()],
        data=args.data,
        output=args.output,
        plots=not args.no_plots,
        baselines=[name.strip() for name in args.baselines.split(",") if name.strip()],
        unseen_split=args.unseen_split,
        seen_split=args.seen_split,
        max_seen_rows=args.max_seen_rows,
        max_unseen_rows=args.max_unseen_rows,
        robustness_queries=args.robustness_queries,
        cache_dir=None if args.no_cache else args.cache_dir,
        workers=args.workers,
    )


def _card_kwargs(args: argparse.Namespace) -> dict:
    return {
        "results": args.results,
        "results_key": args.results_key,
        "model_name": args.model_name,
        "repo_id": args.repo_id,
    }


def _export(args: argparse.Namespace) -> None:
    from barcodemae.hub import check_loadable, export_checkpoint

    out = export_checkpoint(
        args.checkpoint,
        args.out,
        overwrite=args.overwrite,
        embedding_frames=args.embedding_frames,
        readout=args.readout,
        **_card_kwargs(args),
    )
    print(f"wrote {out} (loads as {check_loadable(out)})", file=sys.stderr)


def _convert(args: argparse.Namespace) -> None:
    from barcodemae.convert import convert
    from barcodemae.hub import check_loadable

    out = convert(args.source, args.out, max_length=args.max_length, overwrite=args.overwrite)
    print(f"wrote {out} (loads as {check_loadable(out)})", file=sys.stderr)


def _card(args: argparse.Namespace) -> None:
    from barcodemae.hub import write_model_card

    print(f"wrote {write_model_card(args.folder, **_card_kwargs(args))}", file=sys.stderr)


def _push(args: argparse.Namespace) -> None:
    from barcodemae.hub import check_loadable, push_folder, upload_plan

    loads_as = check_loadable(args.folder)
    plan = upload_plan(args.folder)
    for item in plan:
        print(f"{item.size:>12d}  {item.path_in_repo}")
    print(f"{sum(item.size for item in plan):>12d}  total, {len(plan)} files; loads as {loads_as}")
    if not any(item.path_in_repo == "README.md" for item in plan):
        print("warning: no README.md (model card); write one with `barcodemae card FOLDER`", file=sys.stderr)
    if args.dry_run:
        print(f"dry run: nothing uploaded to {args.repo_id}", file=sys.stderr)
        return
    url = push_folder(
        args.folder,
        args.repo_id,
        private=args.private,
        token=args.token,
        endpoint=args.endpoint,
        commit_message=args.commit_message,
    )
    print(f"uploaded {len(plan)} files to {args.repo_id}: {url}", file=sys.stderr)


def _finetune(argv: list[str]) -> int:
    from barcodemae.training import run_finetune

    if not argv or argv[0] in ("-h", "--help"):
        argv = ["--help"]
    try:
        run_finetune(argv)
    except (OSError, ValueError) as error:  # DataError is a ValueError
        print(f"barcodemae finetune: error: {error}", file=sys.stderr)
        return 2
    return 0


# ------------------------------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 2 error in input/output or usage, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["finetune"]:  # Trainer arguments (HfArgumentParser): every TrainingArguments flag works
        return _finetune(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (OSError, ValueError) as error:  # DataError is a ValueError
        print(f"barcodemae: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("barcodemae: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
