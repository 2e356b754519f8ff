"""Small random Hugging Face GPT-2 / BERT model folders, built locally (no network): a byte-level BPE or a
WordPiece tokenizer trained with the `tokenizers` library on a few sentences, wrapped in transformers' fast
tokenizer and saved next to a randomly initialised model, as `save_pretrained` lays out a hub folder.

The special tokens sit at ids that differ from jaxformer's fixed table on purpose (GPT-2's <|endoftext|> is id 0,
jaxformer's PAD; BERT's [MASK] is 0 and [PAD] 4, jaxformer's MASK): code that used jaxformer's constants on an
imported run would show."""

from __future__ import annotations

from pathlib import Path

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A transformer reads every token of the sentence at once.",
    "Encoders see both sides; decoders only look back.",
    "She sells sea shells by the sea shore, and the shells she sells are sea shells.",
    "Numbers like 3.14 and 2024 appear in text too!",
    "The dog sleeps. The fox runs. The model predicts the next word.",
] * 3
BERT_SPECIALS = ["[MASK]", "[SEP]", "[UNK]", "[CLS]", "[PAD]"]  # ids 0..4 in this order


def gpt2_tokenizer(vocab_size: int = 320):
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SENTENCES, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def bert_tokenizer(vocab_size: int = 160):
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(SENTENCES, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS,
                                                                 show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def randomize(model, seed: int = 0):
    """Every parameter random (norm scales around 1), so that biases, norms and type embeddings all count."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.1
            p.copy_(1.0 + noise if "LayerNorm.weight" in name or ".ln_" in name else noise)
    return model.eval()


def gpt2_folder(folder: Path, *, positions: int = 64):
    """(folder, HF model, HF tokenizer) of a tiny random GPT-2 with its own tokenizer."""
    import transformers

    tokenizer = gpt2_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=len(tokenizer), n_positions=positions,
                                     bos_token_id=eos, eos_token_id=eos)
    model = randomize(transformers.GPT2LMHeadModel(config))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


def bert_folder(folder: Path, *, positions: int = 64):
    """(folder, HF model, HF tokenizer) of a tiny random BertForMaskedLM with its own WordPiece tokenizer."""
    import transformers

    tokenizer = bert_tokenizer()
    config = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                     vocab_size=len(tokenizer), max_position_embeddings=positions,
                                     pad_token_id=tokenizer.pad_token_id)
    model = randomize(transformers.BertForMaskedLM(config), seed=1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer
