"""Tokenized splits, cached on disk under a key of everything that decides their content.

The key covers the tokenizer (its full serialized form, special tokens and limits), the preprocessing
settings (the recipe's data section, the task, and what else the task declares its `prepare` reads), the
data itself (sha256 of every data file; the recipe's generator settings for built-in data; the datasets
fingerprint for Hub data) and the code that prepares it (the task module and hfpipe's data reader). Any
change to one of them is a different key, so a stale entry is never read; an unchanged recipe reads its
splits back instead of tokenizing again.

Entries are written to a temporary directory and renamed into place, so a crash never leaves a half
entry under a valid key. The cache lives in $HFPIPE_CACHE (default ~/.cache/hfpipe/prepared); deleting
it is always safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("hfpipe")

CACHE_ENV = "HFPIPE_CACHE"
INFO = "hfpipe-cache.json"


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "prepared"
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "hfpipe" / "prepared"


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides how the tokenizer turns text into ids."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer: its vocabulary and settings are all there is
        digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    else:
        # Without the truncation / padding state a call leaves behind: the same tokenizer before and after
        # tokenizing a split (question-answering's windows set a stride) has one fingerprint.
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        digest.update(json.dumps(state, sort_keys=True).encode())
    settings = {
        "class": type(tokenizer).__name__,
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "added": sorted(map(str, tokenizer.get_added_vocab().items())),
        "model_max_length": min(int(tokenizer.model_max_length), 10**12),
        "padding_side": tokenizer.padding_side,
        "truncation_side": tokenizer.truncation_side,
        "lower": getattr(tokenizer, "do_lower_case", None),
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _source_digest() -> str:
    """sha256 of the code that turns raw rows into model inputs: the task modules and the data reader."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted([*package.glob("tasks/*.py"), package / "data.py", package / "builtin_data.py"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def split_key(raw, split: str, tokenizer, config, recipe, task, file_digests: dict[str, str]) -> dict:
    """Everything that decides the prepared `split` (the cache key is the sha256 of its JSON)."""
    key = {
        "format": 2,
        "task": task.name,
        "split": split,
        "code": _source_digest(),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "data": recipe.data.model_dump(mode="json", exclude={"cache", "source_hint"}),
        "files": file_digests,
        "origin": raw.origin,
        "settings": task.preparation_settings(recipe, config),
    }
    if recipe.data.validation_fraction:  # the held-out rows depend on the seed
        key["seed"] = recipe.train.seed
    if raw.origin.startswith("hub:"):
        key["hub_fingerprint"] = raw.splits[split]._fingerprint
    return key


def prepare_split(raw, split: str, tokenizer, config, recipe, task, file_digests: dict[str, str]):
    """task.prepare for one split, read from the cache when an entry with the same key exists."""
    import datasets

    if not recipe.data.cache:
        return task.prepare(raw, split, tokenizer, config, recipe)
    key_data = split_key(raw, split, tokenizer, config, recipe, task, file_digests)
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True, default=str).encode()).hexdigest()
    entry = cache_root() / key[:2] / key
    if (entry / INFO).exists():
        try:
            prepared = datasets.load_from_disk(str(entry))
        except Exception as exc:  # a damaged entry is rebuilt, never trusted
            log.warning("tokenized-data cache entry %s is unreadable (%s); rebuilding it", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
        else:
            log.info("%s: %d examples read from the tokenized-data cache (%s)", split, len(prepared), entry)
            return prepared
    prepared = task.prepare(raw, split, tokenizer, config, recipe)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        prepared.save_to_disk(str(staging))
        (staging / INFO).write_text(json.dumps(key_data, indent=1, sort_keys=True, default=str))
        try:
            os.rename(staging, entry)  # atomic; fails if another process got there first
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:  # a read-only or full disk costs the cache, never the run
        log.warning("could not write the tokenized-data cache under %s: %s", entry.parent, exc)
    return prepared
