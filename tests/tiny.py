"""The one tiny configuration the tests build on, so a change to a preset or a config key is made here once.

Tests that need another shape (say a 16-wide model checked against a numpy reference) pass overrides; tests of
the command line and the trainer get the same shape as `--set` strings from `tiny_overrides`.
"""

from __future__ import annotations

import math

from jaxformer import config as config_lib
from jaxformer.config import Config

VOCAB = 64  # vocabulary of resolved tiny configs (tests with their own token ids pass vocab_size)

# Small enough to compile in seconds, big enough for 4 heads, GQA and a tensor/fsdp split of the matrices.
SHAPE = {"model.n_layer": 2, "model.d_model": 32, "model.n_heads": 4, "train.seq_len": 16, "train.batch_size": 8}

PRESET = {"clm": "decoder-tiny", "mlm": "encoder-tiny", "classify": "encoder-tiny"}


def tiny_overrides(*extra: str, **sections: dict) -> list[str]:
    """The tiny shape as `section.key=value` strings (for `--set`), changed by `extra` strings and `sections`
    (e.g. model=dict(d_model=16)), one string per key; a later setting of a key wins over an earlier one."""
    settings = {key: str(value) for key, value in SHAPE.items()}
    for text in extra:
        key, _, value = text.partition("=")
        settings[key] = value
    for section, values in sections.items():
        settings.update({f"{section}.{key}": str(value) for key, value in values.items()})
    return [f"{key}={value}" for key, value in settings.items()]


def tiny_config(kind: str = "clm", *extra: str, resolved: bool = True, vocab_size: int = VOCAB,
                n_devices: int | None = None, **sections: dict) -> Config:
    """A tiny Config for objective `kind` (clm | mlm | classify), with `extra` override strings and `sections`
    (model=dict(...), train=dict(...), mesh=dict(...), ...) applied on top of the tiny shape.

    resolved=True (the default) returns `config.resolve`d values (vocab, head counts, mesh sizes filled in) for
    `n_devices` devices, by default as many as the mesh sizes name (1 when mesh.data is -1, the presets'
    default); resolved=False returns the config as the CLI would load it, for `trainer.train_loop`.
    A classify config gets 2 classes and an encoder (bidirectional) backbone unless `objective=` says otherwise.
    """
    objective = [f"objective.kind={kind}"] + (["objective.n_classes=2"] if kind == "classify" else [])
    cfg = config_lib.load_config(PRESET[kind], tiny_overrides(*objective, *extra, **sections))
    if not resolved:
        return cfg
    if n_devices is None:
        mesh = cfg.mesh
        n_devices = 1 if mesh.data == -1 else math.prod((mesh.data, mesh.fsdp, mesh.tensor, mesh.expert))
    return config_lib.resolve(cfg, vocab_size=vocab_size, n_devices=n_devices)

