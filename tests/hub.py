"""A simulated Hugging Face Hub: tiny random checkpoints under real repo ids, in the hub cache layout.

Each repository holds the files its real counterpart holds, written by the real tokenizer and model
classes from tiny configs, with the quirks a model built from config never has:

- google-bert/bert-base-uncased: vocab.txt with [PAD] and [unusedN] before [UNK] / [CLS] / [SEP] / [MASK]
  (ids 0, 100-103 as in the real one), the weights of a pretraining model (MLM + next-sentence heads)
  with the legacy LayerNorm gamma / beta names;
- openai-community/gpt2: vocab.json + merges.txt (<|endoftext|> last, no pad token), weights without the
  `transformer.` prefix, a text-generation entry in task_specific_params;
- google-t5/t5-small: spiece.model (a sentencepiece unigram model trained on text) + 100 extra ids, an
  embedding matrix larger than the vocabulary, the checkpoint's task_specific_params (summarization and
  three translation prefixes), no tokenizer_config.json;
- facebook/bart-base: vocab.json + merges.txt only, weights saved from BartModel (no `model.` prefix, no
  LM head), three id2label entries, forced_bos_token_id / no_repeat_ngram_size / num_beams in config and
  generation config;
- Helsinki-NLP/opus-mt-en-de: source.spm + target.spm + one joint vocab.json, no tokenizer.json, <pad>
  last and the decoder's start token, bad_words_ids;
- Helsinki-NLP/opus-mt-en-ro: the same family with only pytorch_model.bin (as older opus-mt repos ship).

Layout: CACHE/models--ORG--NAME/{blobs/SHA256, snapshots/COMMIT/FILE -> ../../blobs/SHA256, refs/main}.
With HF_HUB_CACHE=CACHE and HF_HUB_OFFLINE=1 a repo id resolves exactly as a download would.
`python tests/hub.py DIR` writes the cache into DIR (for trying the product by hand).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

BERT = "google-bert/bert-base-uncased"
GPT2 = "openai-community/gpt2"
T5 = "google-t5/t5-small"
BART = "facebook/bart-base"
MARIAN = "Helsinki-NLP/opus-mt-en-de"
MARIAN_PICKLE = "Helsinki-NLP/opus-mt-en-ro"

FAMILIES = {BERT: "bert", GPT2: "gpt2", T5: "t5", BART: "bart", MARIAN: "marian"}


# ---------------------------------------------------------------------------------------------------
# Text the tokenizers learn from: hfpipe's own generated data (so the test data tokenizes sensibly)


def _texts() -> tuple[list[str], list[str]]:
    """(English text, the invented target language's text)."""
    from hfpipe.builtin_data import GENERATORS

    sentiment = GENERATORS["sentiment"](1500, 0, 0, 0)["train"]
    translation = GENERATORS["translation"](1500, 0, 0, 0)["train"]
    qa = GENERATORS["qa"](300, 0, 0, 0)["train"]
    english = [r["text"] for r in sentiment] + [r["en"] for r in translation]
    english += [f"{r['context']} {r['question']}" for r in qa]
    return english, [r["zt"] for r in translation]


def _sentencepiece(texts: list[str], vocab_size: int, **ids) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        num_threads=1,  # one thread: the same model every time
        hard_vocab_limit=False,
        minloglevel=2,
        **ids,
    )
    return model.getvalue()


def _byte_level_bpe(texts: list[str], vocab_size: int, first: list[str], last: list[str]) -> tuple[dict, str]:
    """(vocab.json content, merges.txt content) of a byte-level BPE trained on `texts`; special tokens
    `first` take the first ids and `last` the last ones (GPT-2's <|endoftext|> is its last id)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=first,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    with tempfile.TemporaryDirectory() as folder:
        tok.model.save(folder)
        vocab = json.loads(Path(folder, "vocab.json").read_text(encoding="utf-8"))
        merges = Path(folder, "merges.txt").read_text(encoding="utf-8")
    for token in last:
        vocab[token] = len(vocab)
    return vocab, merges


def _wordpiece_vocab(texts: list[str]) -> list[str]:
    """bert-base-uncased's layout: [PAD], [unused0-98], [UNK], [CLS], [SEP], [MASK], then characters (both
    forms), frequent words and a few suffix pieces."""
    words = Counter(w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower()))
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += chars + [f"##{c}" for c in chars if c.isalnum()]
    vocab += [w for w, n in sorted(words.items(), key=lambda x: (-x[1], x[0])) if len(w) > 1 and n >= 2]
    vocab += ["##s", "##ed", "##ing", "##ly", "##er"]
    vocab += "good bad great terrible yes no positive negative true false".split()  # verbalizers
    return list(dict.fromkeys(vocab))


# ---------------------------------------------------------------------------------------------------
# Writing a repository


def _saved(model) -> tuple[dict, dict]:
    """(config dict, {weight name: tensor}) as `save_pretrained` writes them."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        config = json.loads(Path(folder, "config.json").read_text())
        weights = load_file(str(Path(folder, "model.safetensors")))
    return config, weights


