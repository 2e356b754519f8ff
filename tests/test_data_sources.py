"""Sources: builtin, local text, jaxformer's own TFDS builder (no TF), TFDS catalog offline, fast failures."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from jaxformer.data import data_root, documents, sources
from jaxformer.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = data_root() / "tinyshakespeare" / "input.txt"  # conftest.py sets the data root
HAS_TF = all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "importlib_resources"))


def _open(spec: str, tmp_path: Path) -> sources.Source:
    return sources.open_source(spec, cache_root=tmp_path / "cache")


def test_builtin_is_the_bundled_pydoc_topics_sorted(tmp_path):
    from pydoc_data.topics import topics

    src = _open("builtin", tmp_path)
    docs = list(src.documents())
    assert docs == [topics[k] for k in sorted(topics) if topics[k].strip()]
    assert sum(map(len, docs)) > 300_000 and src.n_documents == len(docs)
    assert _open("builtin", tmp_path).identity == src.identity


def test_text_file_dir_and_glob(tmp_path):
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "a.txt").write_text("ay\n\nstill ay")
    (tmp_path / "notes.md").write_text("markdown")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("sea")
    assert list(_open(f"text:{tmp_path / 'a.txt'}", tmp_path).documents()) == ["ay\n\nstill ay"]  # one per file
    assert list(_open(f"text:{tmp_path}", tmp_path).documents()) == ["ay\n\nstill ay", "bee", "sea"]
    assert list(_open(f"text:{tmp_path}/*.md", tmp_path).documents()) == ["markdown"]
    assert list(_open(f"text:{tmp_path}/**/c.txt", tmp_path).documents()) == ["sea"]


def test_text_identity_follows_content_not_mtime(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("same")
    first = _open(f"text:{path}", tmp_path).identity
    path.write_text("same")
    assert _open(f"text:{path}", tmp_path).identity == first
    path.write_text("different")
    assert _open(f"text:{path}", tmp_path).identity != first


def test_latin1_files_are_read(tmp_path):
    (tmp_path / "old.txt").write_bytes("café olé".encode("latin-1"))
    assert list(_open(f"text:{tmp_path / 'old.txt'}", tmp_path).documents()) == ["café olé"]


@pytest.mark.parametrize("spec, match", [
    ("text:/definitely/not/here.txt", "No file matches"),
    ("text:", "names no path"),
    ("hf:wikitext", "Unknown data.source"),
])
def test_bad_sources_are_one_sentence_user_errors(tmp_path, spec, match):
    with pytest.raises(UserError, match=match) as err:
        _open(spec, tmp_path)
    assert "\n" not in str(err.value)


def test_empty_dir_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no \\*.txt files"):
        _open(f"text:{tmp_path / 'empty'}", tmp_path)


def test_split_tfds_spec():
    assert sources.split_tfds_spec("lm1b") == ("lm1b", None)
    assert sources.split_tfds_spec("lm1b:test") == ("lm1b", "test")
    assert sources.split_tfds_spec("wikipedia/20230601.en:train[:1%]") == ("wikipedia/20230601.en", "train[:1%]")
    assert sources.split_tfds_spec("glue/sst2") == ("glue/sst2", None)
    assert sources.split_tfds_spec("./corpus/a.txt:train") == ("./corpus/a.txt", "train")
    assert documents.split_names("train+validation[:5%]") == ["train", "validation"]


LOCAL_TFDS_CHECK = textwrap.dedent("""
    import sys
    from pathlib import Path
    from jaxformer.data.sources import open_source
    folder, cache = Path(sys.argv[1]), Path(sys.argv[2])
    src = open_source(f"tfds:{folder}", cache_root=cache)
    docs = list(src.documents())
    expected = [p.read_text() for p in sorted(folder.rglob("*.txt"))]
    assert docs == expected, (len(docs), len(expected))
    import tensorflow_datasets as tfds
    data = tfds.data_source("jaxformer_text/" + sorted((cache / "tfds" / "jaxformer_text").iterdir())[0].name,
                            split="train", data_dir=str(cache / "tfds"), download=False)
    assert len(data) == len(expected)
    assert "tensorflow" not in sys.modules, "the local TFDS path imported TensorFlow"
    print("OK", len(docs))
