"""A nanoGPT-style PyTorch transformer: the fastest hand-written PyTorch peer of benchmarks/bench_train.py.

Written here for the benchmark (not imported by the package): pre-norm blocks with a fused QKV projection,
`F.scaled_dot_product_attention`, tanh-GELU MLP, learned positions, tied embeddings, the layout nanoGPT made the
reference for a small readable GPT. `causal=False` gives the BERT-shaped encoder of jaxformer's MLM benchmark
cell, so both sides do the same work: bidirectional attention, post-norm blocks, a normalised embedding, erf
GELU, and BERT's MLM head (dense + GELU + norm, then the tied vocabulary projection plus a bias) applied only at
the masked positions.

    model = NanoGPT(vocab=8192, seq_len=256, d_model=256, n_layer=4, n_heads=4, causal=True)
    loss = model(tokens_BxT, targets_BxT)                      # CLM: next-token loss over every position
    loss = model(inputs_BxT, targets_BxT, positions_BxM)       # MLM: loss at the chosen positions only
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BERT_EPS = 1e-12  # BERT's LayerNorm epsilon (jaxformer's MLM cell uses the same)


class Block(nn.Module):
    """Pre-norm GPT block (causal), or BERT's post-norm block with erf GELU (the encoder)."""

    def __init__(self, d_model: int, n_heads: int, causal: bool):
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        eps = 1e-5 if causal else BERT_EPS
        self.ln_1, self.ln_2 = nn.LayerNorm(d_model, eps=eps), nn.LayerNorm(d_model, eps=eps)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.fc, self.fc_out = nn.Linear(d_model, 4 * d_model), nn.Linear(4 * d_model, d_model)

    def attend(self, x_BxTxD: torch.Tensor) -> torch.Tensor:
        b, t, d = x_BxTxD.shape
        q, k, v = self.qkv(x_BxTxD).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        h = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(h.transpose(1, 2).reshape(b, t, d))

    def forward(self, x_BxTxD: torch.Tensor) -> torch.Tensor:
        if not self.causal:  # BERT: normalise after each residual add
            x_BxTxD = self.ln_1(x_BxTxD + self.attend(x_BxTxD))
            return self.ln_2(x_BxTxD + self.fc_out(F.gelu(self.fc(x_BxTxD))))
        x_BxTxD = x_BxTxD + self.attend(self.ln_1(x_BxTxD))
        return x_BxTxD + self.fc_out(F.gelu(self.fc(self.ln_2(x_BxTxD)), approximate="tanh"))


class NanoGPT(nn.Module):
    def __init__(self, *, vocab: int, seq_len: int, d_model: int, n_layer: int, n_heads: int, causal: bool):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d_model), nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, causal) for _ in range(n_layer))
        self.causal = causal
        if causal:
            self.ln_f = nn.LayerNorm(d_model)
        else:  # BERT: embedding norm; the post-norm blocks end normalised; the MLM head's transform and bias
            self.ln_emb = nn.LayerNorm(d_model, eps=BERT_EPS)
            self.head_fc, self.head_ln = nn.Linear(d_model, d_model), nn.LayerNorm(d_model, eps=BERT_EPS)
            self.head_bias = nn.Parameter(torch.zeros(vocab))
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, inputs_BxT: torch.Tensor, targets: torch.Tensor,
                positions_BxM: torch.Tensor | None = None) -> torch.Tensor:
        t = inputs_BxT.shape[1]
        x = self.wte(inputs_BxT) + self.wpe(torch.arange(t, device=inputs_BxT.device))
        if not self.causal:
            x = self.ln_emb(x)
        for block in self.blocks:
            x = block(x)
        if self.causal:
            logits = self.ln_f(x) @ self.wte.weight.T  # tied head
        else:  # MLM: the head at the chosen positions only
            x = torch.gather(x, 1, positions_BxM[..., None].expand(-1, -1, x.shape[-1]))
            logits = self.head_ln(F.gelu(self.head_fc(x))) @ self.wte.weight.T + self.head_bias
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
