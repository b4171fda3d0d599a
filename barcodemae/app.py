"""The identification web page (Gradio, ``pip install 'barcodemae[app]'``): paste or drop barcodes, read the answer
at every rank, see the evidence. Started by ``barcodemae serve`` and by the Hub Space entry ``app.py``.

The page holds no identification logic: a request's input is written to a private work folder and identified by
:func:`barcodemae.identify.identify_file` (``top_k`` 5, the default cut-offs), so the results table is the TSV
``barcodemae identify -o`` writes, row for row, and downloads as that file. For a chosen query the evidence is its
nearest references and a picture: their cosine similarity to the query against the novel-species threshold of the
best neighbour's genus, beside the confidence at every rank against its cut-off.

**Input.** The "Barcodes" box takes FASTA, a table with a header row (tab- or comma-separated) or bare sequences,
one a line (named ``query_1``, ``query_2``, ...); the file drop takes what ``identify`` reads (FASTA, .tsv, .txt,
.csv, optionally .gz). Records are cleaned as everywhere (:mod:`barcodemae.data`); skipped ones are listed with the
results.

**Limits**, so that one request cannot exhaust the memory: the box holds at most :data:`MAX_PASTE_CHARS` characters,
a dropped file at most :data:`MAX_FILE_BYTES` bytes, an input at most :data:`MAX_QUERIES` records, and a request
body over :data:`MAX_REQUEST_BYTES` is refused (413) before it is read. Requests are answered one at a time. Bad
input gets a message on the page, never a traceback.

**Exposure.** The server binds 127.0.0.1 unless told otherwise. No ``allowed_paths`` are given, so Gradio serves
only the files the page itself handles (uploads and the TSVs, in Gradio's cache, deleted after an hour), not the
index folder nor anything else on the disk (leave ``GRADIO_ALLOWED_PATHS`` unset: it would add folders). Gradio's
analytics, MCP server and run history are off.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from barcodemae.assign import COMMIT_RANKS, cutoffs
from barcodemae.data import FASTA_SUFFIXES, TABLE_SUFFIXES, detect_format, iter_raw_records
from barcodemae.embedding import Embedder, KmerBagEmbedder
from barcodemae.identify import identify_file, read_predictions
from barcodemae.reference import ReferenceIndex

MAX_PASTE_CHARS = 2_000_000  # about 3,000 full-length barcodes as FASTA
MAX_FILE_BYTES = 50 * 2**20
MAX_QUERIES = 20_000
MAX_REQUEST_BYTES = MAX_FILE_BYTES + 2**20  # a dropped file and the form around it
TOP_K = 5
PROGRESS_CHUNK = 256  # queries embedded between progress updates
CACHE_SECONDS = 3600  # how long Gradio keeps uploads and TSVs
FILE_TYPES = [*FASTA_SUFFIXES, *TABLE_SUFFIXES, ".gz"]
PASTE_NAME = "the Barcodes box"
AGREEMENT_COLOURS = {"predicted species": "#27ae60", "predicted genus": "#2e86c1", "other": "#aab7b8"}
LOG = logging.getLogger(__name__)
ProgressCallback = Callable[[int, int], None]  # (queries answered, records read)


class InputError(ValueError):
    """Input the page refuses, with the message shown on it."""


@dataclass
class PageAnswer:
    """One request's answer: a message (Markdown), the TSV's columns and rows, and the TSV (``None`` on error)."""

    message: str
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)
    tsv: Path | None = None


class Identifier:
    """Identifies a request's queries against a loaded index with :func:`barcodemae.identify.identify_file`."""

    def __init__(self, index: ReferenceIndex, embedder: Embedder | KmerBagEmbedder) -> None:
        self.index, self.embedder = index, embedder
        self._work = tempfile.TemporaryDirectory(prefix="barcodemae-page-")

    def identify(
        self, text: str | None, upload: str | os.PathLike | None, progress: ProgressCallback | None = None
    ) -> PageAnswer:
        """Identify the pasted ``text`` or the ``upload`` file; bad input gives a message, never an exception.
        ``progress(answered, records)`` hears after every :data:`PROGRESS_CHUNK` queries."""
        try:
            return self._identify(text or "", upload, progress)
        except ValueError as error:  # InputError, DataError and the pipeline's refusals
            return PageAnswer(f"**Nothing identified.** {error}")
        except Exception:  # a bug must not reach the page as a traceback
            LOG.exception("identification failed")
            return PageAnswer("**Nothing identified:** an internal error (the server's log has the details).")

    def _identify(self, text: str, upload: str | os.PathLike | None, progress: ProgressCallback | None) -> PageAnswer:
        folder = self._fresh_folder()
        query, name = query_file(text, upload, folder)
        output = folder / "identified.tsv"
        try:
            records = count_records(query)
            report, summary = identify_file(
                query,
                output,
                self.index,
                self.embedder,
                top_k=TOP_K,
                chunk_size=PROGRESS_CHUNK,
                progress=False,
                on_chunk=running_total(records, progress) if progress is not None else None,
            )
        except (ValueError, OSError) as error:
            raise InputError(str(error).replace(str(query), name)) from error
        if report.n_kept == 0:
            raise InputError(f"No usable barcode in {name}:\n\n```\n{report.summary()}\n```")
        rows = read_predictions(output)
        message = (
            f"**{len(rows)} queries identified** from {name}.\n\n```\n{report.summary()}\n\n{summary.format()}\n```"
        )
        return PageAnswer(message, list(rows[0]), rows, output)

    def _fresh_folder(self) -> Path:
        """An empty work folder: the last request's files are gone (Gradio copied its TSV when it answered)."""
        folder = Path(self._work.name) / "request"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        return folder

    def threshold_of(self, row: dict[str, str]) -> float:
        """The novel-species threshold the query's best similarity was held against (its best neighbour's genus)."""
        return self.index.threshold_for(row.get("neighbor_1_genus", ""))

    def describe(self) -> str:
        """One paragraph about the loaded reference (names only, no server paths)."""
        species = len({name for name in self.index.species if name})
        reference = Path(self.index.reference_file).name or "a saved index"
        text = (
            f"Reference: {len(self.index.ids):,} barcodes of {species:,} species ({reference}); model "
            f"{Path(self.index.model).name}; novel-species threshold {self.index.threshold:.4f}."
        )
        if "warning" in self.index.calibration:
            text += f" Warning: {self.index.calibration['warning']}."
        return text


