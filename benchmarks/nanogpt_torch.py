"""A nanoGPT-style PyTorch transformer: the fastest hand-written PyTorch peer of benchmarks/bench_train.py.

Written here for the benchmark (not imported by the package): pre-norm blocks with a fused QKV projection,
`F.scaled_dot_product_attention`, tanh-GELU MLP, learned positions, tied embeddings, the layout nanoGPT made the
reference for a small readable GPT. `causal=False` gives the encoder variant with the same blocks: bidirectional
attention, and the vocabulary head applied only at the masked positions, as jaxformer's MLM does.

    model = NanoGPT(vocab=8192, seq_len=256, d_model=256, n_layer=4, n_heads=4, causal=True)
    loss = model(tokens_BxT, targets_BxT)                      # CLM: next-token loss over every position
    loss = model(inputs_BxT, targets_BxT, positions_BxM)       # MLM: loss at the chosen positions only
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, causal: bool):
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.ln_1, self.ln_2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.fc, self.fc_out = nn.Linear(d_model, 4 * d_model), nn.Linear(4 * d_model, d_model)

    def forward(self, x_BxTxD: torch.Tensor) -> torch.Tensor:
        b, t, d = x_BxTxD.shape
        q, k, v = self.qkv(self.ln_1(x_BxTxD)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        h = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x_BxTxD = x_BxTxD + self.proj(h.transpose(1, 2).reshape(b, t, d))
        return x_BxTxD + self.fc_out(F.gelu(self.fc(self.ln_2(x_BxTxD)), approximate="tanh"))


class NanoGPT(nn.Module):
    def __init__(self, *, vocab: int, seq_len: int, d_model: int, n_layer: int, n_heads: int, causal: bool):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d_model), nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, causal) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
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
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        if positions_BxM is not None:  # MLM: project only the chosen positions
            x = torch.gather(x, 1, positions_BxM[..., None].expand(-1, -1, x.shape[-1]))
        logits = x @ self.wte.weight.T  # tied head
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
