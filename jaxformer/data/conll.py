"""Token-classification (NER) files: CoNLL-style `token<TAB>tag` lines, one sentence per block.

    read_tag_task("wnut17", "train" | "dev" | "test")    WNUT-17 (<data root>/wnut17/), the named tagging task
    read_tag_task("path/to/file.conll", split)           any CoNLL file, whatever the split (`@data/` paths too)
    -> [TaggedSentence(words, tags, where), ...]          tags as written; the run's LabelMap numbers them
    is_tag_task(name)                                     a named tagging task or a .conll/.bio/.iob file

A line whose `strip()` is empty ends a sentence: WNUT-17's training file writes most of its breaks as a lone TAB,
which a split on TAB would turn into an empty word. A `-DOCSTART-` line (CoNLL-2003) is a break too. The token
is the first whitespace-separated field and the tag the last, so files with extra POS/chunk columns read alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jaxformer.data.classification import read_text
from jaxformer.data.root import PREFIX, data_root, is_data_path, not_under_root, resolve_data_path
from jaxformer.errors import UserError

# Named tagging tasks: split -> file under the data root.
TAG_TASKS = {"wnut17": {"train": "wnut17/wnut17train.conll", "dev": "wnut17/emerging.dev.conll",
                        "test": "wnut17/emerging.test.annotated"}}
TAG_TASK_ALIASES = {"wnut17": "wnut17", "wnut_17": "wnut17", "wnut-17": "wnut17"}
TAG_SUFFIXES = (".conll", ".bio", ".iob", ".iob2")
_SPLITS = {"train": "train", "dev": "dev", "valid": "dev", "validation": "dev", "test": "test"}


@dataclass(frozen=True)
class TaggedSentence:
    words: tuple[str, ...]
    tags: tuple[str, ...]
    where: str  # path:line of its first word, for messages


def is_tag_task(name_or_path: str) -> bool:
    return name_or_path.lower() in TAG_TASK_ALIASES or Path(name_or_path).suffix.lower() in TAG_SUFFIXES


def tag_task_file(name_or_path: str, split: str) -> Path:
    """The CoNLL file of a named task's split, or the given path (`@data/` resolved); one sentence when absent."""
    task = TAG_TASK_ALIASES.get(name_or_path.lower())
    if task is not None:
        canonical = _SPLITS.get(split.lower())
        if canonical not in TAG_TASKS[task]:
            raise UserError(f"Task {task} has no split '{split}': use one of {', '.join(TAG_TASKS[task])}.")
        relative = TAG_TASKS[task][canonical]
        path = data_root() / relative
        if not path.is_file():
            raise UserError(not_under_root(f"{relative} (the {task} data)"))
        return path
    path = resolve_data_path(name_or_path)
    if path.is_file():
        return path
    if is_data_path(name_or_path):
        raise UserError(not_under_root(name_or_path[len(PREFIX):]))
    raise UserError(f"Tagging file {path} does not exist: check the path (a CoNLL file of token<TAB>tag lines).")


def read_tag_task(name_or_path: str, split: str) -> list[TaggedSentence]:
    return read_conll(tag_task_file(name_or_path, split))


def read_conll(path: str | Path) -> list[TaggedSentence]:
    """The sentences of a CoNLL file (see the module docstring); refuses a line with no tag column."""
    path = Path(path)
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0

    def close() -> None:
        if words:
            sentences.append(TaggedSentence(tuple(words), tuple(tags), f"{path}:{start}"))
            words.clear()
            tags.clear()

    for number, line in enumerate(read_text(path).splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            close()
            continue
        if len(fields) < 2:
            raise UserError(f"{path}:{number} has the token {fields[0]!r} but no tag: a CoNLL file needs "
                            f"token<TAB>tag on every line, and an empty line between sentences.")
        if not words:
            start = number
        words.append(fields[0])
        tags.append(fields[-1])
    close()
    if not sentences:
        raise UserError(f"{path} holds no tagged sentences: it needs token<TAB>tag lines.")
    return sentences
