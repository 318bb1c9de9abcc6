"""Architectures a recipe can build from scratch (``model.architecture``): a registry of plain data.

Kept free of torch / transformers imports so ``hfpipe validate`` can check names instantly. Each entry
says which transformers ``model_type`` it builds and how to train a tokenizer for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Architecture:
    name: str
    model_type: str  # transformers.AutoConfig.for_model(model_type, ...)
    tokenizer: str  # default tokenizer.train.algorithm
    tokenizer_class: str  # transformers class that wraps the trained tokenizer
    description: str
    # Special tokens in id order; the trained tokenizer gives them ids 0..n-1.
    special_tokens: dict[str, str] = field(default_factory=dict)
    # Encoder-decoders: what the tokenizer adds around a text ("$A </s>"), and which special token
    # starts the decoder (T5 and Marian: pad; BART: eos).
    template: str | None = None
    decoder_start: str | None = None


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    ARCHITECTURES[arch.name] = arch
    return arch


register_architecture(
    Architecture(
        name="bert",
        model_type="bert",
        tokenizer="wordpiece",
        tokenizer_class="BertTokenizerFast",
        description="BERT encoder (WordPiece tokenizer, [CLS] ... [SEP] inputs, token type ids).",
        special_tokens={
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
        },
    )
)


register_architecture(
    Architecture(
        name="gpt2",
        model_type="gpt2",
        tokenizer="byte-level-bpe",
        tokenizer_class="PreTrainedTokenizerFast",  # GPT2Tokenizer drops a trained normalizer on reload
        description="GPT-2 decoder (byte-level BPE tokenizer; <|endoftext|> is bos, eos, unk and pad).",
        special_tokens={
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
        },
    )
)


_SEQ2SEQ_SPECIALS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}

register_architecture(
    Architecture(
        name="t5",
        model_type="t5",
        tokenizer="byte-level-bpe",
        tokenizer_class="PreTrainedTokenizerFast",
        description="T5 encoder-decoder (one byte-level BPE for both languages; inputs end in </s>; the "
        "decoder starts from <pad>).",
        special_tokens=dict(_SEQ2SEQ_SPECIALS),
        template="$A </s>",
        decoder_start="pad_token",
    )
)

register_architecture(
    Architecture(
        name="bart",
        model_type="bart",
        tokenizer="byte-level-bpe",
        tokenizer_class="PreTrainedTokenizerFast",  # RobertaTokenizer drops a normalizer on reload
        description="BART encoder-decoder (byte-level BPE; <s> text </s>; the decoder starts from </s>).",
        special_tokens={
            "bos_token": "<s>",
            "pad_token": "<pad>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "mask_token": "<mask>",
        },
        template="<s> $A </s>",
        decoder_start="eos_token",
    )
)

register_architecture(
    Architecture(
        name="marian",
        model_type="marian",
        tokenizer="byte-level-bpe",
        tokenizer_class="PreTrainedTokenizerFast",
        description="Marian encoder-decoder (one byte-level BPE for both languages, no vocab files to "
        "download; inputs end in </s>; the decoder starts from <pad>).",
        special_tokens=dict(_SEQ2SEQ_SPECIALS),
        template="$A </s>",
        decoder_start="pad_token",
    )
)
