"""`jaxformer import-hf` / `export-hf`: a Hugging Face model folder <-> an ordinary jaxformer run directory.

    import_run("gpt2-folder", "runs/gpt2")     # config.json, tokenizer/, checkpoints/0, imported.json
    export_run("runs/gpt2", "hf-out")           # config.json, model.safetensors (+ the tokenizer files)

An imported run is a run like any other: `open_run` reads it, and sample / eval / fill-mask / finetune work on it.
Its tokenizer is the model's own (data.tokenizer=hf), its special ids are recorded in data.special_ids, and its
checkpoint is step 0 with a fresh optimizer state (fine-tuning and further training start from there).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer import atomic, rundir, train
from jaxformer import config as config_lib
from jaxformer.checkpoint import Checkpointer
from jaxformer.data.hf_tokenizer import HFTokenizer
from jaxformer.errors import UserError
from jaxformer.hf.convert import FAMILIES, load_hf_params, repad_vocab, to_hf_bert, to_hf_gpt2
from jaxformer.hf.files import model_type, read_config

IMPORTED_FILE = "imported.json"  # where an imported run came from
# What the model and its tokenizer fix; everything else (train.*, data.source, optimizer.*) may be --set.
FIXED_KEYS = ("model.", "objective.kind", "data.tokenizer", "data.vocab_size", "data.special_ids")
# model.* keys that are about how the run computes, not what the model is: these may be --set on import.
SETTABLE_MODEL_KEYS = ("model.vocab_pad_multiple",)


def _check_new_dir(path: Path, flag: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{flag} {path} already exists and is not an empty directory: choose a new path, so that "
                        f"nothing in it is overwritten.")


def imported_config(folder: Path, cfg: config_lib.Config, tokenizer: HFTokenizer,
                    overrides: list[str]) -> config_lib.Config:
    """The imported model's config with the user's non-model overrides, resolved for this host."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key.startswith(FIXED_KEYS) and key not in SETTABLE_MODEL_KEYS:
            raise UserError(f"{key} comes from the model in {folder}, so import-hf does not take it from --set: "
                            f"leave it out.")
    cfg = config_lib.apply_overrides(replace(cfg, mesh=config_lib.MeshConfig()), overrides)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise UserError(f"The tokenizer in {folder} has {tokenizer.vocab_size} tokens but the model only "
                        f"{cfg.model.vocab_size}: the folder's tokenizer does not belong to its model.")
    return config_lib.resolve(cfg, n_devices=jax.device_count(), special_ids=tokenizer.special_ids.spec())


def import_run(folder: str | Path, workdir: str | Path, overrides: list[str] = ()) -> dict:
    """Turn a local HF GPT-2 / BERT folder (config.json, weights, tokenizer.json) into a run directory."""
    folder, workdir = Path(folder), Path(workdir)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a directory: give the folder of a saved Hugging Face model (config.json, "
                        f"model.safetensors, tokenizer.json).")
    _check_new_dir(workdir, "--workdir")
    kind = model_type(read_config(folder))
    tokenizer = HFTokenizer.from_folder(folder)  # before the (maybe large) weights: a missing file fails fast
    hf_cfg, graphdef, params = load_hf_params(folder)
    cfg = imported_config(folder, hf_cfg, tokenizer, list(overrides))
    if cfg.model.padded_vocab_size != hf_cfg.model.padded_vocab_size:  # --set model.vocab_pad_multiple
        graphdef, params = repad_vocab(cfg, graphdef, params)
    abstract = train.abstract_state(cfg)
    params = nnx.split(nnx.merge(graphdef, params), nnx.Param)[1]
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=abstract.tx.init(params),
                             graphdef=abstract.graphdef, tx=abstract.tx, cfg=cfg)
    with rundir.WorkdirLock(workdir, enabled=jax.process_index() == 0):
        if jax.process_index() == 0:
            rundir.save_config(workdir, cfg)
            tokenizer.save(workdir)
            atomic.write_text(workdir / IMPORTED_FILE, json.dumps({"from": str(folder.absolute()),
                                                                   "model_type": kind}) + "\n")
        ckpt = Checkpointer(workdir, cfg.train.keep_checkpoints, tokenizer_fingerprint=tokenizer.fingerprint)
        try:
            ckpt.save(state)
        finally:
            ckpt.close()
    n_params = sum(x.size for x in jax.tree.leaves(params))
    return {"workdir": str(workdir), "model_type": kind, "objective": cfg.objective.kind, "n_params": int(n_params),
            "vocab_size": tokenizer.vocab_size}


def export_run(workdir: str | Path, out: str | Path) -> dict:
    """Write the run's newest checkpoint as a HF model folder: GPT-2 for a clm run, BERT for an mlm run, with
    the tokenizer files when the run's tokenizer is a Hugging Face one."""
    from jaxformer.run import open_run

    workdir, out = Path(workdir), Path(out)
    _check_new_dir(out, "--out")
    run = open_run(workdir)
    kind = {"clm": "gpt2", "mlm": "bert"}.get(run.cfg.objective.kind)
    if kind is None:
        raise UserError(f"{workdir} holds a fine-tuned classifier (objective.kind={run.cfg.objective.kind}): "
                        f"export-hf writes language models, GPT-2 from a clm run or BERT from an mlm run.")
    assert kind in FAMILIES
    ids = run.tokenizer.special_ids
    params = jax.device_get(run.state.params)
    if kind == "gpt2":
        to_hf_gpt2(run.cfg, params, out, bos_token_id=ids.bos, eos_token_id=ids.eos, pad_token_id=ids.pad)
    else:
        to_hf_bert(run.cfg, params, out, pad_token_id=ids.pad)
    with_tokenizer = isinstance(run.tokenizer, HFTokenizer)
    if with_tokenizer:
        run.tokenizer.save_pretrained(out)
    return {"out": str(out), "model_type": kind, "step": run.step, "tokenizer": with_tokenizer}
