"""Data sources: turn a `data.source` string into an ordered, re-readable stream of documents.

    builtin                          the interpreter's bundled documentation (pydoc_data): one document per topic,
                                     sorted by topic name; exists offline on any Python
    text:<file|glob|dir>             local UTF-8 text (latin-1 fallback); a dir means every *.txt under it,
                                     recursively; files are sorted by path and each FILE is one document;
                                     `@data/<path>` is <path> under the data root ($JAXFORMER_DATA, see root.py);
                                     files with NUL bytes (binary) and corpora of only whitespace are refused
    tfds:<name>[/config][:split]     a TensorFlow Datasets catalog dataset (needs the `tf` extra to prepare)
    tfds:<path>[:split]              a local file/glob/dir prepared by jaxformer's own TFDS builder into
                                     array_record and read back with tfds.data_source (no TensorFlow)
    jsonl:<file|glob|dir>:<field>    JSON Lines / Parquet rows, one document per row's text field (records.py;
    parquet:<file|glob|dir>:<field>  Parquet needs pyarrow, the `parquet` extra)

Why one document per file (not per blank-line paragraph): it keeps a single-file corpus byte-identical to the
file, so tiny shakespeare's 90/10 split is exactly nanoGPT's. Put documents in separate files (or use TFDS)
when document boundaries matter for packing.

Every source has an `identity`: a hash of its content (local text) or of its prepared TFDS metadata, which
keys the token cache together with the tokenizer's fingerprint.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from jaxformer.data.documents import Source, read_text_file, resolve_text_files
from jaxformer.data.records import FORMATS, record_source
from jaxformer.data.root import PREFIX
from jaxformer.errors import UserError


def open_source(spec: str, *, cache_root: Path) -> Source:
    """Parse `spec` and return its Source; raise UserError with one sentence when it cannot be read."""
    spec = spec.strip()
    if spec == "builtin":
        return builtin_source()
    kind, sep, rest = spec.partition(":")
    if sep and kind == "text":
        return text_source(rest, spec=spec)
    if sep and kind == "tfds":
        return tfds_source(rest, spec=spec, cache_root=cache_root)
    if sep and kind in FORMATS:
        return record_source(kind, rest, spec=spec)
    raise UserError(f"Unknown data.source '{spec}': use builtin, text:<file|glob|dir>, "
                    f"tfds:<name>[/config][:split], jsonl:<file>:<field> or parquet:<file>:<field>.")


# ---------------------------------------------------------------------------------------------- builtin

def builtin_documents() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics) if topics[key].strip()]


def builtin_source() -> Source:
    docs = builtin_documents()
    return Source(spec="builtin", identity=_hash_texts(docs), documents=lambda: iter(docs),
                  n_documents=len(docs), n_chars=sum(map(len, docs)))


# ---------------------------------------------------------------------------------------------- local text

def text_source(pattern: str, *, spec: str) -> Source:
    files = resolve_text_files(pattern, spec=spec)
    digest = hashlib.sha256(b"text-files-v1")
    total, has_text = 0, False
    for f in files:  # hashing reads at ~1 GB/s: cheap next to tokenizing, and exact unlike mtimes
        with open(f, "rb") as fh:
            size = 0
            for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                if b"\0" in block:  # text never holds NUL; images, archives, UTF-16 and pickles do
                    raise UserError(f"{f} (data.source={spec}) is not a text file (it contains NUL bytes): point "
                                    f"data.source at UTF-8 text, converting UTF-16 or binary formats first.")
                has_text = has_text or bool(block.strip())
                digest.update(block)
                size += len(block)
        digest.update(b"\0file-end\0%d\0" % size)
        total += size
    if not has_text:
        what = "is empty or only whitespace" if len(files) == 1 else f"has {len(files)} files, all empty or blank"
        raise UserError(f"data.source={spec} {what} (empty corpus): point it at files with text.")
    return Source(spec=spec, identity=digest.hexdigest()[:32],
                  documents=lambda: (read_text_file(f) for f in files),
                  n_documents=len(files), n_chars=total)


# ---------------------------------------------------------------------------------------------- TFDS

def tfds_source(rest: str, *, spec: str, cache_root: Path) -> Source:
    target, split = split_tfds_spec(rest)
    if _looks_like_path(target):
        from jaxformer.data.tfds_local import local_tfds_source

        return local_tfds_source(target, split, spec=spec, data_dir=cache_root / "tfds")
    from jaxformer.data.tfds_catalog import catalog_source

    return catalog_source(target, split, spec=spec)


# "<target>:<split>" where split is tfds split syntax: train, train[:10%], train+validation[5:]
_SPLIT_SUFFIX = re.compile(r"^(?P<target>.+?):(?P<split>[A-Za-z_]\w*(\[[^\]]*\])?(\+[A-Za-z_]\w*(\[[^\]]*\])?)*)$")


def split_tfds_spec(rest: str) -> tuple[str, str | None]:
    """'lm1b:train' -> ('lm1b', 'train'); 'wikipedia/20230601.en' -> (..., None); './a.txt:train' too."""
    match = _SPLIT_SUFFIX.match(rest)
    if match:
        return match.group("target"), match.group("split")
    return rest, None


def _looks_like_path(target: str) -> bool:
    return (target.startswith(("/", "./", "../", "~", PREFIX)) or Path(target).expanduser().exists()
            or any(ch in target for ch in "*?[") or target.endswith(".txt"))


def _hash_texts(texts: list[str]) -> str:
    digest = hashlib.sha256(b"texts-v1")
    for t in texts:
        data = t.encode("utf-8", "surrogatepass")
        digest.update(b"%d\0" % len(data))
        digest.update(data)
    return digest.hexdigest()[:32]
