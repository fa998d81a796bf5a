"""Text side of the built-in models: a per-modality WordPiece tokenizer and a small BERT tower.

Published medical CLIP models each bring their own tokenizer (Bio_ClinicalBERT, CXR-BERT,
CLIP BPE). The built-in stand-ins imitate that: every modality trains its OWN WordPiece
vocabulary on its own reports, so the same sentence gets different token ids in different
models and binding has to cope with it, exactly as with the real checkpoints.
"""
from __future__ import annotations

from collections.abc import Iterable

from tokenizers import BertWordPieceTokenizer
from torch import Tensor, nn
from transformers import BertConfig, BertModel, BertTokenizer, PreTrainedTokenizerFast

# The standard BERT special tokens. Their order fixes their ids: [PAD] is 0, as BertConfig expects.
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# peft target-module suffixes of the attention projections inside transformers' BertSelfAttention.
BERT_LORA_TARGETS: tuple[str, ...] = ("query", "value")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000, max_length: int = 128) -> PreTrainedTokenizerFast:
    """Train a lower-casing BERT WordPiece tokenizer on ``texts``; the same texts give the same vocabulary.

    Returns a standard Hugging Face tokenizer (``BertTokenizer``, tokenizers-backed) that
    saves and loads as an ordinary HF tokenizer folder. ``vocab_size`` is an upper bound:
    a small corpus yields fewer tokens. ``max_length`` becomes ``model_max_length``.
    """
    texts = list(texts)
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        # min_frequency=1 keeps rare words whole; medical corpora are small and rare terms matter.
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS) + _continuing_subword_tokens(trainer, texts),
        show_progress=False,
    )
    vocab = trainer.get_vocab()
    if len(vocab) <= len(SPECIAL_TOKENS):
        raise ValueError("cannot train a tokenizer: the text corpus is empty")
    # A fresh BertTokenizer from the vocabulary alone: the "##x" seeds above become ordinary
    # vocabulary entries again, not special tokens.
    return BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=max_length)


def _continuing_subword_tokens(trainer: BertWordPieceTokenizer, texts: list[str]) -> list[str]:
    """``"##c"`` for every character ``c`` found after the first position of a word, sorted.

    Why: the tokenizers WordPiece trainer creates these tokens while iterating a hash map,
    so their ids, and through tie-breaking on equal pair counts even the learned merges,
    change from run to run (huggingface/tokenizers issue #1794). Declaring them up front,
    in a fixed order, makes training deterministic. They are in the vocabulary anyway.
    """
    characters: set[str] = set()
    for text in texts:
        for word, _span in trainer.pre_tokenizer.pre_tokenize_str(trainer.normalizer.normalize_str(text)):
            characters.update(word[1:])
    return [f"##{character}" for character in sorted(characters)]


class BertTextTower(nn.Module):
    """A randomly initialised HF ``BertModel``, [CLS] pooling, then a linear projection.

    [CLS] pooling follows MGCA and CT-CLIP. The output is NOT normalised; the CLIP model
    normalises it. LoRA targets: ``query`` and ``value`` inside ``bert`` (see
    :data:`BERT_LORA_TARGETS`); ``proj`` is the projection to the model's native width.
    """

    lora_targets = BERT_LORA_TARGETS

    def __init__(self, bert_config: BertConfig, native_dim: int):
        super().__init__()
        # No pooler: its tanh layer is unused with [CLS] pooling + our own projection.
        self.bert = BertModel(bert_config, add_pooling_layer=False)
        self.proj = nn.Linear(bert_config.hidden_size, native_dim)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``(B, L)`` token ids and mask -> ``(B, native_dim)`` unnormalised embeddings."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.proj(hidden[:, 0])


def small_bert_config(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
                      intermediate_size: int, max_length: int, pad_token_id: int = 0) -> BertConfig:
    """A ``BertConfig`` for a small text tower (positions up to ``max_length``)."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_length,
        pad_token_id=pad_token_id,
    )
