"""What every data source shares: the `Source` record, local text files (resolve, read) and TFDS split names.

Its own module so that sources.py and the TFDS readers (tfds_local.py, tfds_catalog.py) both import it without
importing each other back.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from jaxformer.data.root import PREFIX, is_data_path, not_under_root, resolve_data_path
from jaxformer.errors import UserError


@dataclass(frozen=True)
class Source:
    spec: str  # the data.source string it came from
    identity: str  # content hash: same identity <=> same documents in the same order
    documents: Callable[[], Iterator[str]]  # a fresh iterator over the documents each call
    n_documents: int | None = None  # when known up front (progress bars)
    n_chars: int | None = None  # approximate (file bytes for text files): sizes progress bars only


def resolve_text_files(pattern: str, *, spec: str, suffix: str = ".txt", form: str = "text:<file|glob|dir>"
                       ) -> list[Path]:
    """A file, a directory (all *<suffix> below it) or a glob, `@data/` resolved; sorted; UserError when nothing
    matches."""
    if not pattern:
        raise UserError(f"data.source={spec} names no path: write {form}.")
    path = resolve_data_path(pattern)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob(f"*{suffix}") if p.is_file())
        if not files:
            raise UserError(f"The directory {path} (data.source={spec}) holds no *{suffix} files: point "
                            f"data.source at a file or a glob such as {spec.partition(':')[0]}:{path}/*{suffix}.")
        return files
    files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files and is_data_path(pattern):
        raise UserError(not_under_root(pattern[len(PREFIX):]))
    if not files:
        raise UserError(f"No file matches '{pattern}' (data.source={spec}, relative paths start at "
                        f"{Path.cwd()}): check the path.")
    return files


def read_text_file(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # every byte sequence decodes; old corpora are often Windows-1252


def split_names(split: str) -> list[str]:
    """'train+validation[:5%]' -> ['train', 'validation']."""
    return [part.split("[")[0] for part in split.split("+")]
