"""jaxformer's own TFDS builder: local text files -> array_record, read back with `tfds.data_source`.

No TensorFlow anywhere on this path (tfds's generator-based builders and array_record readers are pure
Python + C++). One example per file, {"text": <file contents>}, in sorted path order, all in split "train".

Each distinct corpus gets its own builder config named by a hash of its file contents, so editing a file
prepares a fresh dataset instead of reading a stale one. Prepared data lives under `<cache>/tfds/`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import tensorflow_datasets as tfds
from etils import epath

from jaxformer.data.documents import Source, read_text_file, resolve_text_files, split_names
from jaxformer.errors import UserError

BUILDER_NAME = "jaxformer_text"
_READ_CHUNK = 256  # examples per array_record read


@dataclasses.dataclass
class TextCorpusConfig(tfds.core.BuilderConfig):
    files: tuple[str, ...] = ()


class JaxformerText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Local text files as a TFDS dataset: one example per file.

    Not registered in tfds's catalog: its configs are created per corpus, so reading goes through
    `tfds.data_source(name/config, data_dir=...)`, which finds the prepared files themselves.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "One example per local text file."}
    # tfds locates a builder's checksums/metadata next to its source file through `importlib_resources`,
    # which Python 3.11 installs lack without the `tf` extra; there is nothing to find, so say so directly.
    code_path = None
    url_infos = None
    pkg_dir_path = epath.Path(__file__).parent  # where tfds looks for README/CITATIONS metadata (none)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "name": tfds.features.Text()}),
            description="Local text files prepared by jaxformer (one example per file).",
            disable_shuffling=True,  # keep the files' sorted order: document order is part of the corpus
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the files are local
        return {"train": self._generate_examples(self.builder_config.files)}

    def _generate_examples(self, files):
        for i, name in enumerate(files):
            yield i, {"text": read_text_file(Path(name)), "name": Path(name).name}


def local_builder(files: list[Path], data_dir: Path) -> JaxformerText:
    digest = hashlib.sha256()
    for f in files:
        digest.update(hashlib.sha256(f.read_bytes()).digest())
    config = TextCorpusConfig(name=f"c{digest.hexdigest()[:20]}", files=tuple(str(f.resolve()) for f in files),
                              description=f"{len(files)} local file(s) starting with {files[0]}")
    return JaxformerText(config=config, data_dir=str(data_dir), file_format="array_record")


def prepare_local(files: list[Path], data_dir: Path) -> JaxformerText:
    """Prepare (once) and return the builder; a second call with the same contents is a no-op."""
    builder = local_builder(files, data_dir)
    if not builder.is_prepared():
        # tfds writes into a temp dir and renames on success, so an interrupted prepare leaves nothing half-done
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder


def read_documents(source, field: str = "text") -> Iterator[str]:
    """Documents of an array_record data source (`tfds.data_source`) in example order, read in chunks."""
    for start in range(0, len(source), _READ_CHUNK):
        for example in source.__getitems__(list(range(start, min(start + _READ_CHUNK, len(source))))):
            value = example[field]
            yield value.decode("utf-8") if isinstance(value, bytes) else str(value)


def local_tfds_source(target: str, split: str | None, *, spec: str, data_dir: Path) -> Source:
    files = resolve_text_files(target, spec=spec)
    builder = prepare_local(files, data_dir)
    split = split or "train"
    if any(name not in builder.info.splits for name in split_names(split)):
        raise UserError(f"A local TFDS corpus has only the split 'train', not '{split}' (data.source={spec}): "
                        f"drop the ':{split}'.")
    name = f"{BUILDER_NAME}/{builder.builder_config.name}"
    identity = hashlib.sha256(f"{name}:{split}".encode()).hexdigest()[:32]

    def documents() -> Iterator[str]:
        # read back exactly as any TFDS user would: by name, from the prepared files, never downloading
        data = tfds.data_source(name, split=split, data_dir=str(data_dir), download=False)
        return read_documents(data)

    return Source(spec=spec, identity=identity, documents=documents,
                  n_documents=builder.info.splits[split].num_examples)
