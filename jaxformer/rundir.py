"""The run directory: `config.json`, the tokenizer, `metrics.jsonl`, TensorBoard events, `checkpoints/`,
`samples.txt`, and `.lock` (held by the process training into it).

Re-running on the same directory resumes. A config that would change the results (any model, objective, data
or optimizer setting, or the train seed / steps / batch / sequence length / accumulation) is refused before
anything is written: a run's numbers always come from one config. What may change on resume is how the run is
observed and laid out: logging, evaluation and checkpoint cadence, the mesh, the token cache folder."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from jaxformer import atomic
from jaxformer import config as config_lib
from jaxformer.errors import UserError

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
# Keys that may differ between the saved config and a resuming command; every other key must match.
MAY_CHANGE_ON_RESUME = ("train.log_every", "train.eval_every", "train.eval_batches", "train.checkpoint_every",
                        "train.keep_checkpoints", "train.on_nonfinite", "mesh.", "data.cache_dir",
                        "model.attention_impl", "model.dot_grads", "model.xent_chunk",
                        "model.last_block_slots_only")


def read_config(workdir: str | Path) -> config_lib.Config:
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise UserError(f"No run in {workdir} (it has no {CONFIG_FILE}): train one there first with "
                        f"`jaxformer train --workdir {workdir}`.")
    try:
        return config_lib.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, AttributeError) as err:
        raise UserError(f"{path} is not a valid jaxformer config ({err}): fix or remove it.") from None


def _flat(cfg: config_lib.Config) -> dict:
    return {f"{section}.{key}": value for section, values in cfg.to_dict().items() for key, value in values.items()}


def changed_keys(saved: config_lib.Config, new: config_lib.Config) -> list[tuple[str, object, object]]:
    """(key, saved value, new value) for every setting that differs and would change the run's results."""
    old, now = _flat(saved), _flat(new)
    return [(k, old.get(k), v) for k, v in now.items()
            if old.get(k) != v and not k.startswith(MAY_CHANGE_ON_RESUME)]


def check_resume(workdir: Path, cfg: config_lib.Config, *, extend: bool = False) -> None:
    """Refuse to continue a run with a config that would change its results (see the module docstring).

    `extend`: the one deliberate exception, `jaxformer train --extend`: train.steps may grow. The run then
    continues from its newest checkpoint with the learning-rate schedule stretched to the new length (its
    steps so far were trained under the old one), and config.json records the new train.steps."""
    if not (workdir / CONFIG_FILE).exists():
        return
    saved = read_config(workdir)
    changes = changed_keys(saved, cfg)
    if extend:
        if cfg.train.steps < saved.train.steps:
            raise UserError(f"--extend trains {workdir} further, but train.steps={cfg.train.steps} is below the "
                            f"saved {saved.train.steps}: give a larger train.steps.")
        changes = [c for c in changes if c[0] != "train.steps"]
    if changes:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changes[:4])
        more = f" (and {len(changes) - 4} more)" if len(changes) > 4 else ""
        steps_only = "; to train longer, add --extend" if [c[0] for c in changes] == ["train.steps"] else ""
        raise UserError(f"{workdir} holds a run whose results this command would change ({listed}{more}): use a "
                        f"new --workdir for the new settings, or the saved ones (its config.json) to resume"
                        f"{steps_only}.")


def check_is_run_or_new(workdir: Path) -> None:
    """Training writes only into a new or empty directory or one that holds a jaxformer run."""
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir {workdir} is a file, not a directory: choose a new path for the run.")
    if workdir.is_dir() and not (workdir / CONFIG_FILE).exists() and any(
            p.name != LOCK_FILE for p in workdir.iterdir()):
        raise UserError(f"{workdir} is not empty and holds no jaxformer run (no {CONFIG_FILE}): choose a new or "
                        f"empty --workdir, so that nothing in it is overwritten.")


class WorkdirLock:
    """An exclusive `flock` on `<workdir>/.lock` for as long as a process trains into the directory.

    A second process (another command, or a process that did not join this one's JAX cluster) is refused. The
    kernel drops the lock when the holder exits, however it exits, so a crashed run never leaves it stuck.
    Multi-process runs: process 0 holds it for the whole cluster."""

    def __init__(self, workdir: str | Path, *, enabled: bool = True):
        self.path = Path(workdir) / LOCK_FILE
        self.enabled = enabled
        self._fd: int | None = None
        self._created_dir = False

    def __enter__(self) -> WorkdirLock:
        if not self.enabled:
            return self
        check_is_run_or_new(self.path.parent)  # never put a lock file into a folder that is not a run
        self._created_dir = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.path.parent} is in use by {holder}, which is training into it: wait for it to "
                            f"finish, or use another --workdir.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
            # A command refused before writing anything leaves no directory behind.
            if self._created_dir and [p.name for p in self.path.parent.iterdir()] == [LOCK_FILE]:
                self.path.unlink(missing_ok=True)
                self.path.parent.rmdir()


def save_config(workdir: Path, cfg: config_lib.Config) -> None:
    atomic.write_text(workdir / CONFIG_FILE, cfg.to_json() + "\n")