def query_file(text: str, upload: str | os.PathLike | None, folder: Path) -> tuple[Path, str]:
    """The file to identify and the name to show for it: the ``upload`` as it is, or the pasted ``text`` written
    into ``folder`` (FASTA and tables as they are, bare sequences as FASTA)."""
    if upload and text.strip():
        raise InputError("Both the Barcodes box and a dropped file hold input: clear one of them.")
    if upload:
        return uploaded_file(Path(upload))
    if len(text) >= MAX_PASTE_CHARS:
        raise InputError(
            f"The Barcodes box holds at most {MAX_PASTE_CHARS:,} characters and this input reached the limit (it "
            f"may have been cut): drop it as a file (up to {MAX_FILE_BYTES // 2**20} MB) or run `barcodemae identify`."
        )
    text = text.strip()
    if not text:
        raise InputError("No barcodes: paste FASTA, a table or bare sequences into the Barcodes box, or drop a file.")
    first_line = text.split("\n", 1)[0]
    if text.startswith(">") or "\n>" in text:
        path = folder / "pasted.fasta"
    elif "\t" in first_line or "," in first_line:
        path = folder / ("pasted.tsv" if "\t" in first_line else "pasted.csv")
    else:
        path = folder / "pasted.fasta"
        lines = (line.strip() for line in text.splitlines())
        text = "".join(f">query_{n}\n{line}\n" for n, line in enumerate(filter(None, lines), 1))
    path.write_text(text, encoding="utf-8")
    return path, PASTE_NAME


def running_total(records: int, progress: ProgressCallback) -> Callable[[int], None]:
    """An ``on_chunk`` for :func:`barcodemae.identify.identify_file` that tells ``progress`` the answers so far."""
    answered = 0

    def on_chunk(size: int) -> None:
        nonlocal answered
        answered += size
        progress(answered, records)

    return on_chunk


def uploaded_file(path: Path) -> tuple[Path, str]:
    """A dropped file of a type ``identify`` reads and within :data:`MAX_FILE_BYTES`."""
    name = path.name
    try:
        detect_format(name)
    except ValueError as error:
        raise InputError(str(error)) from error
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InputError(f"{name} is larger than {MAX_FILE_BYTES // 2**20} MB: run `barcodemae identify` on it.")
    return path, name


def count_records(path: Path) -> int:
    """The records of ``path``, refused when there are none or more than :data:`MAX_QUERIES`."""
    count = sum(1 for _ in itertools.islice(iter_raw_records(path), MAX_QUERIES + 1))
    if count > MAX_QUERIES:
        raise InputError(f"More than {MAX_QUERIES:,} records: split the input, or run `barcodemae identify` on it.")
    if count == 0:
        raise InputError("No barcodes found: paste FASTA, a table with a header row or bare sequences.")
    return count


