"""The unit store: for each unit id, its record id, source, part, title and embedded text.

Stored as ``units.arrow``, an uncompressed Arrow IPC file (no pickle) with the columns of
:data:`UNITS_SCHEMA`. Unit ids are row numbers, and units are ordered by source so that each
source is one contiguous id range. :meth:`UnitStore.open` memory-maps the file: loading reads the
footer and the small ``source`` and ``part`` columns, and a hit's record id, title and text are
paged in only when asked for, so a 10M-unit index never holds every text as a Python object.
"""

from __future__ import annotations

import bisect
import logging
import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, overload

import numpy as np
import pyarrow as pa

from retriever.errors import CorruptIndexError
from retriever.linearize import Unit
from retriever.records import Source

logger = logging.getLogger(__name__)

UNITS_NAME = "units.arrow"
SOURCE_ORDER: tuple[Source, ...] = (Source.TEXT, Source.TABLE, Source.KB, Source.INFOBOX)
SOURCE_CODE: dict[Source, int] = {s: i for i, s in enumerate(SOURCE_ORDER)}

UNITS_SCHEMA = pa.schema([
    pa.field("record_id", pa.string(), nullable=False),
    pa.field("source", pa.uint8(), nullable=False),  # SOURCE_CODE of the unit's source
    pa.field("part", pa.int32(), nullable=False),
    pa.field("title", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
])
_STRINGS = (pa.string(), pa.large_string())
# Types accepted when opening; large_string too, for stores whose batches pass 2 GiB of text.
_ACCEPTED_TYPES: dict[str, tuple[pa.DataType, ...]] = {
    "record_id": _STRINGS, "source": (pa.uint8(),), "part": (pa.int32(),), "title": _STRINGS, "text": _STRINGS,
}
_BATCH_ROWS = 65_536  # record-batch size of UnitStore.from_units / write
_ITER_ROWS = 8_192  # rows converted to Python objects at a time when iterating a column


def _batches(units: Sequence[Unit]) -> Iterator[pa.RecordBatch]:
    """One record batch of ``units``, split in halves only where a string column passes 2 GiB."""
    if not units:
        return
    strings = [pa.array([u.record_id for u in units], type=pa.string()),
               pa.array([u.title for u in units], type=pa.string()),
               pa.array([u.text for u in units], type=pa.string())]
    if any(isinstance(a, pa.ChunkedArray) for a in strings) and len(units) > 1:  # overflowed int32 offsets
        half = len(units) // 2
        yield from _batches(units[:half])
        yield from _batches(units[half:])
        return
    sources = np.fromiter((SOURCE_CODE[u.source] for u in units), dtype=np.uint8, count=len(units))
    parts = np.fromiter((u.part for u in units), dtype=np.int32, count=len(units))
    yield pa.RecordBatch.from_arrays([strings[0], pa.array(sources), pa.array(parts), strings[1], strings[2]],
                                     schema=UNITS_SCHEMA)


class UnitStoreWriter:
    """Streams units into a ``units.arrow`` file, one record batch per :meth:`write`.

    The Arrow IPC file format keeps its schema and batch index in a footer written by
    :meth:`close`, so a file whose writer crashed or raised never opens (:meth:`UnitStore.open`
    raises :class:`CorruptIndexError`). Leaving a ``with`` block by an exception closes the file
    without its footer for the same reason. Writes go to ``path`` directly: write into a staging
    directory and rename.

    Args:
        path: the file to create (replaced if it exists).

    Raises:
        OSError: the file cannot be created.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._count = 0
        self._sink = pa.OSFile(str(self.path), "wb")
        try:
            self._writer = pa.ipc.new_file(self._sink, UNITS_SCHEMA)
        except BaseException:
            self._sink.close()
            raise
        self._closed = False

    @property
    def count(self) -> int:
        """Units written so far."""
        return self._count

    def write(self, units: Sequence[Unit]) -> None:
        """Append ``units`` (in unit-id order) as one record batch; holds nothing after it returns.

        Raises:
            ValueError: the writer is closed.
        """
        for batch in _batches(units):
            self.write_batch(batch)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Append a record batch that already has the columns of :data:`UNITS_SCHEMA`.

        Raises:
            ValueError: the writer is closed, or the batch has other columns or types.
        """
        if self._closed:
            raise ValueError(f"{self.path}: the unit store writer is closed")
        if not batch.schema.equals(UNITS_SCHEMA):
            batch = pa.RecordBatch.from_arrays([batch.column(f.name).cast(f.type) for f in UNITS_SCHEMA],
                                               schema=UNITS_SCHEMA)
        self._writer.write_batch(batch)
        self._count += batch.num_rows

    def close(self) -> None:
        """Write the footer and close the file; the store is complete only after this."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
        finally:
            self._sink.close()

    def abort(self) -> None:
        """Close the file without its footer, so it can never be opened as a store."""
        if not self._closed:
            self._closed = True
            self._sink.close()

    def __enter__(self) -> UnitStoreWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _FileSpan:
    """The open ``units.arrow`` file and the address its memory map starts at, for positional reads."""

    def __init__(self, handle: Any, base: int, size: int) -> None:
        self.handle = handle
        self.base = base
        self.size = size

    def offset_of(self, buffer: pa.Buffer) -> int | None:
        """The file offset of ``buffer`` when it lies in the map, else None."""
        start = buffer.address - self.base
        return start if 0 <= start and start + buffer.size <= self.size else None

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.handle.fileno(), size, offset)


class StringColumn(Sequence[str]):
    """A read-only, lazy view of one string column: rows become Python strings only when read.

    ``column[i]`` touches row ``i`` only. In a store opened from a file, its two offsets and then
    its bytes come from two positional reads (``os.pread``), never through the memory map: a page
    faulted in a file mapping brings its neighbours with it, whatever ``madvise`` says (64 KiB of
    "fault-around"; 2 MiB per record batch touched on the 10M-unit store with the file in the page
    cache, measured, which looks like whole large folios), so reading hits through the map made a
    long-running server's resident set grow towards the whole file. Iteration and slices convert a
    bounded slice of rows at a time through the map (builds).
    """

    def __init__(self, column: pa.ChunkedArray, file: _FileSpan | None = None) -> None:
        self._column = column
        self._file = file
        self._starts: list[int] = []
        # per chunk: the file offsets of its first offset and of its data, and the offsets' width
        self._chunks: list[tuple[int, int, int]] = []
        if file is None:
            return
        start = 0
        for chunk in column.chunks:
            _, offsets, data = chunk.buffers()
            at = file.offset_of(data) if data is not None else 0
            first = file.offset_of(offsets) if offsets is not None else None
            if first is None or at is None:
                self._chunks = []  # not every buffer is in the file: read through arrow
                return
            width = 8 if pa.types.is_large_string(chunk.type) else 4
            self._starts.append(start)
            self._chunks.append((first + chunk.offset * width, at, width))
            start += len(chunk)

    def __len__(self) -> int:
        return len(self._column)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return list(self._column.slice(start, max(stop - start, 0)).to_pylist())
            return [self[i] for i in range(start, stop, step)]
        if not self._chunks or self._file is None:
            value: str = self._column[index].as_py()  # IndexError when out of range, as for a list
            return value
        n = len(self)
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"unit {index} out of range for {n} units")
        k = bisect.bisect_right(self._starts, i) - 1
        first, at, width = self._chunks[k]
        row = i - self._starts[k]
        begin, end = struct.unpack("<qq" if width == 8 else "<ii", self._file.read(first + row * width, 2 * width))
        return self._file.read(at + begin, end - begin).decode("utf-8") if end > begin else ""

    def __iter__(self) -> Iterator[str]:
        for chunk in self._column.chunks:
            for start in range(0, len(chunk), _ITER_ROWS):
                yield from chunk.slice(start, _ITER_ROWS).to_pylist()


def _numpy(column: pa.ChunkedArray, dtype: type[np.generic]) -> np.ndarray:
    """A read-only numpy view of a null-free numeric column (a copy only when it has several chunks)."""
    chunks = [c.to_numpy(zero_copy_only=True) for c in column.chunks]
    if len(chunks) == 1:
        return chunks[0]
    out = np.concatenate(chunks) if chunks else np.empty(0, dtype=dtype)
    out.flags.writeable = False
    return out


class UnitStore:
    """Units by id, over an Arrow table (memory-mapped when opened from a file).

    Attributes:
        sources: ``[n]`` uint8, the SOURCE_CODE of each unit (read-only).
        parts: ``[n]`` int32, each unit's part (read-only).
        record_ids, titles, texts: lazy read-only sequences of the string columns.
    """

    def __init__(self, table: pa.Table, file: _FileSpan | None = None, mapped: Any = None) -> None:
        """Wrap a table with the columns of :data:`UNITS_SCHEMA`; use :meth:`open` or :meth:`from_units`."""
        self._table = table
        self._file = file  # the open file whose map the table's buffers point into, for positional reads
        self._mapped = mapped  # that memory map, kept open with the buffers
        self.sources: np.ndarray = _numpy(table.column("source"), np.uint8)
        self.parts: np.ndarray = _numpy(table.column("part"), np.int32)
        self.record_ids = StringColumn(table.column("record_id"), file)
        self.titles = StringColumn(table.column("title"), file)
        self.texts = StringColumn(table.column("text"), file)

    def __len__(self) -> int:
        return int(self._table.num_rows)

    @classmethod
    def from_units(cls, units: Sequence[Unit]) -> UnitStore:
        """An in-memory store of ``units`` (unit id = position)."""
        batches = [b for start in range(0, len(units), _BATCH_ROWS)
                   for b in _batches(units[start:start + _BATCH_ROWS])]
        return cls(pa.Table.from_batches(batches, schema=UNITS_SCHEMA))

    @classmethod
    def open(cls, path: Path, expected: int) -> UnitStore:
        """Memory-map a ``units.arrow`` file; only the pages that are read become resident.

        The numeric columns are read through the map, a hit's strings by positional reads of the
        open file (:class:`StringColumn`).

        Args:
            path: the file.
            expected: the number of units the manifest lists.

        Returns:
            The store, whose string columns stay on disk until read.

        Raises:
            CorruptIndexError: the file is missing or not a complete Arrow IPC file, has other columns or
                types, nulls, another number of units than ``expected``, or unknown source codes.
        """
        handle = None
        try:
            handle = open(path, "rb")  # kept open with the store, for positional reads
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)  # ValueError when empty
            buffer = pa.py_buffer(mapped)
            table = pa.ipc.open_file(pa.BufferReader(buffer)).read_all()  # zero-copy: slices of the map
            table.validate()  # buffer sizes only; a full check would page in every text
        except (pa.ArrowException, OSError, ValueError) as exc:
            if handle is not None:
                handle.close()
            raise CorruptIndexError(f"{path}: not a complete Arrow IPC unit store ({exc})") from exc
        try:
            store = cls._checked(path, table, expected, _FileSpan(handle, buffer.address, buffer.size), mapped)
        except BaseException:
            handle.close()
            raise
        # Reading the table and checking it faulted pages of every record batch into this process
        # (whole folios of a file in the page cache: 4.1 GB of a 5.1 GB, 10M-unit store, measured);
        # let them go. The numeric columns are copies when there are several batches, and hits are
        # read by positional reads, so a server maps nothing more of the file while it serves.
        if hasattr(mmap, "MADV_DONTNEED"):
            mapped.madvise(mmap.MADV_DONTNEED)
        logger.debug("memory-mapped %d units from %s", len(store), path)
        return store

    @classmethod
    def _checked(cls, path: Path, table: pa.Table, expected: int, file: _FileSpan, mapped: Any) -> UnitStore:
        """The store over ``table`` once its columns, types, nulls, length and source codes are checked."""
        names = [f.name for f in table.schema]
        if names != UNITS_SCHEMA.names:
            raise CorruptIndexError(f"{path}: columns {names}, expected {UNITS_SCHEMA.names}")
        for field in table.schema:
            if field.type not in _ACCEPTED_TYPES[field.name]:
                raise CorruptIndexError(f"{path}: column '{field.name}' has type {field.type}, expected "
                                        f"{' or '.join(str(t) for t in _ACCEPTED_TYPES[field.name])}")
            if table.column(field.name).null_count:
                raise CorruptIndexError(f"{path}: column '{field.name}' has null values")
        if table.num_rows != expected:
            raise CorruptIndexError(f"{path}: {table.num_rows} units, manifest says {expected}")
        store = cls(table, file, mapped)
        if len(store) and int(store.sources.max()) >= len(SOURCE_ORDER):
            bad = int(np.flatnonzero(store.sources >= len(SOURCE_ORDER))[0])
            raise CorruptIndexError(f"{path}: column 'source' of unit {bad} is {int(store.sources[bad])}, expected "
                                    f"0-{len(SOURCE_ORDER) - 1} ({', '.join(s.value for s in SOURCE_ORDER)})")
        return store

    def write(self, path: Path) -> None:
        """Write the store to ``path`` through :class:`UnitStoreWriter`.

        The file is written beside ``path`` and renamed over it, so ``path`` may be the file this
        store is mapped from.

        Raises:
            OSError: the file cannot be written.
        """
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with UnitStoreWriter(tmp) as writer:
                for batch in self.batches():
                    writer.write_batch(batch)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def batches(self, rows: int = _BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """The store's rows in unit-id order, as record batches of at most ``rows`` (zero-copy)."""
        yield from self._table.to_batches(max_chunksize=rows)

    def unit(self, i: int) -> Unit:
        return Unit(self.record_id(i), self.source_of(i), int(self.parts[i]), self.title(i), self.text(i))

    def source_of(self, i: int) -> Source:
        return SOURCE_ORDER[int(self.sources[i])]

    def record_id(self, i: int) -> str:
        return self.record_ids[i]

    def title(self, i: int) -> str:
        return self.titles[i]

    def text(self, i: int) -> str:
        return self.texts[i]
