"""TFDS catalog datasets (tiny_shakespeare, lm1b, wikipedia/..., imdb_reviews, glue/sst2) as documents.

Reading a dataset that is already prepared in array_record format needs no TensorFlow (the read-only
builder + `as_data_source`). Preparing one runs the catalog builder, which needs the `tf` extra
(`pip install 'jaxformer[tf]'`: tensorflow-cpu + importlib_resources); we prepare into array_record so that
later runs read it without TF.

Network use is decided up front, never discovered by tfds's retry loop (~205 s offline):
- raw files found in the manual dir are used as they are (tfds's own `DownloadConfig(manual_dir=...)`
  mechanism: a file named as in the builder's checksums.tsv, e.g. tiny_shakespeare's `input.txt`, checked
  against its registered sha256);
- otherwise, if the download host answers within a few seconds (and JAXFORMER_OFFLINE is not set), tfds
  downloads; if not, the first download attempt fails at once with a UserError naming the file to provide.

Locations: prepared data in $TFDS_DATA_DIR (default ~/tensorflow_datasets, tfds's own default); manual files
in $JAXFORMER_TFDS_MANUAL_DIR (default <data_dir>/downloads/manual, tfds's default).

Splits: `tfds:<name>:<split>` reads that split (tfds slicing syntax allowed); with no split, all splits are read
in the order train, validation, test, then the rest by name, and the last data.valid_fraction of the token
stream is the validation split as for any source. For tiny_shakespeare that concatenation is the original file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

from jaxformer.data.documents import Source, split_names
from jaxformer.errors import UserError

TF_EXTRA = "pip install 'jaxformer[tf]'"
TEXT_FIELDS = ("text", "sentence", "content", "document", "article")
SPLIT_ORDER = ("train", "validation", "test")
PROBE_TIMEOUT_S = 4.0
_FALLBACK_HOST = "storage.googleapis.com"


def tfds_data_dir() -> Path:
    return Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def manual_dir_for(data_dir: Path) -> Path:
    return Path(os.environ.get("JAXFORMER_TFDS_MANUAL_DIR") or data_dir / "downloads" / "manual").expanduser()


def catalog_source(name: str, split: str | None, *, spec: str, data_dir: Path | None = None,
                   manual_dir: Path | None = None) -> Source:
    data_dir = Path(data_dir) if data_dir else tfds_data_dir()
    prepared = find_prepared_dir(data_dir, name)
    if prepared is None:
        prepared = prepare_catalog(name, data_dir=data_dir, manual_dir=manual_dir or manual_dir_for(data_dir),
                                   spec=spec)
    return _source_from_prepared(prepared, split, spec=spec)


# ---------------------------------------------------------------------------------------------- prepared data

def _version_key(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split("."))
    except ValueError:
        return (-1,)


def find_prepared_dir(data_dir: Path, name: str) -> Path | None:
    """Newest prepared version dir of `name` (or `name/config`), found on disk without importing tfds's
    catalog (so reading needs no TensorFlow). With several configs and none named: None (let tfds pick)."""
    base = data_dir / name
    found = _newest_version(base)
    if found is None and "/" not in name and base.is_dir():
        # `imdb_reviews` prepared as its default config `imdb_reviews/plain_text`: take it if it is the only one
        candidates = [v for v in map(_newest_version, sorted(base.iterdir())) if v is not None]
        found = candidates[0] if len(candidates) == 1 else None
    return found


def _newest_version(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    versions = [p for p in folder.iterdir() if (p / "dataset_info.json").exists() and _version_key(p.name) != (-1,)]
    return max(versions, key=lambda p: _version_key(p.name)) if versions else None


def _source_from_prepared(prepared: Path, split: str | None, *, spec: str) -> Source:
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(prepared))
    splits = list(builder.info.splits)
    if split is None:
        chosen = [s for s in SPLIT_ORDER if s in splits] + sorted(s for s in splits if s not in SPLIT_ORDER)
    else:
        unknown = [name for name in split_names(split) if name not in splits]
        if unknown:
            raise UserError(f"{spec} has no split '{unknown[0]}': choose one of {', '.join(splits)}.")
        chosen = [split]
    field = _text_field(builder, spec)
    info_bytes = (prepared / "dataset_info.json").read_bytes()
    identity = hashlib.sha256(info_bytes + json.dumps([str(prepared.relative_to(prepared.parents[1])),
                                                       chosen, field]).encode()).hexdigest()[:32]

    def documents() -> Iterator[str]:
        for s in chosen:
            yield from _read_split(builder, s, field)

    n_docs = None if split else sum(builder.info.splits[s].num_examples for s in chosen)
    return Source(spec=spec, identity=identity, documents=documents, n_documents=n_docs)


def _text_field(builder, spec: str) -> str:
    features = builder.info.features
    names = list(features.keys()) if hasattr(features, "keys") else []
    for name in TEXT_FIELDS:
        if name in names:
            return name
    import tensorflow_datasets as tfds

    texts = [n for n in names if isinstance(features[n], tfds.features.Text)]
    if not texts:
        raise UserError(f"{spec} has no text feature (features: {', '.join(names) or 'none'}): it cannot be "
                        f"used as a language-modelling corpus.")
    return texts[0]


def _read_split(builder, split: str, field: str) -> Iterator[str]:
    from jaxformer.data.tfds_local import read_documents

    if builder.info.file_format is not None and builder.info.file_format.value == "array_record":
        yield from read_documents(builder.as_data_source(split=split), field)
        return
    # Prepared by someone else in the tfrecord format: only TensorFlow reads that.
    _require_tf(f"reading {builder.name} (prepared as {builder.info.file_format})")
    import tensorflow_datasets as tfds

    for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
        value = example[field]
        yield value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------------------------- preparing

def _require_tf(what: str) -> None:
    missing = [m for m in ("tensorflow", "importlib_resources") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"{what} needs TensorFlow Datasets' catalog builders, which need {' and '.join(missing)}: "
                        f"run {TF_EXTRA}, or use a local file with data.source=text:<file>.")


class OfflineDownload(Exception):
    def __init__(self, url: str):
        super().__init__(url)
        self.url = url


def host_reachable(host: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """TCP connect to host:443 in a daemon thread, so a hanging DNS lookup cannot outlive the timeout."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def network_allowed(url_infos: dict | None) -> bool:
    if os.environ.get("JAXFORMER_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    urls = list(url_infos or {})
    host = urlparse(urls[0]).hostname if urls else _FALLBACK_HOST
    return host_reachable(host or _FALLBACK_HOST)


@contextlib.contextmanager
def _downloads_fail_fast():
    """Within: any download tfds would start raises OfflineDownload(url) at once (no retry loop)."""
    from tensorflow_datasets.core.download import download_manager

    def refuse(self, resource):
        raise OfflineDownload(getattr(resource, "url", str(resource)))

    with mock.patch.object(download_manager.DownloadManager, "_download", refuse):
        yield


def prepare_catalog(name: str, *, data_dir: Path, manual_dir: Path, spec: str) -> Path:
    """Prepare a catalog dataset into array_record under data_dir and return its version dir."""
    _require_tf(f"Preparing {spec}")
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=str(data_dir), file_format="array_record")
    except Exception as err:  # tfds raises DatasetNotFoundError, ValueError, ... for bad names/configs
        raise UserError(f"TFDS does not know '{name}' ({type(err).__name__}: {str(err).splitlines()[0][:120]}): "
                        f"check the name, e.g. tfds:tiny_shakespeare or tfds:glue/sst2.") from None
    if not builder.is_prepared():
        url_infos = type(builder).url_infos
        online = network_allowed(url_infos)
        config = tfds.download.DownloadConfig(manual_dir=str(manual_dir), try_download_gcs=False)
        guard = contextlib.nullcontext() if online else _downloads_fail_fast()
        try:
            with guard:
                builder.download_and_prepare(download_config=config)
        except OfflineDownload as err:
            expected = (url_infos or {}).get(err.url)
            filename = expected.filename if expected and expected.filename else Path(urlparse(err.url).path).name
            raise UserError(f"{spec} is not prepared in {data_dir} and there is no network to download {err.url}: "
                            f"put that file as {manual_dir / filename} (set JAXFORMER_TFDS_MANUAL_DIR to its "
                            f"folder), or use a local copy directly with data.source=text:<file>.") from None
    return Path(str(builder.data_dir))
