"""Batches: the training sampler (length-grouped, deterministic per epoch), evaluation batches, the loaders,
and each epoch's batches as the loop reads them (a resumed epoch skips what it already trained on)."""

from __future__ import annotations

import itertools
import math


class BatchSampler:
    """Shuffled batches; with `group_by_length`, examples of similar length share a batch.

    Like transformers' LengthGroupedSampler: shuffle, cut into mega-batches of 50 batches, sort each
    mega-batch by length, cut into batches, shuffle the batches. Padding falls to a few percent while
    the order stays random. Deterministic in (seed, epoch).
    """

    def __init__(
        self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool, accumulation: int = 1
    ) -> None:
        # batch_size is one forward pass (of all processes); a step's batch of batch_size x accumulation
        # is drawn whole and cut into its passes, so accumulating k passes of b is one batch of k x b.
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.group_by_length, self.accumulation = group_by_length, accumulation
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        size = self.batch_size
        return [step[i : i + size] for step in self.step_batches() for i in range(0, len(step), size)]

    def step_batches(self) -> list[list[int]]:
        """The batches of the optimizer steps (batch_size x accumulation examples)."""
        import torch

        size = self.batch_size * self.accumulation
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        if not self.group_by_length:
            return [order[i : i + size] for i in range(0, len(order), size)]
        mega = size * 50
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
        # The one short batch (the end of the last mega-batch) goes last: Accelerate's sharding of a batch
        # across processes takes full batches only until the end.
        short = [b for b in batches if len(b) < size]
        batches = [b for b in batches if len(b) == size]
        shuffle = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in shuffle] + short

    def __iter__(self):
        return iter(self.batches())

    def padding_fraction(self) -> float:
        """Share of the batch slots (batch x its longest example) that are padding, in this epoch."""
        real = slots = 0
        for batch in self.batches():
            lengths = [self.lengths[i] for i in batch]
            real, slots = real + sum(lengths), slots + max(lengths) * len(lengths)
        return 1 - real / slots if slots else 0.0

    def __len__(self) -> int:
        size = self.batch_size * self.accumulation
        full, rest = divmod(len(self.lengths), size)
        return full * self.accumulation + math.ceil(rest / self.batch_size)


class EvalBatches(list):
    """A fixed list of batches with the `batch_size` attribute Accelerate's sharding asks for."""

    def __init__(self, batches: list[list[int]], batch_size: int) -> None:
        super().__init__(batches)
        self.batch_size = batch_size


def eval_batches(lengths: list[int], batch_size: int) -> EvalBatches:
    """Evaluation batches in length order: least padding, and order does not matter for metrics."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return EvalBatches([order[i : i + batch_size] for i in range(0, len(order), batch_size)], batch_size)


def split_lengths(dataset):
    """(dataset without its 'length' column, lengths); lengths from input_ids when absent. Read as one
    Arrow column (a datasets Column iterates row by row: ~15 s a million rows)."""
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")
    if "length" in dataset.column_names:
        return dataset.remove_columns("length"), table["length"].to_pylist()
    return dataset, pc.list_value_length(table["input_ids"]).to_pylist()


def is_stream(dataset) -> bool:
    """data.streaming: an iterable of packed blocks with no length (and no sampler)."""
    import torch

    return isinstance(dataset, torch.utils.data.IterableDataset)


def _generator(seed: int):
    # Loaders get generators of their own: creating an iterator then draws from it, not from the global
    # torch RNG that dropout uses, so evaluation cadence cannot change the training result.
    import torch

    return torch.Generator().manual_seed(seed)


def train_loader(dataset, collate, settings, processes: int, accumulation: int):
    """(loader of global batches, what orders them: its BatchSampler, or the stream itself; the padding
    fraction of its batches). train.batch_size is per process; Accelerate's split_batches cuts each global
    batch between the processes."""
    from torch.utils.data import DataLoader

    if is_stream(dataset):
        batching, sampler, padding = {"batch_size": settings.batch_size * processes}, dataset, 0.0
    else:
        dataset, lengths = split_lengths(dataset)
        sampler = BatchSampler(
            lengths, settings.batch_size * processes, settings.seed, settings.group_by_length, accumulation
        )
        batching, padding = {"batch_sampler": sampler}, sampler.padding_fraction()
    loader = DataLoader(
        dataset,
        **batching,
        collate_fn=collate,
        num_workers=settings.num_workers,
        generator=_generator(settings.seed),
    )
    return loader, sampler, padding


def eval_loader(dataset, collate, settings, processes: int):
    """Evaluation batches of 2 x batch_size (or train.eval_batch_size) per process, longest first."""
    from torch.utils.data import DataLoader

    dataset, lengths = split_lengths(dataset)
    size = (settings.eval_batch_size or 2 * settings.batch_size) * processes
    return DataLoader(
        dataset,
        batch_sampler=eval_batches(lengths, size),
        collate_fn=collate,
        num_workers=settings.num_workers,
        generator=_generator(settings.seed),
    )


def epoch_batches(accelerator, loader, order, epoch: int, skip: int):
    """The batches of `epoch` after the first `skip` (a resumed epoch), with what orders them (the sampler,
    or the stream) seeded for the epoch before anything is read."""
    import torch

    # Accelerate re-seeds the sampler (or stream) with the loader's own epoch counter when a pass starts, so
    # the counter itself is set, before the first read; with several processes the sampler sits inside
    # Accelerate's shard wrapper, out of its reach, so it is set directly too.
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    order.set_epoch(epoch)
    if isinstance(order, BatchSampler):
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        if batches is not loader and hasattr(batches, "set_epoch"):
            batches.set_epoch(epoch)
        return batches
    # Accelerate's loader for a stream seeds its iterator from the global torch RNG when first read, which
    # dropout also draws from: that read happens at the start of a pass in an unbroken run but at the resume
    # point in a resumed one. Keep it out of the global RNG, and replay the stream to the resume point
    # through the loader itself.
    rng = torch.get_rng_state()
    iterator = iter(loader)
    try:
        first = next(iterator, None)
    except (ValueError, TypeError) as exc:  # Accelerate's dispatcher on a stream with no batch
        if "does not contain any data" not in str(exc) and "NoneType" not in str(exc):
            raise
        first = None
    torch.set_rng_state(rng)
    return itertools.islice(itertools.chain([first] if first is not None else [], iterator), skip, None)
