"""Atomic, streaming output files: embeddings (``.npy`` / ``.parquet`` / ``.safetensors``) and text tables.

Every file is written to a temporary file in the destination folder (``.NAME.XXXX.tmp``) and renamed onto its
final name only when everything was written; on any error the temporary files are removed and nothing is left at
the destination (an existing file there is left untouched).

Embedding formats, chosen by the suffix of the output path (rows always in input order, float32):

* ``.npy``: an ``(N, hidden)`` array, plus ``NAME.ids.txt`` next to it (``OUT.npy`` → ``OUT.ids.txt``) with one
  record id per line in the same order. Rows are streamed into the file behind a fixed-size header that is
  rewritten with the final row count at the end, so nothing has to fit in memory.
* ``.safetensors``: one tensor ``"embeddings"`` ``(N, hidden)`` float32, metadata ``{"format":
  "barcodemae-embeddings", "ids_file": "NAME.ids.txt", "rows": "N"}``, and the ids in ``NAME.ids.txt`` as for
  ``.npy`` (a million ids would not fit the 100 MB safetensors header). Streamed the same way.
* ``.parquet``: columns ``id`` (string) and ``embedding`` (fixed-size list of ``hidden`` float32), one row per
  record, written one row group per chunk.

Ids must not contain a newline (they could not be written one per line); such an id raises ``ValueError``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

EMBEDDING_SUFFIXES = (".npy", ".parquet", ".safetensors")
_NPY_HEADER_BYTES = 128  # magic (6) + version (2) + length (2) + padded dict: room for any (N, hidden) shape
_SAFETENSORS_HEADER_BYTES = 256  # reserved JSON header (space-padded, as the format allows)


def ids_path(path: str | os.PathLike) -> Path:
    """``OUT.npy`` → ``OUT.ids.txt`` (the id list written next to ``.npy`` and ``.safetensors`` outputs)."""
    path = Path(path)
    return path.with_name(path.stem + ".ids.txt")


def check_output_path(path: str | os.PathLike, suffixes: Sequence[str] | None = None) -> Path:
    """Refuse early (before any work) an output whose suffix is not supported or whose folder is missing."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ValueError(
            f"{path}: unknown output type {path.suffix or '(no suffix)'!r}; use one of {', '.join(suffixes)}"
        )
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{path}: output folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{path}: output folder {str(folder)!r} is not writable")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, expected a file name")
    return path


