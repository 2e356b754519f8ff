"""Typed configs, named presets and `KEY=VALUE` overrides.

A run is fully described by one `Config` (saved as `<workdir>/config.json`). Every architectural variant is a
value here, never a copy of a module: follow a field name (say `n_kv_heads`) into `jaxformer/model/`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any

from jaxformer.errors import UserError


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 0  # 0: taken from the tokenizer
    # Accelerators: allocate the embedding table / LM head (and MLM bias) with the vocabulary rounded up to a
    # multiple of this (GPT-2's 50257 -> 50304 with 128), so the head matmul tiles evenly and splits over the
    # tensor axis. The padded rows are never read: the head's logits are cut back to vocab_size. 0 or 1: off.
    # -1 (auto, resolved when a run is made): 128 on GPUs and TPUs (GPT-2 small on an H200 ran 0.80x unpadded),
    # 0 on CPUs, where the presets keep their published shapes.
    vocab_pad_multiple: int = -1
    n_layer: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int = 0  # 0: = n_heads (MHA); 1: MQA; in between: GQA
    head_dim: int = 0  # 0: d_model // n_heads
    mlp: str = "gelu"  # gelu | swiglu | geglu
    mlp_ratio: float = 4.0  # hidden width = mlp_ratio * d_model (use 8/3 for the gated variants at equal params)
    gelu_approximate: bool = True  # GPT-2 uses the tanh approximation, BERT the exact erf form
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    post_norm: bool = False  # False: pre-norm (GPT-2 and later); True: post-norm (original BERT)
    embed_norm: bool = False  # norm right after the embeddings (BERT)
    positions: str = "learned"  # learned | sinusoidal | rope
    rope_theta: float = 10000.0
    max_seq_len: int = 0  # 0: train.seq_len
    window: int = 0  # sliding attention window in tokens; 0: global attention
    global_every: int = 0  # with a window: every k-th layer (k-1, 2k-1, ...) stays global; 0: none
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    # Mixture of experts: 0 experts = dense MLP everywhere.
    n_experts: int = 0
    moe_top_k: int = 2
    moe_capacity_factor: float = 1.25
    moe_aux_weight: float = 0.01  # weight of the load-balancing loss added to the objective
    moe_every: int = 1  # MoE in every k-th layer (layer k-1, 2k-1, ...), dense MLP elsewhere
    init_std: float = 0.02
    param_dtype: str = "float32"
    # compute dtype: float32 | bfloat16 | auto (resolved when a run is made: bfloat16 on GPUs and TPUs, with fp32
    # master weights by param_dtype; float32 on CPUs, where XLA's bf16 matmuls are slower than its fp32 ones)
    dtype: str = "auto"
    remat: bool = False  # recompute each block's activations in the backward pass
    # Attention kernel: auto | xla | blocked | cpp | cudnn | pallas (jaxformer/model/attention_kernels.py). auto:
    # cuDNN flash on GPUs in half precision, Pallas flash on TPUs, the C++ kernel (else blocked) on CPUs, XLA
    # otherwise. Same function, so runs may switch on resume.
    attention_impl: str = "auto"
    # How weight gradients (every projection, the MoE experts, the vocabulary head) are computed: auto | xla | rowmajor
    # (jaxformer/model/dot_grads.py). auto: rowmajor on CPUs (the smaller factor transposed first, so the product
    # is a matmul YNNPACK takes), xla elsewhere. Same gradients, so runs may switch on resume.
    dot_grads: str = "auto"
    # Fused vocabulary head + cross-entropy over this many predicted slots at a time (0: whole logits); the full
    # fp32 logits are never materialised (jaxformer/objectives/xent.py). Same loss, so runs may switch on resume.
    # -1 (auto, resolved when a run is made): 8192 on GPUs and TPUs (GPT-2 small on an H200: 1.02x the tokens/s,
    # 74% of the scratch memory), 0 on CPUs (no faster there).
    xent_chunk: int = -1
    # Masked LM and classification by [CLS] / last token: the last block computes only the positions the loss
    # reads (its queries, attention output and MLP at the masked slots and a pair task's [CLS], or at the pooled
    # token; keys and values at every position), since nothing else of it reaches the loss
    # (jaxformer/objectives/mlm.py, classify.py; a distilled student and its teacher too, without
    # objective.distill_hidden). The whole block under MoE in the last layer (capacity and the
    # balancing loss see every token). Same loss (dropout there draws its masks at the kept rows only), so runs may
    # switch on resume.
    last_block_slots_only: bool = True
    # Segment (token-type) embeddings: how many types (BERT: 2, sentence A / B); 0 = none.
    type_vocab_size: int = 0
    # Factorised embeddings (ALBERT): tables of width embed_dim, projected to d_model; 0 = d_model (no projection).
    embed_dim: int = 0
    # Cross-layer parameter sharing (ALBERT): none | all | attention | mlp. Shared = one module object run by
    # every layer, so the state holds one copy and its gradient sums over the layers.
    share_layers: str = "none"

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the vocabulary tables: vocab_size rounded up to `vocab_pad_multiple` (vocab_size when off)."""
        multiple = max(self.vocab_pad_multiple, 1)
        return -(-self.vocab_size // multiple) * multiple


@dataclass(frozen=True)
class ObjectiveConfig:
    # clm (decoder, causal) | mlm (encoder, bidirectional) | classify | tag (fine-tuning) | sft (instruction tuning)
    kind: str = "clm"
    mask_rate: float = 0.15
    mask_token_frac: float = 0.8  # of the selected positions: replaced by [MASK]
    random_token_frac: float = 0.1  # replaced by a random token; the rest keep their token
    # Sequence classification (`jaxformer finetune`), ignored by clm/mlm. Set by finetune from the pretrained run
    # and the task; they live here because they change the step, the parameters (the head) and the optimizer
    # state, so a run must resume with the same values (rundir checks the objective section).
    task: str = ""  # sst2 | rt-polarity | wnut17 | path to a .tsv/.jsonl/.conll (recorded for the run directory)
    n_classes: int = 0  # classifier outputs (classes or tags); finetune takes it from the task's labels
    causal: bool = False  # attention of the backbone: True for a decoder (CLM) backbone
    pooling: str = ""  # cls | last | mean; empty: cls for an encoder backbone, last for a decoder
    linear_probe: bool = False  # train only the classifier head; the backbone stays bit-identical
    valid: str = ""  # a .tsv/.jsonl of labelled validation examples; empty: the task's dev split or a held-out 10%
    text_column: str = ""  # the task files' text / label column; empty: the usual names (text, sentence, ...)
    label_column: str = ""
    # Instruction tuning (`jaxformer sft`, objective.kind=sft; task/valid above name its pairs): the chat template
    # (empty: jaxformer.data.sft.DEFAULT_TEMPLATE) and the pair files' field names (empty: the usual names).
    template: str = ""
    prompt_column: str = ""
    response_column: str = ""
    # Knowledge distillation (`jaxformer distill --teacher DIR`): the student's loss is
    # distill_alpha * T^2 * KL(teacher_T || student_T) + (1 - distill_alpha) * hard loss + distill_hidden * cosine
    # term, at the prediction slots of clm/mlm. The teacher fields are recorded by distill, never --set: they name
    # the frozen teacher the run must resume with (see jaxformer/distill.py).
    teacher: str = ""  # the teacher run's directory (absolute); empty: no distillation
    teacher_step: int = 0  # the teacher checkpoint the student learns from
    teacher_fingerprint: str = ""  # digest of that checkpoint's parameters (a changed teacher is refused)
    # Defaults: what helped most at CPU scale (README, "Distillation"); DistilBERT's T=2 hurt there.
    distill_alpha: float = 0.9  # weight of the soft-target term; the hard loss gets 1 - distill_alpha
    temperature: float = 1.0  # softmax temperature of teacher and student in the soft term (scaled back by T^2)
    distill_hidden: float = 0.0  # weight of DistilBERT's 1 - cos(student, teacher) on final hidden states
    # Sentence-pair pretraining beside MLM (objective.kind=mlm): "" (none) | nsp (BERT: B is the next segment or
    # one from another document) | sop (ALBERT: two consecutive segments, in order or swapped). The loss is MLM
    # plus the pair loss on the pooled [CLS] state; batches become `[CLS] A [SEP] B [SEP]` (data/pairs.py).
    pair_task: str = ""
    # What a "document" is for the pairs: source (the source's documents, EOS-separated in the token stream) |
    # paragraphs (also split at blank lines: speeches in tiny shakespeare, a one-document corpus).
    pair_documents: str = "source"


@dataclass(frozen=True)
class DataConfig:
    # builtin | text:<file|glob|dir> | tfds:<name>[/config][:split]; a path written @data/<path> is <path> under
    # the data root ($JAXFORMER_DATA, default ./data)
    source: str = "builtin"
    # char | byte | bpe | unigram | word (whitespace words + line ends, e.g. PTB) | hf (a Hugging Face model's own,
    # from import-hf)
    tokenizer: str = "char"
    vocab_size: int = 8192  # for bpe / unigram (char and word keep every symbol of the training split)
    valid_fraction: float = 0.1  # the last fraction of the corpus is the validation split
    packing: bool = False  # document-aware windows: attention and positions never cross documents
    cache_dir: str = ""  # token cache; empty: ~/.cache/jaxformer
    # Where PAD/EOS/MASK/... are in the vocabulary, recorded from the tokenizer by `resolve` (the jitted step sees
    # the config, not the tokenizer): empty for jaxformer's fixed table, "pad=..,eos=..,..." for an imported one.
    special_ids: str = ""


@dataclass(frozen=True)
class OptimizerConfig:
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at train.steps
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.1  # on matrices only (biases, norms and 1-D params are not decayed)
    grad_clip: float = 1.0  # global norm; 0: off


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 500
    batch_size: int = 16  # global batch, in sequences
    seq_len: int = 128
    grad_accum: int = 1  # micro-batches per step; batch_size must divide by it
    seed: int = 0
    log_every: int = 25
    eval_every: int = 250
    eval_batches: int = 8
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop (exit 3, naming the step) | skip the update
    # Fine-tuning: stop after this many evaluations without a better validation accuracy (0: off). It decides
    # where training ends, so a run resumes with the value it started with.
    early_stop_patience: int = 0


@dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # -1: all devices left over by the other axes
    fsdp: int = 1
    tensor: int = 1
    expert: int = 1


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


SHARE_LAYERS = ("none", "all", "attention", "mlp")
PAIR_TASKS = ("", "nsp", "sop")
# model.xent_chunk=-1 (auto) on GPUs and TPUs: predicted slots per chunk of the fused vocabulary head
ACCELERATOR_XENT_CHUNK = 8192
# model.vocab_pad_multiple=-1 (auto) on GPUs and TPUs: the vocabulary tables' rows rounded up to a multiple of this
ACCELERATOR_VOCAB_PAD = 128

# ---------------------------------------------------------------------------------------------- presets

def _preset(**sections: dict) -> Config:
    cfg = Config()
    for name, values in sections.items():
        cfg = replace(cfg, **{name: replace(getattr(cfg, name), **values)})
    return cfg


_TINY_MODEL = dict(n_layer=4, d_model=128, n_heads=4, dropout=0.0)
_TINY_TRAIN = dict(steps=400, batch_size=16, seq_len=128, log_every=20, eval_every=200, checkpoint_every=200)

# nanoGPT's shakespeare_char settings; @data/ is the data root ($JAXFORMER_DATA, see jaxformer/data/root.py).
_SHAKESPEARE = dict(source="text:@data/tinyshakespeare/input.txt", tokenizer="char")
_NANOGPT_TRAIN = dict(log_every=50, eval_every=250, eval_batches=20, checkpoint_every=1000)
_NANOGPT_OPT = dict(lr=1e-3, warmup_steps=100, min_lr_ratio=0.1, b2=0.99, weight_decay=0.1)

PRESETS: dict[str, Config] = {
    # CPU quick start: a few minutes on two cores.
    "decoder-tiny": _preset(model=_TINY_MODEL, objective=dict(kind="clm"), train=_TINY_TRAIN,
                            optimizer=dict(lr=2e-3, warmup_steps=40)),
    "encoder-tiny": _preset(model=dict(_TINY_MODEL, positions="learned"), objective=dict(kind="mlm"),
                            train=_TINY_TRAIN, optimizer=dict(lr=2e-3, warmup_steps=40)),
    # nanoGPT's CPU "baby" shakespeare_char run.
    "shakespeare-char-cpu": _preset(
        model=dict(n_layer=4, d_model=128, n_heads=4, dropout=0.0, bias=False), data=_SHAKESPEARE,
        train=dict(_NANOGPT_TRAIN, steps=2000, batch_size=12, seq_len=64), optimizer=_NANOGPT_OPT),
    # nanoGPT's shakespeare_char GPU config.
    "shakespeare-char": _preset(
        model=dict(n_layer=6, d_model=384, n_heads=6, dropout=0.2, bias=False), data=_SHAKESPEARE,
        train=dict(_NANOGPT_TRAIN, steps=5000, batch_size=64, seq_len=256), optimizer=_NANOGPT_OPT),
    # GPT-2 124M shapes (vocab 50257 to match the GPT-2 BPE).
    "gpt2-small": _preset(
        model=dict(vocab_size=50257, n_layer=12, d_model=768, n_heads=12, max_seq_len=1024, dropout=0.0),
        data=dict(tokenizer="bpe", vocab_size=50257),
        train=dict(steps=600000, batch_size=480, seq_len=1024, grad_accum=40),
        optimizer=dict(lr=6e-4, warmup_steps=2000, b2=0.95)),
    # BERT-base (BertForPreTraining): post-norm, embedding norm, exact GELU, MLM decoder tied to the embedding,
    # two segment types, next-sentence prediction on the pooled [CLS].
    "bert-base": _preset(
        model=dict(vocab_size=30522, n_layer=12, d_model=768, n_heads=12, max_seq_len=512, post_norm=True,
                   embed_norm=True, gelu_approximate=False, norm_eps=1e-12, dropout=0.1, type_vocab_size=2),
        objective=dict(kind="mlm", pair_task="nsp"),
        data=dict(tokenizer="unigram", vocab_size=30522),
        train=dict(steps=1000000, batch_size=256, seq_len=512),
        optimizer=dict(lr=1e-4, warmup_steps=10000, b2=0.999, weight_decay=0.01)),
    # DistilBERT (Sanh et al. 2019; Hugging Face DistilBertModel: 66,362,880 parameters without the MLM head):
    # bert-base halved in depth, no token types, no pooler. Trained by `jaxformer distill --teacher <bert run>`
    # with its repository's loss weights 5 (soft, T=2) : 2 (MLM) : 1 (cosine), normalised here to sum to 1, and
    # its optimizer settings; the batch of ~4K sequences by accumulation as in the paper (steps not published).
    "distilbert": _preset(
        model=dict(vocab_size=30522, n_layer=6, d_model=768, n_heads=12, max_seq_len=512, post_norm=True,
                   embed_norm=True, gelu_approximate=False, norm_eps=1e-12, dropout=0.1),
        objective=dict(kind="mlm", distill_alpha=5 / 7, temperature=2.0, distill_hidden=1 / 7),
        data=dict(tokenizer="unigram", vocab_size=30522),
        train=dict(steps=100000, batch_size=4096, grad_accum=64, seq_len=512),
        optimizer=dict(lr=5e-4, warmup_steps=5000, b2=0.98, eps=1e-6, weight_decay=0.0, grad_clip=5.0)),
    # ALBERT-base (Lan et al. 2019): BERT-base widths, 128-wide factorised embeddings, every layer shared,
    # sentence-order prediction beside MLM; 30,000-piece vocabulary.
    "albert-base": _preset(
        model=dict(vocab_size=30000, n_layer=12, d_model=768, n_heads=12, max_seq_len=512, post_norm=True,
                   embed_norm=True, gelu_approximate=True, norm_eps=1e-12, dropout=0.0, type_vocab_size=2,
                   embed_dim=128, share_layers="all"),
        objective=dict(kind="mlm", pair_task="sop"),
        data=dict(tokenizer="unigram", vocab_size=30000),
        train=dict(steps=125000, batch_size=4096, seq_len=512),
        optimizer=dict(lr=1.76e-3, warmup_steps=3125, b2=0.999, weight_decay=0.01)),
    # GPT-3 175B: for parameter / FLOP accounting only.
    "gpt3-175b": _preset(
        model=dict(vocab_size=50257, n_layer=96, d_model=12288, n_heads=96, max_seq_len=2048),
        data=dict(tokenizer="bpe", vocab_size=50257),
        train=dict(batch_size=1536, seq_len=2048)),
}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose one of: {', '.join(PRESETS)}."
        raise UserError(f"Unknown preset {name!r}: {hint}")
    return PRESETS[name]


# ---------------------------------------------------------------------------------------------- overrides

def _all_keys(cfg: Config) -> list[str]:
    return [f"{s.name}.{f.name}" for s in fields(cfg) for f in fields(getattr(cfg, s.name))]


# Messages quote what the user typed with !r, so that a stray newline or tab stays visible and the message stays
# one line.

def _parse_value(key: str, raw: str, kind: Any) -> Any:
    if kind is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UserError(f"Bad value {raw!r} for {key}: expected true or false.")
    try:
        if kind is int:
            try:
                return int(raw)  # exact, however large (going through float would round 2**53 + 1)
            except ValueError:
                value = float(raw)  # accept 1e3
                if not math.isfinite(value) or value != int(value):
                    raise ValueError from None
                return int(value)
        if kind is float:
            value = float(raw)
            if not math.isfinite(value):  # nan/inf would pass or poison every later range check
                raise ValueError
            return value
    except (ValueError, OverflowError):
        expected = "an integer" if kind is int else "a finite number"
        raise UserError(f"Bad value {raw!r} for {key}: expected {expected}.") from None
    return raw


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """Apply dotted `section.field=value` overrides, with a suggestion for a mistyped key."""
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
    for key, raw in items:
        section, _, name = key.partition(".")
        sub = getattr(cfg, section, None) if section in {f.name for f in fields(cfg)} else None
        if sub is None or name not in {f.name for f in fields(sub)}:
            close = difflib.get_close_matches(key, _all_keys(cfg), n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else "see `jaxformer params --help` for the config keys."
            raise UserError(f"Unknown config key {key!r}: {hint}")
        kind = typing.get_type_hints(type(sub))[name]
        value = _parse_value(key, raw, kind) if isinstance(raw, str) else raw
        cfg = replace(cfg, **{section: replace(sub, **{name: value})})
    return cfg


def _split_override(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise UserError(f"Bad override {text!r}: write it as KEY=VALUE, e.g. train.steps=200.")
    return key.strip(), value.strip()


def from_dict(data: dict) -> Config:
    """Rebuild a Config from `config.json` (unknown keys are refused, missing keys take defaults)."""
    flat = {f"{s}.{k}": v for s, sub in data.items() for k, v in sub.items()}
    return apply_overrides(Config(), flat)


# ---------------------------------------------------------------------------------------------- resolution

def resolve(cfg: Config, *, vocab_size: int | None = None, n_devices: int | None = None,
            special_ids: str | None = None) -> Config:
    """Fill derived values (vocab and special ids from the tokenizer, head counts, mesh) and validate; raise
    UserError."""
    m = cfg.model
    if vocab_size is not None and m.vocab_size == 0:
        m = replace(m, vocab_size=vocab_size)
    m = _backend_defaults(m)
    m = replace(m,
                n_kv_heads=m.n_kv_heads or m.n_heads,
                head_dim=m.head_dim or (m.d_model // m.n_heads if m.n_heads and m.d_model % m.n_heads == 0 else 0),
                max_seq_len=m.max_seq_len or cfg.train.seq_len)
    mesh = cfg.mesh
    if n_devices is not None and mesh.data == -1:
        others = mesh.fsdp * mesh.tensor * mesh.expert
        mesh = replace(mesh, data=max(n_devices // others, 1) if others > 0 else 1)
    from jaxformer.objectives import OBJECTIVES  # objectives import this module's types

    o = cfg.objective
    if o.kind in OBJECTIVES:  # an unknown kind is refused by validate
        o = OBJECTIVES[o.kind].resolve_config(o)
    data = cfg.data if special_ids is None else replace(cfg.data, special_ids=special_ids)
    cfg = replace(cfg, model=m, objective=o, data=data, mesh=mesh)
    validate(cfg, n_devices=n_devices)
    return cfg


def _backend_defaults(m: ModelConfig) -> ModelConfig:
    """The auto values (`dtype` "auto", `xent_chunk` and `vocab_pad_multiple` -1) for this process's backend: bf16
    compute, the fused head and padded vocabulary tables on GPUs and TPUs; fp32, whole logits, no padding on CPUs."""
    if m.dtype != "auto" and -1 not in (m.xent_chunk, m.vocab_pad_multiple):
        return m
    import jax

    accelerator = jax.default_backend() in ("gpu", "tpu")

    def auto(value, unset, on_accelerator, on_cpu):
        return (on_accelerator if accelerator else on_cpu) if value == unset else value

    return replace(m, dtype=auto(m.dtype, "auto", "bfloat16", "float32"),
                   xent_chunk=auto(m.xent_chunk, -1, ACCELERATOR_XENT_CHUNK, 0),
                   vocab_pad_multiple=auto(m.vocab_pad_multiple, -1, ACCELERATOR_VOCAB_PAD, 0))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def validate(cfg: Config, n_devices: int | None = None) -> None:
    from jaxformer.data.tokenizers import SpecialIds
    from jaxformer.model import attention_kernels, dot_grads  # the model imports this module's types
    from jaxformer.objectives import OBJECTIVES

    m, o, d, t, opt, mesh = cfg.model, cfg.objective, cfg.data, cfg.train, cfg.optimizer, cfg.mesh
    choices = {"model.mlp": (m.mlp, ("gelu", "swiglu", "geglu")),
               "model.norm": (m.norm, ("layernorm", "rmsnorm")),
               "model.positions": (m.positions, ("learned", "sinusoidal", "rope")),
               "model.dtype": (m.dtype, ("auto", "float32", "bfloat16")),
               "model.param_dtype": (m.param_dtype, ("float32", "bfloat16")),
               "model.attention_impl": (m.attention_impl, attention_kernels.IMPLS),
               "model.dot_grads": (m.dot_grads, dot_grads.IMPLS),
               "objective.kind": (o.kind, tuple(OBJECTIVES)),
               "data.tokenizer": (d.tokenizer, ("char", "byte", "bpe", "unigram", "word", "hf")),
               "train.on_nonfinite": (t.on_nonfinite, ("stop", "skip")),
               "model.share_layers": (m.share_layers, SHARE_LAYERS),
               "objective.pair_task": (o.pair_task, PAIR_TASKS),
               "objective.pair_documents": (o.pair_documents, ("source", "paragraphs"))}
    for key, (value, allowed) in choices.items():
        _check(value in allowed, f"Bad value {value!r} for {key}: choose one of {', '.join(allowed)}.")
    attention_kernels.check(m.attention_impl, window=m.window, segment_ids=d.packing, dtype=m.dtype)
    for key, value in [("model.n_layer", m.n_layer), ("model.d_model", m.d_model), ("model.n_heads", m.n_heads),
                       ("train.steps", t.steps), ("train.batch_size", t.batch_size), ("train.seq_len", t.seq_len),
                       ("train.grad_accum", t.grad_accum), ("train.log_every", t.log_every),
                       ("train.checkpoint_every", t.checkpoint_every), ("train.eval_batches", t.eval_batches)]:
        _check(value > 0, f"Bad value {value} for {key}: it must be positive.")
    for key, value in [("model.vocab_size", m.vocab_size), ("model.vocab_pad_multiple", m.vocab_pad_multiple),
                       ("model.head_dim", m.head_dim),
                       ("model.xent_chunk", m.xent_chunk),
                       ("model.max_seq_len", m.max_seq_len), ("model.init_std", m.init_std),
                       ("model.moe_aux_weight", m.moe_aux_weight), ("train.seed", t.seed),
                       ("train.eval_every", t.eval_every), ("optimizer.weight_decay", opt.weight_decay),
                       ("optimizer.grad_clip", opt.grad_clip)]:
        _check(value >= 0, f"Bad value {value} for {key}: it must be >= 0.")
    for key, value in [("model.norm_eps", m.norm_eps), ("model.rope_theta", m.rope_theta),
                       ("optimizer.eps", opt.eps), ("train.keep_checkpoints", t.keep_checkpoints),
                       ("data.vocab_size", d.vocab_size)]:
        _check(value > 0, f"Bad value {value} for {key}: it must be positive.")
    for key, value in [("optimizer.b1", opt.b1), ("optimizer.b2", opt.b2)]:
        _check(0.0 <= value < 1.0, f"Bad value {value} for {key}: it must be in [0, 1).")
    _check(0.0 <= opt.min_lr_ratio <= 1.0,
           f"Bad value {opt.min_lr_ratio} for optimizer.min_lr_ratio: it must be in [0, 1].")
    _check(m.d_model % m.n_heads == 0 or cfg.model.head_dim > 0,
           f"model.n_heads={m.n_heads} does not divide model.d_model={m.d_model}: pick n_heads from "
           f"{_divisors(m.d_model)} or set model.head_dim.")
    _check(m.n_kv_heads > 0 and m.n_heads % m.n_kv_heads == 0,
           f"model.n_kv_heads={m.n_kv_heads} does not divide model.n_heads={m.n_heads}: pick one of "
           f"{_divisors(m.n_heads)}.")
    _check(m.positions != "rope" or m.head_dim % 2 == 0,
           f"RoPE needs an even head dimension, got {m.head_dim}: change model.d_model or model.n_heads.")
    _check(m.max_seq_len >= t.seq_len,
           f"train.seq_len={t.seq_len} is longer than model.max_seq_len={m.max_seq_len}: raise model.max_seq_len.")
    _check(m.window >= 0 and m.global_every >= 0, "model.window and model.global_every must be >= 0.")
    _check(0.0 <= m.dropout < 1.0, f"Bad value {m.dropout} for model.dropout: it must be in [0, 1).")
    _check(m.mlp_ratio > 0, f"Bad value {m.mlp_ratio} for model.mlp_ratio: it must be positive.")
    _check(m.type_vocab_size >= 0 and m.embed_dim >= 0,
           "model.type_vocab_size and model.embed_dim must be >= 0 (0: no segment embeddings / no factorisation).")
    _check(m.share_layers == "none" or not (m.window and m.global_every),
           f"model.share_layers={m.share_layers} runs one attention in every layer, but model.global_every="
           f"{m.global_every} gives the layers different windows: set model.global_every=0 or model.share_layers=none.")
    _check(m.share_layers in ("none", "attention") or not (m.n_experts and m.moe_every > 1),
           f"model.share_layers={m.share_layers} runs one MLP in every layer, but model.moe_every={m.moe_every} "
           f"mixes dense and MoE layers: set model.moe_every=1 or model.share_layers=none or attention.")
    if m.n_experts:
        _check(1 <= m.moe_top_k <= m.n_experts,
               f"model.moe_top_k={m.moe_top_k} must be between 1 and model.n_experts={m.n_experts}.")
        _check(m.moe_capacity_factor > 0, "model.moe_capacity_factor must be positive.")
        _check(m.moe_every >= 1, "model.moe_every must be >= 1.")
    _check(0.0 < o.mask_rate < 1.0, f"Bad value {o.mask_rate} for objective.mask_rate: it must be in (0, 1).")
    _check(o.mask_token_frac >= 0 and o.random_token_frac >= 0 and o.mask_token_frac + o.random_token_frac <= 1,
           "objective.mask_token_frac + objective.random_token_frac must be within [0, 1].")
    OBJECTIVES[o.kind].validate_config(cfg)
    specials = SpecialIds.parse(d.special_ids)
    _check(not d.special_ids or m.vocab_size == 0 or all(0 <= i < m.vocab_size for i in specials.all),
           f"data.special_ids={d.special_ids!r} names ids outside model.vocab_size={m.vocab_size}: it is recorded "
           f"from the run's tokenizer; leave it unset.")
    _check(t.early_stop_patience >= 0,
           f"Bad value {t.early_stop_patience} for train.early_stop_patience: it must be >= 0 (0: off).")
    _check(not t.early_stop_patience or t.eval_every > 0,
           "train.early_stop_patience counts evaluations, but train.eval_every=0 evaluates only at the end: set "
           "train.eval_every.")
    _check(0.0 < d.valid_fraction < 1.0, f"Bad value {d.valid_fraction} for data.valid_fraction: use (0, 1).")
    _check(opt.lr > 0, f"Bad value {opt.lr} for optimizer.lr: it must be positive.")
    _check(opt.warmup_steps >= 0, "optimizer.warmup_steps must be >= 0.")
    _check(t.batch_size % t.grad_accum == 0,
           f"train.batch_size={t.batch_size} does not divide into train.grad_accum={t.grad_accum} micro-batches.")
    sizes = (mesh.data, mesh.fsdp, mesh.tensor, mesh.expert)
    _check(all(s >= 1 for s in sizes[1:]) and (mesh.data >= 1 or mesh.data == -1),
           f"Bad mesh sizes {sizes}: each of mesh.data/fsdp/tensor/expert must be >= 1 (mesh.data may be -1).")
    if n_devices is not None:
        product = math.prod(sizes)
        _check(product == n_devices,
               f"The mesh data×fsdp×tensor×expert = {'×'.join(map(str, sizes))} = {product} does not match the "
               f"{n_devices} available devices: set mesh.data=-1 or sizes whose product is {n_devices}.")
        batch_shards = mesh.data * mesh.fsdp * mesh.expert
        micro = t.batch_size // t.grad_accum
        _check(micro % batch_shards == 0,
               f"The micro-batch of {micro} sequences does not split over the {batch_shards} batch shards "
               f"(mesh.data×fsdp×expert): make train.batch_size/train.grad_accum a multiple of {batch_shards}.")


def _divisors(n: int, up_to: int = 128) -> list[int]:
    """The divisors of n up to `up_to` (head counts are small; the messages are built on every validate call,
    so this must stay cheap for any n a user can type)."""
    return [k for k in range(1, min(n, up_to) + 1) if n % k == 0]


def load_config(preset: str, overrides: list[str]) -> Config:
    return apply_overrides(get_preset(preset), overrides)
