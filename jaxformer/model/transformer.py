"""Block and Transformer: one module tree for the decoder (causal) and the encoder (bidirectional).

Causality is an argument of the call, chosen by the objective, not a second model class. The model returns
hidden states; the heads (`logits`, `mlm_logits`) are separate methods so a loss can project only the
positions it needs (the MLM loss projects just the masked ones).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer import objectives
from jaxformer.config import Config, ModelConfig
from jaxformer.model import dot_grads
from jaxformer.model.attention import Attention, KVCache, init_cache
from jaxformer.model.layers import MLP, Linear, Norm, activation, dropout, dtypes
from jaxformer.model.moe import MoE
from jaxformer.model.positions import sinusoidal


def layer_window(cfg: ModelConfig, layer: int) -> int:
    """Sliding window of `layer` (0 = global): every `global_every`-th layer stays global."""
    if not cfg.window or (cfg.global_every and (layer + 1) % cfg.global_every == 0):
        return 0
    return cfg.window


def layer_is_moe(cfg: ModelConfig, layer: int) -> bool:
    return cfg.n_experts > 0 and (layer + 1) % cfg.moe_every == 0


def last_block_skips_rows(cfg: ModelConfig) -> bool:
    """Whether `Transformer.__call__(rows_BxR=...)` runs the last block at those rows alone
    (model.last_block_slots_only). Exact: each row's output depends on the other positions only through keys and
    values, except under MoE (expert capacity and the balancing loss depend on every token), which runs the whole
    block and gathers the rows after it."""
    return cfg.last_block_slots_only and not layer_is_moe(cfg, cfg.n_layer - 1)


class Block(nnx.Module):
    """Attention + MLP (or MoE) with residuals; pre-norm by default, post-norm (BERT) with `post_norm`.

    `shared`: the first layer's block, whose attention (and its norm) or MLP (and its norm) this block reuses
    when `model.share_layers` says so: the same module objects, so one copy of their parameters."""

    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs, shared: Block | None = None):
        self.post_norm, self.rate = cfg.post_norm, cfg.dropout
        share = cfg.share_layers if shared is not None else "none"
        if share == "attention":
            self.attn_norm, self.attn = shared.attn_norm, shared.attn
        else:
            self.attn_norm = Norm(cfg)
            self.attn = Attention(cfg, window=layer_window(cfg, layer), rngs=rngs)
        if share == "mlp":
            self.mlp_norm, self.mlp = shared.mlp_norm, shared.mlp
        else:
            self.mlp_norm = Norm(cfg)
            self.mlp = MoE(cfg, rngs=rngs) if layer_is_moe(cfg, layer) else MLP(cfg, rngs=rngs)

    def __call__(self, x_BxTxD, positions_BxT, *, causal: bool, segment_ids_BxT=None, cache=None, rng=None,
                 rows_BxR=None):
        """`rows_BxR`: compute the block's output at these positions only, [B, R, D] (keys and values still come
        from all T); None: at every position. Everything after the key/value projections is row-wise."""
        rng_attn, rng_mlp = jax.random.split(rng) if rng is not None else (None, None)
        x_BxRxD = x_BxTxD if rows_BxR is None else jnp.take_along_axis(x_BxTxD, rows_BxR[..., None], axis=1)
        if self.post_norm:
            h, cache = self.attn(x_BxTxD, positions_BxT, causal=causal, segment_ids_BxT=segment_ids_BxT,
                                 cache=cache, query_rows_BxR=rows_BxR)
            x_BxRxD = self.attn_norm(x_BxRxD + dropout(h, self.rate, rng_attn))
            h, aux = self.mlp(x_BxRxD)
            return self.mlp_norm(x_BxRxD + dropout(h, self.rate, rng_mlp)), aux, cache
        h, cache = self.attn(self.attn_norm(x_BxTxD), positions_BxT, causal=causal,
                             segment_ids_BxT=segment_ids_BxT, cache=cache, query_rows_BxR=rows_BxR)
        x_BxRxD = x_BxRxD + dropout(h, self.rate, rng_attn)
        h, aux = self.mlp(self.mlp_norm(x_BxRxD))
        return x_BxRxD + dropout(h, self.rate, rng_mlp), aux, cache


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, mlm_head: bool = False, n_classes: int = 0, pair_head: bool = False,
                 rngs: nnx.Rngs):
        param_dtype, self.dtype = dtypes(cfg)
        self.cfg = cfg
        d, e = cfg.d_model, embed_width(cfg)
        # The embedding width's logical axis: d_model's ("embed"), or ALBERT's narrower "embed_factor".
        ew = "embed" if e == d else "embed_factor"
        normal = jax.nn.initializers.normal(cfg.init_std)
        # model.vocab_pad_multiple: the vocabulary tables get `pad` extra rows, initialised to zero so that the
        # real rows draw the same values as without padding; the head cuts its logits back to vocab_size, so the
        # extra rows get zero gradients and stay zero.
        pad = cfg.padded_vocab_size - cfg.vocab_size
        self.embed = nnx.Param(jnp.pad(normal(rngs.params(), (cfg.vocab_size, e), param_dtype), ((0, pad), (0, 0))),
                               axes=("vocab", ew))
        self.pos_embed = nnx.Param(normal(rngs.params(), (cfg.max_seq_len, e), param_dtype),
                                   axes=(None, ew)) if cfg.positions == "learned" else None
        self.type_embed = nnx.Param(normal(rngs.params(), (cfg.type_vocab_size, e), param_dtype),
                                    axes=(None, ew)) if cfg.type_vocab_size else None
        self.embed_norm = Norm(cfg, width=e) if cfg.embed_norm else None
        # ALBERT: embeddings of width E < D, projected up once before the first block.
        self.embed_proj = Linear("...e,ed->...d", (e, d), (ew, "embed"), bias_shape=(d,), bias_axes=("norm",),
                                 cfg=cfg, rngs=rngs) if e != d else None
        first = Block(cfg, 0, rngs=rngs)
        if cfg.share_layers == "all":  # one block object run n_layer times
            blocks = [first] * cfg.n_layer
        else:
            shared = first if cfg.share_layers != "none" else None
            blocks = [first] + [Block(cfg, i, rngs=rngs, shared=shared) for i in range(1, cfg.n_layer)]
        self.blocks = nnx.List(blocks)
        self.final_norm = None if cfg.post_norm else Norm(cfg)  # post-norm blocks already end normalised
        self.lm_head = None if cfg.tie_embeddings else Linear(
            "...e,ev->...v", (e, cfg.vocab_size), (ew, "vocab"), cfg=cfg, rngs=rngs)
        if self.lm_head is not None and pad:
            self.lm_head.kernel = nnx.Param(jnp.pad(self.lm_head.kernel[...], ((0, 0), (0, pad))), axes=(ew, "vocab"))
        if mlm_head:  # BERT: dense + activation + norm, then the (tied) vocabulary projection plus a bias
            # (ALBERT: the dense maps D to the embedding width E, so the tied E-wide table projects it)
            self.mlm_transform = Linear("...d,de->...e", (d, e), ("embed", "mlp" if e == d else ew),
                                        bias_shape=(e,), bias_axes=("norm",), cfg=cfg, rngs=rngs)
            self.mlm_norm = Norm(cfg, width=e)
            self.mlm_bias = nnx.Param(jnp.zeros((cfg.padded_vocab_size,), param_dtype), axes=("vocab",))
        else:
            self.mlm_transform = self.mlm_norm = self.mlm_bias = None
        # Sequence classification (fine-tuning): pooled hidden state [B, D] -> class logits [B, n_classes].
        # Created last, so the other parameters draw the same initial values with or without it.
        self.classifier = Linear("...d,dc->...c", (d, n_classes), ("embed", None), bias_shape=(n_classes,),
                                 bias_axes=(None,), cfg=cfg, rngs=rngs) if n_classes else None
        # Sentence-pair pretraining (NSP / SOP): BERT's pooler (dense + tanh on [CLS]) and a 2-way linear.
        if pair_head:
            self.pooler = Linear("...d,de->...e", (d, d), ("embed", "mlp"), bias_shape=(d,), bias_axes=("norm",),
                                 cfg=cfg, rngs=rngs)
            self.pair_head = Linear("...d,dc->...c", (d, 2), ("embed", None), bias_shape=(2,), bias_axes=(None,),
                                    cfg=cfg, rngs=rngs)
        else:
            self.pooler = self.pair_head = None

    def __call__(self, tokens_BxT: jax.Array, *, causal: bool, positions_BxT: jax.Array | None = None,
                 segment_ids_BxT: jax.Array | None = None, rng: jax.Array | None = None,
                 cache: list[KVCache] | None = None, token_types_BxT: jax.Array | None = None,
                 rows_BxR: jax.Array | None = None) -> tuple[jax.Array, jax.Array, list[KVCache] | None]:
        """Tokens -> final hidden states [B, T, D], the summed MoE auxiliary loss, and the updated KV cache.

        `rng=None` is deterministic (no dropout). With `cache`, the tokens are written at their positions.
        `token_types_BxT`: segment (A/B) ids for the type embeddings; None is type 0 everywhere (as in BERT).
        `segment_ids_BxT` is something else: the packing/padding ids that limit attention.
        `rows_BxR`: return the final states at these positions only, [B, R, D]; the last block computes nothing
        else where `last_block_skips_rows` allows (the masked-LM loss reads R = 15% of the positions). No KV cache
        with it.
        """
        cfg = self.cfg
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
        x_BxTxD = jnp.take(self.embed[...], tokens_BxT, axis=0).astype(self.dtype)
        if cfg.positions == "learned":
            x_BxTxD = x_BxTxD + jnp.take(self.pos_embed[...], jnp.maximum(positions_BxT, 0), axis=0).astype(self.dtype)
        elif cfg.positions == "sinusoidal":
            x_BxTxD = x_BxTxD + sinusoidal(positions_BxT, x_BxTxD.shape[-1]).astype(self.dtype)
        if self.type_embed is not None:
            types_BxT = jnp.zeros_like(tokens_BxT) if token_types_BxT is None else token_types_BxT
            x_BxTxD = x_BxTxD + jnp.take(self.type_embed[...], types_BxT, axis=0).astype(self.dtype)
        if self.embed_norm is not None:
            x_BxTxD = self.embed_norm(x_BxTxD)
        rngs = jax.random.split(rng, cfg.n_layer + 1) if rng is not None else [None] * (cfg.n_layer + 1)
        x_BxTxD = dropout(x_BxTxD, cfg.dropout, rngs[-1])
        if self.embed_proj is not None:
            x_BxTxD = self.embed_proj(x_BxTxD)

        def run_block(block, x, positions, segment_ids, layer_cache, layer_rng, rows):
            return block(x, positions, causal=causal, segment_ids_BxT=segment_ids, cache=layer_cache, rng=layer_rng,
                         rows_BxR=rows)

        if cfg.remat:
            run_block = nnx.remat(run_block)
        aux_total = jnp.zeros((), jnp.float32)
        new_cache = [] if cache is not None else None
        skip_rows = rows_BxR is not None and last_block_skips_rows(cfg)
        for i, block in enumerate(self.blocks):
            rows = rows_BxR if skip_rows and i == cfg.n_layer - 1 else None
            x_BxTxD, aux, layer_cache = run_block(block, x_BxTxD, positions_BxT, segment_ids_BxT,
                                                  None if cache is None else cache[i], rngs[i], rows)
            aux_total = aux_total + aux
            if cache is not None:
                new_cache.append(layer_cache)
        if rows_BxR is not None and not skip_rows:
            x_BxTxD = jnp.take_along_axis(x_BxTxD, rows_BxR[..., None], axis=1)
        if self.final_norm is not None:
            x_BxTxD = self.final_norm(x_BxTxD)
        return x_BxTxD, aux_total, new_cache

    def logits(self, h_xD: jax.Array) -> jax.Array:
        """LM head on any [..., D] hidden states -> [..., V] (tied to the embedding unless configured not)."""
        return self.vocab_logits(*self.lm_inputs(h_xD))

    def mlm_logits(self, h_xD: jax.Array) -> jax.Array:
        """BERT's MLM head on [..., D] hidden states (call it on the masked positions only)."""
        return self.vocab_logits(*self.mlm_inputs(h_xD))

    def lm_inputs(self, h_xD: jax.Array) -> tuple[jax.Array, None]:
        """What the LM head feeds its vocabulary projection: [..., E] vectors, and no bias. With factorised
        embeddings the states go back to width E through the transposed projection (tied to it as the vocabulary
        matrix is tied to the table)."""
        if self.embed_proj is not None:
            h_xD = jnp.einsum("...d,ed->...e", h_xD.astype(self.dtype), self.embed_proj.kernel[...].astype(self.dtype))
        return h_xD, None

    def mlm_inputs(self, h_xD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """What BERT's MLM head feeds its vocabulary projection: dense + activation + norm -> [..., E] (ALBERT's
        dense maps to the embedding width E), and the vocabulary bias [U]."""
        h = activation("gelu", self.cfg.gelu_approximate)(self.mlm_transform(h_xD))
        return self.mlm_norm(h), self.mlm_bias[...]

    def vocab_table(self) -> tuple[jax.Array, str]:
        """The vocabulary projection's matrix as stored, with its einsum axes: the tied embedding [U, E] ("ve") or
        the untied head's kernel [E, U] ("ev"). U = the padded vocabulary."""
        if self.lm_head is not None:
            return self.lm_head.kernel[...], "ev"
        return self.embed[...], "ve"

    def vocab_logits(self, h_xE: jax.Array, bias_U: jax.Array | None = None) -> jax.Array:
        """The vocabulary projection of embedding-width [..., E] vectors (E = D unless factorised), plus `bias_U`,
        -> [..., vocab_size].

        The one place where padded vocabulary rows (model.vocab_pad_multiple) end: the matmul runs at the padded
        width (the shape accelerators tile well), then the logits are cut back to the true vocabulary, so no loss,
        metric, sampler or export ever sees a padded column (the fused head of objectives/xent.py cuts the same
        way)."""
        table, axes = self.vocab_table()
        logits_xU = dot_grads.einsum(f"...e,{axes}->...v", h_xE.astype(self.dtype), table.astype(self.dtype),
                                     impl=self.cfg.dot_grads)
        if bias_U is not None:
            logits_xU = logits_xU + bias_U.astype(self.dtype)
        v = self.cfg.vocab_size
        return logits_xU if logits_xU.shape[-1] == v else logits_xU[..., :v]

    def pair_logits(self, cls_BxD: jax.Array) -> jax.Array:
        """The sentence-pair head on the [CLS] hidden states: pooler (dense + tanh), then 2 logits [B, 2]."""
        return self.pair_head(jnp.tanh(self.pooler(cls_BxD)))

    def classify(self, pooled_BxD: jax.Array) -> jax.Array:
        """The classifier head on pooled [B, D] hidden states -> [B, n_classes] logits."""
        return self.classifier(pooled_BxD)

    def init_cache(self, batch: int, length: int | None = None) -> list[KVCache]:
        return [init_cache(self.cfg, batch, length or self.cfg.max_seq_len) for _ in range(self.cfg.n_layer)]


def build_model(cfg: Config, seed: int = 0) -> Transformer:
    """The model for a resolved config (vocab and head counts filled in by `config.resolve`), with the head that
    its objective trains."""
    head = objectives.for_config(cfg).head
    return Transformer(cfg.model, mlm_head=head == "mlm", n_classes=cfg.objective.n_classes if head == "classifier"
                       else 0, pair_head=head == "mlm" and bool(cfg.objective.pair_task), rngs=nnx.Rngs(seed))


def embed_width(cfg: ModelConfig) -> int:
    """E: the width of the embedding tables (ALBERT's factorisation), d_model unless model.embed_dim is set."""
    return cfg.embed_dim or cfg.d_model
