"""Every notebook source executes top to bottom at smoke scale (a few training steps), as `make notebooks` would."""

import os
from pathlib import Path

import pytest
from conftest import FAST_COMPILE_FLAGS

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_smoke_scale(source, tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("NOTEBOOK_STEPS", "4")
    monkeypatch.setenv("NOTEBOOK_OUT", str(tmp_path / "runs"))
    monkeypatch.setenv("NOTEBOOK_RESULTS", str(tmp_path / "no-results"))  # the small-run / synthetic fallbacks
    for name in ("NOTEBOOK_RUN", "NOTEBOOK_GPT2", "NOTEBOOK_BERT"):  # optional inputs a developer may have set
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the kernel imports this checkout's jaxformer, not whichever one happens to be installed
    repo = str(source.parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p))
    # At smoke scale a notebook compiles more than it runs: the suite's fast-compiling XLA settings (the four
    # notebooks one after the other: 69 s without them, 60 s at -O0, 52 s with both).
    fast = " ".join(f"{flag}={value}" for flag, value in FAST_COMPILE_FLAGS.items())
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=1 {fast}")
    notebook = jupytext.read(source)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(source.parent)}}).execute()
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert os.listdir(tmp_path / "runs")  # it trained into the given folder, not into the repository
