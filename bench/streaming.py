"""Streaming: peak memory of `hfpipe train` with data.streaming as the corpus grows 100x."""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import benchmark, say, train_in_child


def _chunk(work: Path) -> bytes:
    """hfpipe's built-in sentiment sentences, one a line (what the corpora repeat); their validation
    sentences go to work/validation.txt."""
    from hfpipe.builtin_data import sentiment

    rows = sentiment(60_000, 500, 0, 3)
    (work / "validation.txt").write_text("".join(r["text"] + "\n" for r in rows["validation"]))
    return "".join(r["text"] + "\n" for r in rows["train"]).encode()


def _corpus(work: Path, size: int, chunk: bytes) -> Path:
    """A corpus of about `size` MB of `chunk` repeated (made once)."""
    path = work / f"corpus-{size}mb.txt"
    if not path.exists() or path.stat().st_size < size * 2**20:
        with open(path, "wb") as f:
            for _ in range(max(1, round(size * 2**20 / len(chunk)))):
                f.write(chunk)
    return path


@benchmark("streaming")
def bench_streaming(sizes_mb: tuple[int, ...] = (10, 1000), steps: int = 150) -> dict:
    """Peak RSS of `hfpipe train` with data.streaming on generated corpora of growing size (the same
    steps, model, tokenizer budget): flat when the corpus grows 100x. The in-memory path on the small
    corpus, for scale."""
    work = Path("/tmp/hfpipe-bench-stream")
    work.mkdir(parents=True, exist_ok=True)
    chunk = _chunk(work)
    out: dict = {"steps": steps, "chunk_mb": round(len(chunk) / 2**20, 2)}
    for size in sizes_mb:
        path = _corpus(work, size, chunk)
        common = ["recipes/gpt2-clm-pretrain.yaml", "--overwrite", "~data.builtin", f"data.train={path}"]
        common += [f"data.validation={work / 'validation.txt'}", f"train.max_steps={steps}"]
        common += ["train.eval_every=never", "train.save_every=never", "tokenizer.train.max_examples=20000"]
        for streaming in (True, False) if size == sizes_mb[0] else (True,):
            name = f"{size}MB {'streamed' if streaming else 'in memory'}"
            args = [*common, f"data.streaming={str(streaming).lower()}", f"output_dir={work / 'run'}"]
            started = time.perf_counter()
            metrics, rss = train_in_child(args)
            out[name] = {
                "file_mb": round(path.stat().st_size / 2**20, 1),
                "peak_rss_mb": round(rss),
                "wall_s": round(time.perf_counter() - started, 1),
                "train_s": metrics["train"]["train_s"],
            }
            say(name, out[name])
    small, large = (out[f"{s}MB streamed"]["peak_rss_mb"] for s in (sizes_mb[0], sizes_mb[-1]))
    out["rss_ratio_largest_over_smallest_streamed"] = round(large / small, 3)
    return out