""")


def test_own_tfds_builder_round_trips_a_local_corpus_without_tensorflow(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "deep").mkdir(parents=True)
    texts = {"b.txt": "second file\nwith lines", "a.txt": "first file — ünïcode [MASK]",
             "deep/c.txt": "x" * 50_000}
    if SHAKESPEARE.exists():
        texts["shakespeare.txt"] = SHAKESPEARE.read_text()
    for name, text in texts.items():
        (corpus / name).write_text(text)
    # A fresh interpreter, so that "TensorFlow was never imported" is a fact about this path alone.
    result = subprocess.run([sys.executable, "-c", LOCAL_TFDS_CHECK, str(corpus), str(tmp_path / "cache")],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
    # prepared once: the same contents reuse the prepared dataset; new contents get a new one
    configs = lambda: sorted((tmp_path / "cache" / "tfds" / "jaxformer_text").iterdir())
    assert len(configs()) == 1
    assert list(_open(f"tfds:{corpus}", tmp_path).documents())[0] == texts["a.txt"]
    assert len(configs()) == 1
    (corpus / "a.txt").write_text("edited")
    assert list(_open(f"tfds:{corpus}", tmp_path).documents())[0] == "edited"
    assert len(configs()) == 2


def test_local_tfds_has_only_train(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    with pytest.raises(UserError, match="only the split 'train'"):
        _open(f"tfds:{tmp_path / 'a.txt'}:test", tmp_path)


def test_offline_catalog_dataset_fails_fast_and_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("JAXFORMER_OFFLINE", "1")  # decide "no network" even where there is one (CI)
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        _open("tfds:lm1b", tmp_path)
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "\n" not in message
    if HAS_TF:
        assert "no network" in message and "text:" in message and "1-billion-word" in message
    else:
        assert "pip install 'jaxformer[tf]'" in message


def test_unreachable_host_probe_returns_quickly():
    from jaxformer.data.tfds_catalog import host_reachable

    start = time.monotonic()
    assert host_reachable("does-not-exist.invalid", timeout=3) is False
    assert time.monotonic() - start < 10


@pytest.mark.skipif(not HAS_TF, reason="TensorFlow (the 'tf' extra) is not installed: catalog builders need it")
@pytest.mark.skipif(not SHAKESPEARE.exists(), reason=f"{SHAKESPEARE} is not on this machine")
def test_catalog_tiny_shakespeare_prepares_offline_from_the_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("JAXFORMER_TFDS_MANUAL_DIR", str(SHAKESPEARE.parent))  # holds input.txt, as tfds names it
    monkeypatch.setenv("JAXFORMER_OFFLINE", "1")  # any download attempt would fail: the file must be used
    src = _open("tfds:tiny_shakespeare", tmp_path)
    docs = list(src.documents())
    assert len(docs) == 3  # train, validation, test: tfds's 90/5/5 cut of the file
    assert "".join(docs) == SHAKESPEARE.read_text()
    assert (tmp_path / "tfds" / "tiny_shakespeare" / "1.0.0" / "dataset_info.json").exists()
    assert list(_open("tfds:tiny_shakespeare:validation", tmp_path).documents()) == [docs[1]]
    with pytest.raises(UserError, match="no split 'dev'"):
        _open("tfds:tiny_shakespeare:dev", tmp_path)


def test_prepared_array_record_dataset_is_read_without_preparing(tmp_path, monkeypatch):
    """A dataset already prepared in TFDS_DATA_DIR is found on disk and read, with no catalog builder (so no
    TensorFlow): here one prepared by our own builder stands in for a catalog dataset."""
    from jaxformer.data import tfds_catalog
    from jaxformer.data.tfds_local import prepare_local

    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").write_text("beta")
    prepare_local([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "tfds")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(tfds_catalog, "prepare_catalog", lambda *a, **k: pytest.fail("tried to prepare"))
    src = _open("tfds:jaxformer_text", tmp_path)  # the single prepared config is picked, as for a default one
    assert list(src.documents()) == ["alpha", "beta"] and src.n_documents == 2
    with pytest.raises(UserError, match="no split 'test'"):
        _open("tfds:jaxformer_text:test", tmp_path)


# ---------------------------------------------------------------------------------------------- the data root

def test_preset_data_path_resolves_under_the_data_root(tmp_path, monkeypatch):
    from jaxformer.config import get_preset

    spec = get_preset("shakespeare-char-cpu").data.source
    assert spec == "text:@data/tinyshakespeare/input.txt"
    root = tmp_path / "elsewhere"
    (root / "tinyshakespeare").mkdir(parents=True)
    (root / "tinyshakespeare" / "input.txt").write_text("First Citizen:\nBefore we proceed any further")
    monkeypatch.setenv("JAXFORMER_DATA", str(root))
    assert list(_open(spec, tmp_path).documents()) == ["First Citizen:\nBefore we proceed any further"]
    assert sources.split_tfds_spec("@data/corpus:train") == ("@data/corpus", "train")
    assert sources._looks_like_path("@data/corpus")  # tfds:@data/... is a local corpus, not a catalog name


def test_data_root_defaults_to_data_in_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXFORMER_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert data_root() == tmp_path / "data"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("here")
    assert list(_open("text:@data/a.txt", tmp_path).documents()) == ["here"]


def test_missing_data_root_or_file_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXFORMER_DATA", str(tmp_path / "absent"))
    with pytest.raises(UserError, match=r"^tinyshakespeare/input.txt is not under the data root .*absent, which "
                                        r"does not exist \(set JAXFORMER_DATA to"):
        _open("text:@data/tinyshakespeare/input.txt", tmp_path)
    monkeypatch.setenv("JAXFORMER_DATA", str(tmp_path))
    with pytest.raises(UserError, match=r"^nothing/\*.txt is not under the data root .* \(set JAXFORMER_DATA"):
        _open("text:@data/nothing/*.txt", tmp_path)


def test_data_modules_import_without_cycles():
    """No module of jaxformer/data imports (at any depth, lazily or not) a module that imports it back."""
    import ast

    package = REPO / "jaxformer" / "data"
    names = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in names:
        edges = set()
        for node in ast.walk(ast.parse((package / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "jaxformer.data":
                edges |= {a.name for a in node.names if a.name in names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxformer.data."):
                edges.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                edges |= {a.name.split(".")[2] for a in node.names if a.name.startswith("jaxformer.data.")}
        graph[name] = edges & names

    def reachable(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo += graph[node]
        return seen

    assert graph["sources"] >= {"documents", "tfds_local", "tfds_catalog"}  # the walk sees lazy imports too
    assert [name for name in sorted(names) if name in reachable(name)] == []


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


DOCS = ["first document\nwith two lines", "second one", "", "third: ünïcode"]


def test_jsonl_rows_are_documents_in_order(tmp_path):
    path = _write_jsonl(tmp_path / "c.jsonl", [{"text": d, "n": i} for i, d in enumerate(DOCS)] + [{"text": None}])
    src = sources.open_source(f"jsonl:{path}:text", cache_root=tmp_path)
    assert list(src.documents()) == [d for d in DOCS if d]  # null and empty rows are no documents
    same = sources.open_source(f"jsonl:{path}:text", cache_root=tmp_path)
    other_field = _write_jsonl(tmp_path / "d.jsonl", [{"body": d} for d in DOCS])
    assert same.identity == src.identity
    assert sources.open_source(f"jsonl:{other_field}:body", cache_root=tmp_path).identity != src.identity


def test_parquet_rows_are_documents_in_order(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": DOCS, "label": list(range(len(DOCS)))}), path)
    src = sources.open_source(f"parquet:{path}:text", cache_root=tmp_path)
    assert list(src.documents()) == [d for d in DOCS if d]
    with pytest.raises(UserError, match="no field 'body'.*label, text"):
        sources.open_source(f"parquet:{path}:body", cache_root=tmp_path)


@pytest.mark.parametrize("rows, spec_tail, match", [
    ([{"text": "a"}], "", "names no field"),
    ([{"body": "a"}], ":text", "no field 'text'.*body"),
    ([{"text": 3}], ":text", "int in field 'text'"),
])
def test_bad_record_sources_are_one_sentence_user_errors(tmp_path, rows, spec_tail, match):
    path = _write_jsonl(tmp_path / "c.jsonl", rows)
    with pytest.raises(UserError, match=match):
        list(sources.open_source(f"jsonl:{path}{spec_tail}", cache_root=tmp_path).documents())
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(UserError, match="Line 2 .* is not JSON"):
        list(sources.open_source(f"jsonl:{tmp_path / 'bad.jsonl'}:text", cache_root=tmp_path).documents())


def test_jsonl_corpus_tokenizes_like_one_text_file_per_document(tmp_path):
    """The same documents from JSONL and from text files give the same token stream, so the token cache,
    (seed, step) batching and exact resume behave the same for either source."""
    from jaxformer.config import DataConfig
    from jaxformer.data.pipeline import load_corpus

    docs = [f"document {i}: " + "the quick brown fox " * (i + 3) for i in range(12)]
    path = _write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in docs])
    folder = tmp_path / "txt"
    folder.mkdir()
    for i, d in enumerate(docs):
        (folder / f"{i:02d}.txt").write_text(d)
    cache = str(tmp_path / "cache")
    a = load_corpus(DataConfig(source=f"jsonl:{path}:text", tokenizer="byte", cache_dir=cache), None,
                    show_progress=False)
    b = load_corpus(DataConfig(source=f"text:{folder}", tokenizer="byte", cache_dir=cache), None, show_progress=False)
    assert a.n_documents == 12 and list(a.tokens) == list(b.tokens)
    again = load_corpus(DataConfig(source=f"jsonl:{path}:text", tokenizer="byte", cache_dir=cache), None,
                        show_progress=False)
    assert isinstance(again.tokens, np.memmap) and list(again.tokens) == list(a.tokens)  # read from the cache
