"""Tokenizers: load a pretrained one, or train one on the training text with the `tokenizers` library.

A trained tokenizer is wrapped in the architecture's own transformers class (BertTokenizerFast for
BERT: a generic PreTrainedTokenizerFast silently drops token_type_ids), so the run directory reloads
with plain ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from hfpipe.errors import RecipeError, first_line

log = logging.getLogger("hfpipe")


def load_tokenizer(
    name_or_path: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    key: str = "tokenizer.name_or_path",
):
    from transformers import AutoTokenizer

    from hfpipe.model_files import check_packages

    if looks_like_path(name_or_path) and not Path(name_or_path).expanduser().exists():
        raise RecipeError(f"no such directory: {name_or_path} (a path, not a Hub name)", key=key)
    check_packages(name_or_path, revision, key)
    try:
        return AutoTokenizer.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, ImportError) as exc:
        check_packages(name_or_path, revision, key)  # downloaded by now: its files say what it needs
        raise RecipeError(f"cannot load tokenizer {name_or_path!r}: {first_line(exc)}", key=key) from None


def pad_with_eos(tokenizer) -> None:
    """A tokenizer without a pad token (GPT-2's) pads with its EOS token: padded positions are masked out
    of attention and of the loss, so which token fills them does not matter, only that one exists."""
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
        log.info("the tokenizer has no pad token: %s pads", tokenizer.eos_token)


def looks_like_path(name: str) -> bool:
    """A local path rather than a Hub name (which is `name` or `namespace/name`)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        if text:
            batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def train_tokenizer(texts: Iterable[str], spec, architecture: str, model_max_length: int):
    """Train ``spec.algorithm`` on `texts`; returns a transformers fast tokenizer for `architecture`."""
    from hfpipe.architectures import ARCHITECTURES

    arch = ARCHITECTURES[architecture]
    if spec.algorithm == "wordpiece":
        return _train_wordpiece(texts, spec, arch, model_max_length)
    if spec.algorithm == "byte-level-bpe":
        return _train_byte_level_bpe(texts, spec, arch, model_max_length)
    raise RecipeError(
        f"tokenizer algorithm {spec.algorithm!r} is not supported for {architecture}",
        key="tokenizer.train.algorithm",
    )


# Word-internal characters are moved to a private-use plane while training, so that a plain
# byte-pair trainer learns word-initial pieces and continuation ("##") pieces apart. Why not
# tokenizers' own WordPieceTrainer: with a continuing_subword_prefix its BPE trainer is not
# deterministic (the same text gives a different vocabulary from one call to the next, measured with
# tokenizers 0.23.3), and a recipe with a seed must give the same model twice.
_CONTINUATION = 0xF0000
_MAX_CHAR = 0x10FFFD - _CONTINUATION


def _mark_word(word: str) -> str:
    return word[0] + "".join(chr(_CONTINUATION + ord(c)) for c in word[1:] if ord(c) <= _MAX_CHAR)


def _unmark_token(token: str) -> str:
    plain = "".join(chr(ord(c) - _CONTINUATION) if ord(c) >= _CONTINUATION else c for c in token)
    return "##" + plain if ord(token[0]) >= _CONTINUATION else plain


def _train_wordpiece(texts, spec, arch, model_max_length: int):
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = list(arch.special_tokens.values())
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=spec.lowercase, lowercase=spec.lowercase
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()

    def marked():
        for text in texts:
            words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
            yield " ".join(_mark_word(w) for w, _ in words if w)

    bpe = Tokenizer(models.BPE(unk_token=arch.special_tokens["unk_token"]))
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=specials,
        show_progress=False,
    )
    bpe.train_from_iterator(_batches(marked()), trainer=trainer)
    vocab: dict[str, int] = {}
    for token, _ in sorted(bpe.get_vocab().items(), key=lambda item: item[1]):
        vocab.setdefault(token if token in specials else _unmark_token(token), len(vocab))
    # Every character gets both forms, so a known character never becomes [UNK] by position.
    for token in [t for t in vocab if t not in specials and len(t.removeprefix("##")) == 1]:
        vocab.setdefault(token[2:] if token.startswith("##") else "##" + token, len(vocab))

    tok = Tokenizer(
        models.WordPiece(
            vocab=vocab, unk_token=arch.special_tokens["unk_token"], max_input_chars_per_word=100
        )
    )
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    cls, sep = arch.special_tokens["cls_token"], arch.special_tokens["sep_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    wrapper = getattr(transformers, arch.tokenizer_class)
    hf_tok = wrapper(
        tokenizer_object=tok,
        do_lower_case=spec.lowercase,
        model_max_length=model_max_length,
        **arch.special_tokens,
    )
    log.info("trained a %s tokenizer: %d tokens (asked for %d)", spec.algorithm, len(hf_tok), spec.vocab_size)
    return hf_tok


def _train_byte_level_bpe(texts, spec, arch, model_max_length: int):
    """GPT-2's scheme: bytes as the base alphabet (no unknown characters), merges learned on the text.

    tokenizers' BpeTrainer with a ByteLevel pre-tokenizer is deterministic (measured, 0.23.3).
    """
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = list(dict.fromkeys(arch.special_tokens.values()))
    tok = Tokenizer(models.BPE())
    if spec.lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_batches(texts), trainer=trainer)
    if arch.template:  # encoder-decoders: the tokenizer adds </s> (and <s>) itself, as theirs do
        tok.post_processor = processors.TemplateProcessing(
            single=arch.template,
            special_tokens=[(t, tok.token_to_id(t)) for t in arch.template.split() if t != "$A"],
        )
    wrapper = getattr(transformers, arch.tokenizer_class)
    hf_tok = wrapper(tokenizer_object=tok, model_max_length=model_max_length, **arch.special_tokens)
    log.info("trained a %s tokenizer: %d tokens (asked for %d)", spec.algorithm, len(hf_tok), spec.vocab_size)
    return hf_tok
