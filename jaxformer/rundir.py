"""The run directory: `config.json`, the tokenizer, `metrics.jsonl`, TensorBoard events, `checkpoints/`,
`samples.txt`. Re-running on the same directory resumes; a config that does not match the one saved there is
refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

from jaxformer import config as config_lib
from jaxformer.atomic import write_text as write_text_atomic  # the old name, kept for callers
from jaxformer.errors import UserError

CONFIG_FILE = "config.json"
# Sections whose change makes the saved checkpoints meaningless (train.* and mesh.* may change on resume).
_MUST_MATCH = ("model", "objective", "data")


def read_config(workdir: str | Path) -> config_lib.Config:
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise UserError(f"No run in {workdir} (it has no {CONFIG_FILE}): train one there first with "
                        f"`jaxformer train --workdir {workdir}`.")
    try:
        return config_lib.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, AttributeError) as err:
        raise UserError(f"{path} is not a valid jaxformer config ({err}): fix or remove it.") from None


def check_resume(workdir: Path, cfg: config_lib.Config) -> None:
    """Refuse to continue a run whose model/objective/data differ from the saved config."""
    if not (workdir / CONFIG_FILE).exists():
        return
    saved = read_config(workdir).to_dict()
    new = cfg.to_dict()
    for section in _MUST_MATCH:
        for key, value in new[section].items():
            old = saved[section].get(key)
            if old != value:
                raise UserError(
                    f"{workdir} holds a run with {section}.{key}={old!r}, but this command asks for {value!r}: "
                    f"use a new --workdir, or the saved setting to resume.")


def save_config(workdir: Path, cfg: config_lib.Config) -> None:
    write_text_atomic(workdir / CONFIG_FILE, cfg.to_json() + "\n")
