"""Runs are never stale or mixed, and faults leave a resumable run: config changes, the workdir lock, NaN/inf
steps, preemption exit status, checkpoint write failures, foreign tokenizers, newer formats, multi-host start."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from tiny import tiny_overrides

from jaxformer import config as config_lib
from jaxformer import distributed, parallel, rundir, train, trainer
from jaxformer.checkpoint import FORMAT, Checkpointer
from jaxformer.cli import main
from jaxformer.data.tokenizers import CharTokenizer
from jaxformer.errors import CheckpointWriteError, NonFiniteError, UserError
from jaxformer.run import open_run

REPO = Path(__file__).resolve().parents[1]
TINY = tiny_overrides("train.log_every=2", "train.eval_every=0", "train.eval_batches=1", "train.checkpoint_every=2",
                      "optimizer.warmup_steps=0")


def tiny_cfg(*extra: str) -> config_lib.Config:
    return config_lib.load_config("decoder-tiny", TINY + ["train.steps=4", *extra])


def params_of(run) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(run.state.params))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 4-step decoder run (checkpoints 2 and 4); tests work on copies of it."""
    work = tmp_path_factory.mktemp("trained") / "run"
    trainer.train_loop(tiny_cfg(), work, show_progress=False)
    return work


def copy_of(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


# ---------------------------------------------------------------------------------------------- stale configs

@pytest.mark.parametrize("key,value", [
    ("model.d_model", "64"), ("model.positions", "rope"), ("objective.kind", "mlm"), ("data.tokenizer", "byte"),
    ("optimizer.lr", "0.01"), ("optimizer.weight_decay", "0.0"), ("train.seed", "1"), ("train.steps", "8"),
    ("train.batch_size", "16"), ("train.seq_len", "8"), ("train.grad_accum", "2"),
])
def test_a_changed_result_setting_is_refused_by_name(trained, key, value):
    saved = rundir.read_config(trained)
    changed = config_lib.apply_overrides(saved, [f"{key}={value}"])
    with pytest.raises(UserError, match=f"{key} .* -> ") as err:
        rundir.check_resume(trained, changed)
    assert "new --workdir" in str(err.value) and "\n" not in str(err.value)


def test_observation_settings_may_change_and_extend_only_grows(trained):
    saved = rundir.read_config(trained)
    rundir.check_resume(trained, config_lib.apply_overrides(saved, [
        "train.log_every=7", "train.eval_every=3", "train.checkpoint_every=5", "train.keep_checkpoints=9",
        "train.on_nonfinite=skip", "mesh.data=2", "mesh.tensor=4"]))
    longer = config_lib.apply_overrides(saved, ["train.steps=8"])
    rundir.check_resume(trained, longer, extend=True)
    with pytest.raises(UserError, match="below the saved"):
        rundir.check_resume(trained, config_lib.apply_overrides(saved, ["train.steps=2"]), extend=True)
    with pytest.raises(UserError, match="optimizer.lr"):  # --extend lets train.steps change, nothing else
        rundir.check_resume(trained, config_lib.apply_overrides(longer, ["optimizer.lr=0.5"]), extend=True)


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    """An attempt that logged past its last checkpoint and died: the resumed run re-logs those steps once."""
    work = tmp_path / "run"
    cfg = tiny_cfg("train.steps=6", "train.checkpoint_every=4")
    trainer.train_loop(cfg, work, show_progress=False, stop_after=4)
    with open(work / "metrics.jsonl", "a") as f:  # what a crash after logging step 6 (no checkpoint) leaves
        f.write(json.dumps({"step": 6, "loss": 123.0}) + "\n")
    trainer.train_loop(cfg, work, show_progress=False)
    steps = [json.loads(line)["step"] for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]
    assert all(json.loads(line)["loss"] != 123.0 for line in (work / "metrics.jsonl").read_text().splitlines())


# ---------------------------------------------------------------------------------------------- the lock

_HOLDER = """
import sys, time
from jaxformer.rundir import WorkdirLock
with WorkdirLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_second_process_is_refused_and_a_crashed_holder_leaves_no_stale_lock(tmp_path, capsys):
    work = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(work)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", "--workdir", str(work), "--no-progress", "--sample-tokens", "0",
                     "--set", *TINY, "train.steps=2"]) == 2
        err = capsys.readouterr().err
        assert f"process {holder.pid}" in err and "in use" in err and len(err.strip().splitlines()) == 1
        assert sorted(os.listdir(work)) == [".lock"]  # nothing written by the refused command
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no clean-up code runs
        holder.wait()
    assert main(["train", "--workdir", str(work), "--no-progress", "--sample-tokens", "0",
                 "--set", *TINY, "train.steps=2"]) == 0


def test_not_a_run_directory_is_left_untouched(tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.txt").write_text("precious")
    assert main(["train", "--workdir", str(folder), "--no-progress", "--set", *TINY, "train.steps=2"]) == 2
    assert "holds no jaxformer run" in capsys.readouterr().err
    assert sorted(os.listdir(folder)) == ["thesis.txt"] and (folder / "thesis.txt").read_text() == "precious"
    for command in (["eval"], ["sample", "--prompt", "a"], ["fill-mask", "a [MASK]"]):
        assert main([command[0], "--workdir", str(folder), *command[1:]]) == 2
        err = capsys.readouterr().err
        assert "No run in" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------- non-finite steps

def test_nonfinite_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    work = tmp_path / "run"
    # lr 1e6 blows the weights up on the first update; a later loss is inf/NaN
    cfg = tiny_cfg("train.steps=12", "optimizer.lr=1e6", "optimizer.grad_clip=0", "train.checkpoint_every=1")
    with pytest.raises(NonFiniteError, match=r"Step \d+ of .* non-finite .*last good checkpoint \(step \d+\)") as err:
        trainer.train_loop(cfg, work, show_progress=False)
    bad = int(str(err.value).split()[1])
    assert 1 <= bad < 12
    steps = Checkpointer(work).steps()
    assert max(steps) < bad  # nothing saved from the bad step on
    run = open_run(work)  # the kept checkpoint restores and verifies
    assert all(np.isfinite(p).all() for p in params_of(run))


def test_nonfinite_skip_leaves_state_unchanged_and_counts(tmp_path):
    work = tmp_path / "run"
    cfg = tiny_cfg("train.steps=8", "optimizer.lr=1e6", "optimizer.grad_clip=0", "train.on_nonfinite=skip",
                   "train.log_every=1")
    result = trainer.train_loop(cfg, work, show_progress=False)
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in rows if r["skipped"] > 0]
    assert skipped and result["step"] == 8  # it went on to the end
    assert all(np.isfinite(p).all() for p in params_of(result["run"]))
    assert skipped[-1] == 8 and rows[-1]["skipped"] == 1.0


def test_a_skipped_step_changes_neither_params_nor_optimizer_state():
    cfg = config_lib.resolve(tiny_cfg("optimizer.lr=1e6", "optimizer.grad_clip=0", "mesh.data=1"), vocab_size=40,
                             n_devices=1)
    mesh = parallel.make_mesh(cfg.mesh, jax.devices()[:1])
    state, shardings = train.init_train_state(cfg, mesh)
    step_fn = train.compile_train_step(shardings, mesh)
    batch = {"tokens": np.random.default_rng(0).integers(8, 40, (8, 17)).astype(np.int32)}
    history = []
    for _ in range(6):
        before = jax.device_get((state.params, state.opt_state))
        state, metrics = step_fn(state, batch, jax.random.key(0))
        history.append((before, jax.device_get((state.params, state.opt_state)), float(metrics["skipped"])))
    assert any(skipped for *_, skipped in history) and not history[0][2]  # the first update is finite
    for before, after, skipped in history:
        if skipped:
            for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
                np.testing.assert_array_equal(a, b)
    assert int(state.step) == 6  # the step counter (and so the data position) still advances


# ---------------------------------------------------------------------------------------------- preemption

def test_sigterm_saves_and_exits_75_then_the_same_command_resumes(tmp_path):
    work = tmp_path / "run"
    command = [sys.executable, "-m", "jaxformer.cli", "train", "--workdir", str(work), "--no-progress",
               "--sample-tokens", "0", "--set", *TINY, "train.steps=100000", "train.checkpoint_every=100000",
               "train.log_every=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (work / "metrics.jsonl").exists() or not (work / "metrics.jsonl").read_text().strip():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75, proc.stderr.read()
    saved = Checkpointer(work).steps()
    assert len(saved) == 1 and saved[0] >= 1
    assert open_run(work).step == saved[0]


# ---------------------------------------------------------------------------------------------- write failures

def test_failed_checkpoint_write_keeps_the_previous_one_and_the_run_resumes(tmp_path, monkeypatch):
    work = tmp_path / "run"
    cfg = tiny_cfg("train.steps=6")
    whole = trainer.train_loop(cfg, tmp_path / "whole", show_progress=False)

    real_save = Checkpointer.save

    def disk_full_at_step_4(self, state):
        if int(state.step) == 4:  # a half-written step directory, then the error a full disk gives
            partial = self.directory / "4.orbax-checkpoint-tmp-1234"
            partial.mkdir(parents=True)
            (partial / "state").write_bytes(b"\0" * 10)
            raise self._write_error(4, OSError(28, "No space left on device"))
        return real_save(self, state)

    monkeypatch.setattr(Checkpointer, "save", disk_full_at_step_4)
    with pytest.raises(CheckpointWriteError, match=r"step 4 .*No space left.*step 2\) is intact"):
        trainer.train_loop(cfg, work, show_progress=False)
    monkeypatch.setattr(Checkpointer, "save", real_save)
    assert Checkpointer(work).steps() == [2]
    resumed = trainer.train_loop(cfg, work, show_progress=False)
    assert resumed["step"] == 6 and not list((work / "checkpoints").glob("*tmp*"))
    for a, b in zip(params_of(resumed["run"]), params_of(whole["run"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_cli_reports_a_write_failure_in_one_sentence_with_status_4(tmp_path, monkeypatch, capsys):
    def fail(self, state):
        raise self._write_error(int(state.step), PermissionError(13, "Permission denied"))

    monkeypatch.setattr(Checkpointer, "save", fail)
    assert main(["train", "--workdir", str(tmp_path / "run"), "--no-progress", "--set", *TINY,
                 "train.steps=2"]) == 4
    err = capsys.readouterr().err
    assert "Permission denied" in err and "re-run" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------- foreign files

def test_a_tokenizer_that_does_not_match_the_checkpoint_is_refused(trained, tmp_path, capsys):
    work = copy_of(trained, tmp_path)
    (work / "tokenizer").rename(tmp_path / "moved")
    CharTokenizer.train("abcdefgh").save(work)  # same kind, other vocabulary
    for command in (["eval"], ["sample", "--prompt", "a"]):
        assert main([command[0], "--workdir", str(work), *command[1:]]) == 2
        err = capsys.readouterr().err
        assert "tokenizer" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--workdir", str(work), "--no-progress", "--set", *TINY, "train.steps=4"]) == 2
    assert "tokenizer" in capsys.readouterr().err


def test_a_checkpoint_from_a_newer_format_is_refused(trained, tmp_path, capsys):
    work = copy_of(trained, tmp_path)
    for meta in (work / "checkpoints").glob("*/meta/metadata"):
        data = json.loads(meta.read_text())
        meta.write_text(json.dumps({**data, "format": FORMAT + 1}))
    assert main(["eval", "--workdir", str(work)]) == 2
    err = capsys.readouterr().err
    assert f"format {FORMAT + 1}, newer than this jaxformer reads ({FORMAT})" in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------- multi-host

def test_slurm_and_tpu_launches_use_jax_cluster_detection(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    for name in [k for k in os.environ if k.startswith(("SLURM_", "JAX_", "TPU_", "OMPI_"))]:
        monkeypatch.delenv(name)
    assert distributed.maybe_initialize() is False and not calls  # a plain single process
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.maybe_initialize() is False  # a one-task SLURM job is a single process
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert distributed.maybe_initialize() is True
    assert calls[-1][0] == () and set(calls[-1][1]) == {"initialization_timeout"}  # JAX detects the rest
    monkeypatch.setenv("SLURM_NTASKS", "4")
    with pytest.raises(UserError, match="4 processes but JAX joined 2"):
        distributed.maybe_initialize()
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t0,t1")
    assert distributed.maybe_initialize() is True and calls[-1][0] == ()