def _safetensors(weights: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in weights.items()}, metadata={"format": "pt"})


def _pickle(weights: dict) -> bytes:
    import torch

    out = io.BytesIO()
    torch.save(weights, out)
    return out.getvalue()


def _json(data) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def write_repo(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Store `files` as the main revision of `repo_id` in the hub cache; returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        blob = hashlib.sha256(content).hexdigest()
        (repo / "blobs" / blob).write_bytes(content)
        link = snapshot / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path("..", "..", "blobs", blob))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def _tokenizer_json(cls, files: dict[str, bytes], **kwargs) -> bytes:
    """tokenizer.json as the real tokenizer class writes it from the repository's vocabulary files."""
    with tempfile.TemporaryDirectory() as folder:
        for name, content in files.items():
            Path(folder, name).write_bytes(content)
        tokenizer = cls.from_pretrained(folder, **kwargs)
        out = Path(folder, "out")
        tokenizer.save_pretrained(out)
        return (out / "tokenizer.json").read_bytes()


# ---------------------------------------------------------------------------------------------------
# The families


def bert(english: list[str]) -> dict[str, bytes]:
    import torch
    import transformers

    vocab = _wordpiece_vocab(english)
    files = {"vocab.txt": ("\n".join(vocab) + "\n").encode()}
    files["tokenizer_config.json"] = _json({"do_lower_case": True, "model_max_length": 512})
    files["tokenizer.json"] = _tokenizer_json(transformers.BertTokenizer, files)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    saved, weights = _saved(transformers.BertForPreTraining(config))
    # The original TensorFlow conversion's names: transformers maps gamma / beta to weight / bias on load.
    weights = {re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", k): v for k, v in weights.items()}
    weights = {re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", k): v for k, v in weights.items()}
    saved.update(architectures=["BertForMaskedLM"], gradient_checkpointing=False, use_cache=True)
    files["config.json"] = _json(_clean(saved))
    files["model.safetensors"] = _safetensors(weights)
    return files


def gpt2(english: list[str]) -> dict[str, bytes]:
    import torch
    import transformers

    vocab, merges = _byte_level_bpe(english, 600, first=[], last=["<|endoftext|>"])
    files = {"vocab.json": _json(vocab), "merges.txt": merges.encode()}
    files["tokenizer_config.json"] = _json({"model_max_length": 1024})
    files["tokenizer.json"] = _tokenizer_json(transformers.GPT2Tokenizer, files)
    eos = vocab["<|endoftext|>"]
    config = transformers.GPT2Config(
        vocab_size=len(vocab),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=1024,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    torch.manual_seed(0)
    saved, weights = _saved(transformers.GPT2LMHeadModel(config))
    weights = {k.removeprefix("transformer."): v for k, v in weights.items() if not k.startswith("lm_head.")}
    saved.update(
        architectures=["GPT2LMHeadModel"],
        n_ctx=1024,
        task_specific_params={"text-generation": {"do_sample": True, "max_length": 50}},
    )
    files["config.json"] = _json(_clean(saved))
    files["generation_config.json"] = _json({"bos_token_id": eos, "eos_token_id": eos})
    files["model.safetensors"] = _safetensors(weights)
    return files


T5_TASK_PARAMS = {
    "summarization": {
        "early_stopping": True,
        "length_penalty": 2.0,
        "max_length": 200,
        "min_length": 30,
        "no_repeat_ngram_size": 3,
        "num_beams": 4,
        "prefix": "summarize: ",
    },
    "translation_en_to_de": {
        "early_stopping": True,
        "max_length": 300,
        "num_beams": 4,
        "prefix": "translate English to German: ",
    },
    "translation_en_to_fr": {
        "early_stopping": True,
        "max_length": 300,
        "num_beams": 4,
        "prefix": "translate English to French: ",
    },
    "translation_en_to_ro": {
        "early_stopping": True,
        "max_length": 300,
        "num_beams": 4,
        "prefix": "translate English to Romanian: ",
    },
}


def t5(english: list[str], target: list[str]) -> dict[str, bytes]:
    import torch
    import transformers

    files = {"spiece.model": _sentencepiece(english + target, 700, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)}
    files["tokenizer.json"] = _tokenizer_json(transformers.T5Tokenizer, files)
    with tempfile.TemporaryDirectory() as folder:
        for name, content in files.items():
            Path(folder, name).write_bytes(content)
        size = len(transformers.T5Tokenizer.from_pretrained(folder))
    config = transformers.T5Config(
        vocab_size=(size + 127) // 128 * 128,  # rounded up, as t5-small's 32,128 rows for 32,100 tokens
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    saved, weights = _saved(transformers.T5ForConditionalGeneration(config))
    saved.update(
        architectures=["T5ForConditionalGeneration"], task_specific_params=T5_TASK_PARAMS, n_positions=512
    )
    files["config.json"] = _json(_clean(saved))
    files["generation_config.json"] = _json(
        {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}
    )
    files["model.safetensors"] = _safetensors(weights)
    return files


def bart(english: list[str], target: list[str]) -> dict[str, bytes]:
    import torch
    import transformers

    vocab, merges = _byte_level_bpe(
        english + target, 700, first=["<s>", "<pad>", "</s>", "<unk>"], last=["<mask>"]
    )
    files = {"vocab.json": _json(vocab), "merges.txt": merges.encode()}
    config = transformers.BartConfig(
        vocab_size=len(vocab),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=1024,
        num_labels=3,
    )
    torch.manual_seed(0)
    saved, weights = _saved(transformers.BartModel(config))
    saved.update(
        architectures=["BartModel"],
        early_stopping=True,
        forced_bos_token_id=0,
        forced_eos_token_id=2,
        no_repeat_ngram_size=3,
        num_beams=4,
        task_specific_params={
            "summarization": {"length_penalty": 1.0, "max_length": 128, "min_length": 12, "num_beams": 4}
        },
    )
    files["config.json"] = _json(_clean(saved))
    files["generation_config.json"] = _json(
        {
            "bos_token_id": 0,
            "decoder_start_token_id": 2,
            "early_stopping": True,
            "eos_token_id": 2,
            "forced_bos_token_id": 0,
            "forced_eos_token_id": 2,
            "no_repeat_ngram_size": 3,
            "num_beams": 4,
            "pad_token_id": 1,
        }
    )
    files["model.safetensors"] = _safetensors(weights)
    return files


def marian(english: list[str], target: list[str], *, pickle_only: bool = False) -> dict[str, bytes]:
    import sentencepiece as spm
    import torch
    import transformers

    ids = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}  # opus-mt's sentencepiece models
    source, target_spm = _sentencepiece(english, 500, **ids), _sentencepiece(target, 300, **ids)
    pieces: list[str] = ["</s>", "<unk>"]
    for proto in (source, target_spm):
        processor = spm.SentencePieceProcessor(model_proto=proto)
        pieces += [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    pieces = [p for p in dict.fromkeys(pieces) if p not in ("<s>",)]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    pad = vocab["<pad>"] = len(vocab)  # the last id, also the decoder's start
    files = {"source.spm": source, "target.spm": target_spm, "vocab.json": _json(vocab)}
    files["tokenizer_config.json"] = _json(
        {"source_lang": "en", "target_lang": "de", "model_max_length": 512}
    )
    files["special_tokens_map.json"] = _json(
        {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    )
    config = transformers.MarianConfig(
        vocab_size=len(vocab),
        decoder_vocab_size=len(vocab),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=512,
        pad_token_id=pad,
        eos_token_id=0,
        bos_token_id=0,
        decoder_start_token_id=pad,
        forced_eos_token_id=0,
        scale_embedding=True,
        activation_function="swish",
    )
    torch.manual_seed(0)
    saved, weights = _saved(transformers.MarianMTModel(config))
    saved.update(architectures=["MarianMTModel"], bad_words_ids=[[pad]], max_length=512, num_beams=4)
    files["config.json"] = _json(_clean(saved))
    files["generation_config.json"] = _json(
        {
            "bad_words_ids": [[pad]],
            "bos_token_id": 0,
            "decoder_start_token_id": pad,
            "eos_token_id": 0,
            "forced_eos_token_id": 0,
            "max_length": 512,
            "num_beams": 4,
            "pad_token_id": pad,
        }
    )
    if pickle_only:
        files["pytorch_model.bin"] = _pickle(weights)
    else:
        files["model.safetensors"] = _safetensors(weights)
    return files


def _clean(config: dict) -> dict:
    """A config as an older transformers wrote it: no version or dtype of this one."""
    config = {k: v for k, v in config.items() if k not in ("transformers_version", "dtype", "torch_dtype")}
    config["transformers_version"] = "4.30.0"
    return config


def build(cache: Path) -> dict[str, Path]:
    """Write every repository into the hub cache `cache`; {repo id: snapshot folder}."""
    cache = Path(cache)
    english, target = _texts()
    repos = {
        BERT: bert(english),
        GPT2: gpt2(english),
        T5: t5(english, target),
        BART: bart(english, target),
        MARIAN: marian(english, target),
        MARIAN_PICKLE: marian(english, target, pickle_only=True),
    }
    return {repo_id: write_repo(cache, repo_id, files) for repo_id, files in repos.items()}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/hub.py CACHE_DIR  (then HF_HUB_CACHE=CACHE_DIR HF_HUB_OFFLINE=1)")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    target_dir = Path(sys.argv[1])
    if target_dir.exists():
        shutil.rmtree(target_dir)
    for repo, snapshot in build(target_dir).items():
        print(f"{repo:32s} {', '.join(sorted(os.listdir(snapshot)))}")