# ------------------------------------------------------------------------------------------- evidence
def neighbours(row: dict[str, str]) -> list[dict[str, str]]:
    """The query's listed nearest references (``neighbor_N_*`` columns), nearest first."""
    found: list[dict[str, str]] = []
    while f"neighbor_{len(found) + 1}_id" in row:
        position = str(len(found) + 1)
        prefix = f"neighbor_{position}_"
        columns = {name[len(prefix) :]: value for name, value in row.items() if name.startswith(prefix)}
        found.append({"neighbour": position, **columns})
    return found


def evidence_figure(row: dict[str, str], threshold: float, min_confidence: dict[str, float] | None = None):
    """Why the answer is what it is: the nearest references' similarity against the novel-species threshold (left),
    the confidence at every rank against its cut-off, the committed rank dark (right). A matplotlib ``Figure``."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.4), layout="constrained")
    similarity, confidence = figure.subplots(1, 2, width_ratios=(3, 2))
    _plot_neighbours(similarity, row, threshold)
    _plot_confidences(confidence, row, cutoffs(min_confidence))
    return figure


def _plot_neighbours(axes, row: dict[str, str], threshold: float) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    found = neighbours(row)
    scores = [float(reference["cosine_similarity"]) for reference in found]
    colours = [_agreement_colour(reference, row) for reference in found]
    names = [f"{r['id']}  {r.get('species') or r.get('genus') or '(no label)'}" for r in found]
    axes.barh(range(len(found)), scores, color=colours)
    axes.set_yticks(range(len(found)), names, fontsize=8)
    axes.invert_yaxis()
    axes.axvline(threshold, color="#c0392b", linestyle="--")
    axes.set_xlim(min([*scores, threshold]) - 0.02, 1.0)
    axes.set_xlabel("cosine similarity to the query")
    axes.set_title(f"{row['query_id']}: nearest references", fontsize=10)
    keys = [Line2D([], [], color="#c0392b", linestyle="--", label=f"novel-species threshold {threshold:.3f}")]
    keys += [Patch(color=colour, label=label) for label, colour in AGREEMENT_COLOURS.items()]
    axes.legend(handles=keys, loc="best", fontsize=7)


def _agreement_colour(reference: dict[str, str], row: dict[str, str]) -> str:
    """:data:`AGREEMENT_COLOURS` of a reference: of the predicted species, else of the predicted genus, else other."""
    for rank in ("species", "genus"):
        if reference.get(rank) and reference.get(rank) == row.get(f"predicted_{rank}"):
            return AGREEMENT_COLOURS[f"predicted {rank}"]
    return AGREEMENT_COLOURS["other"]


def _plot_confidences(axes, row: dict[str, str], cut: dict[str, float]) -> None:
    values = [float(row[f"{rank}_confidence"]) for rank in COMMIT_RANKS]
    committed = row["assigned_rank"]
    depth = COMMIT_RANKS.index(committed) if committed else -1
    colours = ["#1f618d" if position <= depth else "#d6eaf8" for position in range(len(COMMIT_RANKS))]
    positions = range(len(COMMIT_RANKS))
    axes.bar(positions, values, color=colours)
    limits = [cut.get(rank, cut["order"]) for rank in COMMIT_RANKS]
    axes.scatter(positions, limits, marker="_", s=900, linewidths=3, color="#f39c12", label="cut-off", zorder=3)
    names = [f"{rank}\n{row.get(f'predicted_{rank}', '')}".replace(" ", "\n", 1) for rank in COMMIT_RANKS]
    axes.set_xticks(positions, names, fontsize=7)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("confidence")
    axes.set_title(f"commits to: {committed or 'no rank'} ({row['outcome']})", fontsize=10)
    axes.legend(loc="best", fontsize=8)


# ------------------------------------------------------------------------------------------- loading, page
def require_gradio() -> None:
    """Refuse early, with the install command, where the ``app`` extra is missing."""
    if importlib.util.find_spec("gradio") is None:
        raise ValueError("the web page needs Gradio: pip install 'barcodemae[app]'")


def load_identifier(
    *, reference: str | os.PathLike | None = None, index: str | os.PathLike | None = None, model: str | None = None
) -> Identifier:
    """An :class:`Identifier` on a saved ``index`` folder, or on a ``reference`` file embedded now. The model is
    ``model``, else the index's model folder where it exists, else the shipped encoder (or ``$BARCODEMAE_MODEL``)."""
    from barcodemae.embedding import check_input, default_model_path, load_embedder
    from barcodemae.identify import check_model
    from barcodemae.reference import build_index

    if (reference is None) == (index is None):
        raise ValueError("give a reference file or an index folder")
    loaded = ReferenceIndex.load(index) if index is not None else None
    index_model = loaded.model if loaded is not None and Path(loaded.model).is_dir() else None
    model_path = model or index_model or default_model_path()
    if loaded is None:
        check_input(reference)
    embedder = load_embedder(model_path)  # as `identify` loads it
    if loaded is None:
        loaded, _ = build_index(reference, embedder, str(Path(model_path).resolve()), progress=False)
    check_model(loaded, embedder)
    return Identifier(loaded, embedder)


