"""The data root: the one folder that named data sets are looked up in, and the `@data/` path notation.

    JAXFORMER_DATA=/path/to/datasets          default: ./data (relative to the current directory)
    data.source=text:@data/tinyshakespeare/input.txt
    jaxformer finetune --task sst2           (reads <data root>/sst-2-glue/)

`@data/<relative path>` is kept as written in configs (so a run directory moves between machines) and resolved
against the data root only when the data is read.
"""

from __future__ import annotations

import os
from pathlib import Path

from jaxformer.errors import UserError

ENV_VAR = "JAXFORMER_DATA"
DEFAULT_ROOT = "data"
PREFIX = "@data/"


def data_root() -> Path:
    """$JAXFORMER_DATA, else ./data, as an absolute path (it need not exist)."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_ROOT).expanduser().absolute()


def is_data_path(path: str) -> bool:
    return path.startswith(PREFIX)


def not_under_root(relative: str) -> str:
    """The one sentence for data that is not where the data root says it is."""
    root = data_root()
    where = f"the data root {root}" + ("" if root.is_dir() else ", which does not exist")
    return f"{relative} is not under {where} (set {ENV_VAR} to the folder holding the shared data sets)."


def resolve_data_path(path: str) -> Path:
    """'@data/a/b' -> <data root>/a/b (UserError when the root does not exist); any other path as given."""
    if not is_data_path(path):
        return Path(path).expanduser()
    relative = path[len(PREFIX):]
    if not data_root().is_dir():
        raise UserError(not_under_root(relative))
    return data_root() / relative
