"""Errors that end a command with one sentence (what, where, how to fix) and a documented exit status.

The CLI prints `str(err)` on stderr and exits with `err.exit_code`; any other exception is a bug (exit 1).

| status | meaning |
|---|---|
| 0 | finished |
| 1 | a bug (traceback with -v) |
| 2 | bad input: config, file, prompt, run directory (`UserError`); nothing was written |
| 3 | training stopped at a non-finite loss or gradient (`NonFiniteError`); the last good checkpoint is kept |
| 4 | a checkpoint could not be written (`CheckpointWriteError`); the previous one is intact, re-run to resume |
| 75 | stopped by SIGTERM/SIGINT after saving a checkpoint: re-run the same command to resume (`EX_TEMPFAIL`,
|    | what a scheduler should requeue) |
"""

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: "try again later"


class JaxformerError(Exception):
    exit_code = 1


class UserError(JaxformerError):
    """Bad input from the user (config, file, prompt, checkpoint): reported as one sentence, exit 2."""

    exit_code = 2


class NonFiniteError(JaxformerError):
    """train.on_nonfinite=stop and a step's loss or gradient was NaN/inf."""

    exit_code = 3


class CheckpointWriteError(JaxformerError):
    """Writing a checkpoint failed (disk full, permissions, storage gone); older checkpoints are untouched."""

    exit_code = 4