class BodyLimit:
    """ASGI middleware: refuses a request body over ``max_bytes`` (413) or of undeclared length (411) unread."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            length = headers.get(b"content-length", b"")
            status = None
            if b"transfer-encoding" in headers and not length:
                status = 411
            elif length.isdigit() and int(length) > self.max_bytes:
                status = 413
            if status is not None:
                from starlette.responses import PlainTextResponse

                reply = f"request bodies are limited to {self.max_bytes:,} bytes, with a declared length"
                await PlainTextResponse(reply, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_page(identifier: Identifier):
    """The Gradio ``Blocks`` of the page, wired to ``identifier``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr
    import pandas as pd

    def on_identify(text: str, upload: str | None, progress=gr.Progress()) -> tuple:  # noqa: B008
        answer = identifier.identify(text, upload, lambda done, total: progress((done, total), unit="queries"))
        choices = [(row["query_id"], position) for position, row in enumerate(answer.rows)]
        return (
            answer.message,
            pd.DataFrame(answer.rows, columns=answer.columns),
            gr.update(value=answer.tsv, visible=answer.tsv is not None),
            gr.update(choices=choices, value=0 if choices else None),
            answer.rows,
        )

    def on_query(rows: list[dict[str, str]], position: int | None) -> tuple:
        if position is None or not 0 <= position < len(rows):
            return pd.DataFrame(), None
        row = rows[position]
        return pd.DataFrame(neighbours(row)), evidence_figure(row, identifier.threshold_of(row))

    cache = (CACHE_SECONDS, CACHE_SECONDS)  # how often and after how long Gradio's cached files are deleted
    with gr.Blocks(title="BarcodeMAE identification", analytics_enabled=False, delete_cache=cache) as page:
        gr.Markdown(f"## Identify DNA barcodes with BarcodeMAE\n{identifier.describe()}")
        with gr.Row(equal_height=True):
            text = gr.Textbox(
                label="Barcodes",
                lines=7,
                max_lines=7,
                max_length=MAX_PASTE_CHARS,
                placeholder="FASTA (>id, then the sequence), a table with a header row, or bare sequences one a line",
                elem_id="barcodes",
                scale=3,
            )
            upload = gr.File(
                label="…or drop a file (FASTA, .tsv, .csv; .gz)", file_types=FILE_TYPES, elem_id="upload", scale=2
            )
        button = gr.Button("Identify", variant="primary", elem_id="identify")
        status = gr.Markdown(elem_id="status")
        table = gr.Dataframe(
            label="Results (the TSV of barcodemae identify -o)",
            interactive=False,
            pinned_columns=1,
            max_height=330,
            elem_id="results",
        )
        download = gr.DownloadButton("Download the TSV", visible=False, elem_id="download")
        rows = gr.State([])
        query = gr.Dropdown(label="Evidence for the query", choices=[], elem_id="query")
        picture = gr.Plot(label="Why this answer", elem_id="picture")
        evidence = gr.Dataframe(label="Nearest references", interactive=False, elem_id="evidence")
        outputs = [status, table, download, query, rows]
        # one request at a time: the work folder holds one request's files, and the memory one request's queries
        button.click(on_identify, [text, upload], outputs, concurrency_limit=1, api_name="identify").then(
            on_query, [rows, query], [evidence, picture], api_visibility="private"
        )
        query.input(on_query, [rows, query], [evidence, picture], api_visibility="private")
    return page


def launch(identifier: Identifier, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True) -> Any:
    """Serve the page on ``host:port`` (``block=False``: return the running ``Blocks`` at once)."""
    from starlette.middleware import Middleware

    page = build_page(identifier)
    page.launch(
        server_name=host,
        server_port=port,
        max_file_size=MAX_FILE_BYTES,
        app_kwargs={"middleware": [Middleware(BodyLimit, max_bytes=MAX_REQUEST_BYTES)]},
        ssr_mode=False,
        mcp_server=False,
        run_history=False,  # no queries kept in the browser's storage
        prevent_thread_lock=not block,
        quiet=True,
    )
    return page


__all__ = ["Identifier", "PageAnswer", "build_page", "evidence_figure", "launch", "load_identifier", "neighbours"]
