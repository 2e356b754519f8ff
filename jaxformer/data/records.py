"""Record files as data sources: one document per row's text field.

    jsonl:<file|glob|dir>:<field>      JSON Lines (a dir: every *.jsonl below it); blank lines are skipped
    parquet:<file|glob|dir>:<field>    Parquet (a dir: every *.parquet below it); needs pyarrow (the `parquet`
                                       extra)

Files are read in sorted path order and rows in file order; a row whose field is null or empty is no document.
The identity hashes the files' bytes and the field name, so the token cache, batching and exact resume work as
for `text:` sources. The first row of each file is checked up front, so a misspelt field fails before any
tokenizing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from jaxformer.data.documents import Source, resolve_text_files
from jaxformer.errors import UserError

FORMATS = ("jsonl", "parquet")


def record_source(kind: str, rest: str, *, spec: str) -> Source:
    pattern, _, field = rest.rpartition(":")
    if not pattern or not field:
        raise UserError(f"data.source={spec} names no field: write {kind}:<file|glob|dir>:<field>, e.g. "
                        f"{kind}:corpus.{kind}:text.")
    files = resolve_text_files(pattern, spec=spec, suffix=f".{kind}", form=f"{kind}:<file|glob|dir>:<field>")
    rows = _jsonl_rows if kind == "jsonl" else _parquet_rows
    for f in files:
        _check_field(f, field, rows, spec)
    digest = hashlib.sha256(f"{kind}-records-v1\0{field}\0".encode())
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                digest.update(block)
                total += len(block)
        digest.update(b"\0file-end\0%d\0" % f.stat().st_size)

    def documents() -> Iterator[str]:
        for f in files:
            for line, row in rows(f, field, spec):
                text = row.get(field) if isinstance(row, dict) else None
                if text is None or text == "":
                    continue
                if not isinstance(text, str):
                    raise UserError(f"Row {line} of {f} (data.source={spec}) has a {type(text).__name__} in field "
                                    f"{field!r}, not text: name a text field.")
                yield text

    return Source(spec=spec, identity=digest.hexdigest()[:32], documents=documents, n_chars=total)


def _check_field(path: Path, field: str, rows: Callable, spec: str) -> None:
    for _, row in rows(path, field, spec):
        if not isinstance(row, dict) or field not in row:
            keys = ", ".join(sorted(row)[:8]) if isinstance(row, dict) else type(row).__name__
            raise UserError(f"The first row of {path} (data.source={spec}) has no field {field!r} (it has: {keys}): "
                            f"name the field that holds the text.")
        return


def _jsonl_rows(path: Path, field: str, spec: str) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except ValueError:
                raise UserError(f"Line {number} of {path} (data.source={spec}) is not JSON: a .jsonl file holds one "
                                f"JSON object per line.") from None


def _parquet_rows(path: Path, field: str, spec: str) -> Iterator[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"data.source={spec} is Parquet, which needs pyarrow: pip install 'jaxformer[parquet]'.") \
            from None
    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
        raise UserError(f"{path} (data.source={spec}) is not a readable Parquet file ({type(err).__name__}).") \
            from None
    names = table.schema_arrow.names
    if field not in names:
        yield 1, {name: None for name in names}  # _check_field names the columns there are
        return
    number = 0
    for batch in table.iter_batches(columns=[field], batch_size=4096):
        for value in batch.column(0).to_pylist():
            number += 1
            yield number, {field: value}