def _temporary(path: Path) -> Path:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    os.chmod(temporary, 0o644)
    return Path(temporary)


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield one temporary path per destination; rename them all on success, remove them all on error."""
    targets = [Path(path) for path in paths]
    temporaries: list[Path] = []
    try:
        for target in targets:
            temporaries.append(_temporary(target))
        yield temporaries
        for temporary, target in zip(temporaries, targets):
            os.replace(temporary, target)
    except BaseException:
        for temporary in temporaries:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        raise


@contextlib.contextmanager
def atomic_text(path: str | os.PathLike) -> Iterator:
    """Open a text file for writing (UTF-8, ``\\n`` line ends) that appears at ``path`` only when complete."""
    with atomic_paths(path) as (temporary,), open(temporary, "w", encoding="utf-8", newline="") as handle:
        yield handle


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, replace: Callable[[Path], bool] = lambda old: False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path`` that becomes ``path`` on success (removed on error).

    An existing ``path`` is replaced only when ``replace(path)`` says so (e.g. it is an earlier output of the same
    kind); otherwise it is an error, raised before anything is written.
    """
    path = Path(path)
    if path.exists() and not (path.is_dir() and replace(path)):
        raise FileExistsError(f"{path} already exists; remove it or choose another name")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: folder {str(path.parent)!r} does not exist")
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield temporary
        os.chmod(temporary, 0o755)
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / path.name)
            os.replace(temporary, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------- embeddings
class EmbeddingWriter:
    """Append ``(ids, (n, hidden) array)`` chunks; :meth:`close` finishes the file. Use :func:`open_embeddings`."""

    def __init__(self, temporaries: list[Path], hidden_size: int) -> None:
        self.hidden_size = hidden_size
        self.rows = 0
        self.temporaries = temporaries

    def write(self, ids: Sequence[str], embeddings: np.ndarray) -> None:
        embeddings = np.ascontiguousarray(embeddings, dtype="<f4")
        if embeddings.shape != (len(ids), self.hidden_size):
            raise ValueError(f"expected a ({len(ids)}, {self.hidden_size}) array, got {embeddings.shape}")
        self._write(list(ids), embeddings)
        self.rows += len(ids)

    def _write(self, ids: list[str], embeddings: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _IdsFile:
    def __init__(self, path: Path) -> None:
        self.handle = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed by close())

    def write(self, ids: list[str]) -> None:
        for record_id in ids:
            if "\n" in record_id or "\r" in record_id:
                raise ValueError(f"record id {record_id!r} holds a line break; it cannot be written to an ids file")
        self.handle.write("".join(f"{record_id}\n" for record_id in ids))

    def close(self) -> None:
        self.handle.close()


class _RawRowsWriter(EmbeddingWriter):
    """Float32 rows streamed behind a reserved header that :meth:`_header` fills in at the end."""

    header_bytes = 0

    def __init__(self, temporaries: list[Path], hidden_size: int) -> None:
        super().__init__(temporaries, hidden_size)
        self.data: BinaryIO = open(temporaries[0], "wb")  # noqa: SIM115 (closed by close())
        self.data.write(b"\0" * self.header_bytes)
        self.ids = _IdsFile(temporaries[1])

    def _write(self, ids: list[str], embeddings: np.ndarray) -> None:
        self.ids.write(ids)
        self.data.write(embeddings.tobytes())

    def close(self) -> None:
        self.ids.close()
        self.data.seek(0)
        self.data.write(self._header())
        self.data.close()

    def _header(self) -> bytes:
        raise NotImplementedError


class _NpyWriter(_RawRowsWriter):
    header_bytes = _NPY_HEADER_BYTES

    def _header(self) -> bytes:
        text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({self.rows}, {self.hidden_size}), }}"
        text = text.ljust(self.header_bytes - 10 - 1) + "\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


class _SafetensorsWriter(_RawRowsWriter):
    header_bytes = _SAFETENSORS_HEADER_BYTES

    def __init__(self, temporaries: list[Path], hidden_size: int, ids_name: str) -> None:
        super().__init__(temporaries, hidden_size)
        self.ids_name = ids_name

    def _header(self) -> bytes:
        size = self.rows * self.hidden_size * 4
        header = {
            "__metadata__": {"format": "barcodemae-embeddings", "ids_file": self.ids_name, "rows": str(self.rows)},
            "embeddings": {"dtype": "F32", "shape": [self.rows, self.hidden_size], "data_offsets": [0, size]},
        }
        text = json.dumps(header, separators=(",", ":")).encode()
        length = self.header_bytes - 8
        if len(text) > length:  # only with an absurdly long ids file name
            raise ValueError(f"safetensors header too long for the reserved {length} bytes")
        return struct.pack("<Q", length) + text.ljust(length, b" ")


class _ParquetWriter(EmbeddingWriter):
    def __init__(self, temporaries: list[Path], hidden_size: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        super().__init__(temporaries, hidden_size)
        self.pa = pa
        self.schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), hidden_size))])
        self.writer = pq.ParquetWriter(str(temporaries[0]), self.schema)

    def _write(self, ids: list[str], embeddings: np.ndarray) -> None:
        pa = self.pa
        values = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()), self.hidden_size)
        self.writer.write_table(pa.Table.from_arrays([pa.array(ids, pa.string()), values], schema=self.schema))

    def close(self) -> None:
        self.writer.close()


