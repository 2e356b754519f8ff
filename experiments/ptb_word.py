"""A CPU-sized decoder on word-level Penn Treebank, scored on the test file (perplexity per word).

Mikolov's 10k-word version (@data/ptb, see its SOURCE.md): trained on ptb.train.txt only (its last 10% is the
in-training validation split); the test file is scored afterwards with `jaxformer eval`, every token once.

Command:  make ptb-word
          jaxformer train --experiment ptb-word --workdir runs/ptb-word
          jaxformer eval --workdir runs/ptb-word --data text:@data/ptb/ptb.test.txt
Expected: to be measured. Reference points on the same test split: a Kneser-Ney 5-gram 141.2 perplexity
          (Mikolov & Zweig 2012), a small non-regularised 2-layer LSTM 114.5 (Zaremba et al. 2014).
Measured: to be measured (needs `data.tokenizer=word`, being added separately; this file already names it).
"""

PRESET = "decoder-tiny"
OVERRIDES = [
    "data.source=text:@data/ptb/ptb.train.txt", "data.tokenizer=word",
    "model.n_layer=4", "model.d_model=256", "model.n_heads=4", "model.positions=rope", "model.dropout=0.2",
    "train.seq_len=64", "train.batch_size=32", "train.steps=2000", "train.eval_every=250", "train.log_every=50",
    "train.checkpoint_every=500", "optimizer.lr=1e-3", "optimizer.warmup_steps=100", "optimizer.weight_decay=0.1",
]
