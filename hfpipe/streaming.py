"""Training on corpora larger than memory (`data.streaming: true`, causal-lm).

The train files are read as a `datasets` IterableDataset: a shuffling buffer of `data.shuffle_buffer`
documents (reseeded each pass), tokenized a few hundred at a time and packed on the fly into blocks of
`data.max_length` tokens, each document followed by EOS, exactly as the in-memory path packs them. Memory
holds the buffer and one block's worth of pending tokens, whatever the corpus size. A resumed run replays
the stream to its position (Accelerate skips the batches already trained on: re-read, not re-trained),
so it sees the blocks an unbroken run would.
"""

from __future__ import annotations

import logging

import torch  # imported by training only: `hfpipe validate` never loads this module

from hfpipe.errors import DataError, shown_path

log = logging.getLogger("hfpipe")

# Extension -> `datasets` builder for streamed files.
BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def stream_files(paths: list[str]):
    """The train files as one IterableDataset (text: one row per line)."""
    from pathlib import Path

    import datasets

    kinds = set()
    for path in paths:
        if not Path(path).is_file():
            raise DataError("no such file (data.train)", file=shown_path(path))
        suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
        if suffix not in BUILDERS:
            raise DataError(
                f"data.streaming reads {', '.join(sorted(BUILDERS))} files, not {suffix or 'files without an extension'}",
                file=shown_path(path),
            )
        kinds.add(BUILDERS[suffix])
    if len(kinds) > 1:
        raise DataError(
            f"data.streaming: the train files mix formats ({', '.join(sorted(kinds))})", file=paths[0]
        )
    return datasets.load_dataset(kinds.pop(), data_files={"train": paths}, split="train", streaming=True)


def stream_texts(source, column: str, limit: int | None = None):
    """The stream's documents in file order (tokenizer training); `limit` documents at most."""
    seen = 0
    for example in source:
        text = example.get(column)
        if not isinstance(text, str):
            raise DataError(f"column {column!r}: expected text, got {text!r} (streamed train files)")
        if text.strip():
            yield text
            seen += 1
            if limit and seen >= limit:
                return


class PackedStream(torch.utils.data.IterableDataset):
    """Blocks of `block_size` tokens from a shuffled document stream; set_epoch reshuffles."""

    def __init__(self, source, tokenizer, column: str, block_size: int, seed: int, buffer: int) -> None:
        self.source, self.tokenizer, self.column = source, tokenizer, column
        self.block_size, self.seed, self.buffer = block_size, seed, buffer
        self.epoch = 0
        if tokenizer.eos_token_id is None:
            raise DataError("the tokenizer has no eos_token, which packing puts between documents")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        stream = self.source.shuffle(seed=self.seed, buffer_size=self.buffer)
        stream.set_epoch(self.epoch)
        eos, size = self.tokenizer.eos_token_id, self.block_size
        pending: list[int] = []
        texts: list[str] = []

        def blocks():
            nonlocal pending
            if texts:
                for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]:
                    pending += ids
                    pending.append(eos)
                texts.clear()
            usable = len(pending) - len(pending) % size
            for at in range(0, usable, size):
                yield {"input_ids": pending[at : at + size]}
            pending = pending[usable:]  # the last partial block waits for the next documents (or is dropped)

        for text in stream_texts(stream, self.column):
            texts.append(text)
            if len(texts) == 256:
                yield from blocks()
        yield from blocks()