def embedding_outputs(path: str | os.PathLike) -> list[Path]:
    """The files an embedding output writes: the file itself, plus the ids file for ``.npy``/``.safetensors``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EMBEDDING_SUFFIXES:
        raise ValueError(
            f"{path}: unknown output type {suffix or '(no suffix)'!r}; use {', '.join(EMBEDDING_SUFFIXES)}"
        )
    return [path] if suffix == ".parquet" else [path, ids_path(path)]


@contextlib.contextmanager
def open_embeddings(path: str | os.PathLike, hidden_size: int) -> Iterator[EmbeddingWriter]:
    """Stream embeddings into ``path`` (format by suffix, see the module docstring), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    outputs = embedding_outputs(path)
    with atomic_paths(*outputs) as temporaries:
        if suffix == ".npy":
            writer: EmbeddingWriter = _NpyWriter(temporaries, hidden_size)
        elif suffix == ".safetensors":
            writer = _SafetensorsWriter(temporaries, hidden_size, ids_path(path).name)
        else:
            writer = _ParquetWriter(temporaries, hidden_size)
        try:
            yield writer
        finally:
            writer.close()


def read_embeddings(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read back ``(ids, embeddings)`` written by :func:`open_embeddings` (whole file in memory)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        column = table.column("embedding").combine_chunks()
        hidden = column.type.list_size
        array = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, hidden) if len(table) else None
        embeddings = array if array is not None else np.zeros((0, hidden), np.float32)
        return table.column("id").to_pylist(), embeddings.astype(np.float32, copy=False)
    if suffix == ".npy":
        embeddings = np.load(path)
    elif suffix == ".safetensors":
        from safetensors.numpy import load_file

        embeddings = load_file(str(path))["embeddings"]
    else:
        raise ValueError(f"{path}: unknown embedding file type {suffix!r}")
    ids = ids_path(path).read_text(encoding="utf-8").splitlines()
    return ids, embeddings


_SAFETENSORS_DTYPES = {"F32": "<f4", "I64": "<i8", "I32": "<i4"}


def safetensors_header(path: str | os.PathLike) -> tuple[int, dict]:
    """``(header length, header)`` of a safetensors file: the JSON header names each tensor's dtype, shape and
    byte range, and ``"__metadata__"`` holds the file's string metadata."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        return length, json.loads(file.read(length))


def map_safetensors(path: str | os.PathLike, name: str, dtype: str, ndim: int) -> np.ndarray:
    """The tensor ``name`` of a safetensors file as a read-only memory map (the format: an 8-byte little-endian
    header length, a JSON header with each tensor's dtype, shape and byte range, then the data). ValueError naming
    the file unless it holds a non-empty ``dtype`` (``"F32"``, ``"I64"`` or ``"I32"``) tensor of ``ndim`` dimensions."""
    length, header = safetensors_header(path)
    entry = header.get(name, {})
    shape = tuple(entry.get("shape", ()))
    start, end = entry.get("data_offsets", (0, 0))
    numpy_dtype = np.dtype(_SAFETENSORS_DTYPES[dtype])
    if entry.get("dtype") != dtype or len(shape) != ndim or end - start != numpy_dtype.itemsize * math.prod(shape):
        raise ValueError(f"{path}: expected a {ndim}-d {dtype} tensor {name!r}, found {entry}")
    if not shape[0]:
        raise ValueError(f"{path}: the tensor {name!r} is empty")
    return np.memmap(path, dtype=numpy_dtype, mode="r", offset=8 + length + start, shape=shape)


__all__ = [
    "EMBEDDING_SUFFIXES",
    "EmbeddingWriter",
    "atomic_folder",
    "atomic_paths",
    "atomic_text",
    "check_output_path",
    "embedding_outputs",
    "ids_path",
    "map_safetensors",
    "safetensors_header",
    "open_embeddings",
    "read_embeddings",
]
