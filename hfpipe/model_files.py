"""What a checkpoint needs, read from its files without loading it: a local directory, or a Hub repo already
in the local hub cache. Cheap (a few small JSON reads, no torch or transformers), so `hfpipe validate` and
`hfpipe train` can refuse early what would otherwise fail after seconds of loading, or with a traceback."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from hfpipe.errors import MissingPackage

# Tokenizers that exist only as sentencepiece-backed Python classes (no tokenizers-library version).
SENTENCEPIECE_TOKENIZERS = ("MarianTokenizer",)
SENTENCEPIECE_MODEL_TYPES = ("marian",)
# Vocabulary files of a sentencepiece model: without a tokenizer.json, transformers converts them with
# the sentencepiece package (and protobuf).
SENTENCEPIECE_FILES = (
    "spiece.model",
    "sentencepiece.bpe.model",
    "source.spm",
    "target.spm",
    "tokenizer.model",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def _hub_cache() -> Path:
    """The hub cache as huggingface_hub finds it: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"
    )
    return Path(home).expanduser() / "hub"


def local_files(name_or_path: str, revision: str | None = None) -> Path | None:
    """The folder holding a checkpoint's files when they are on this machine: the directory itself, or the
    snapshot of a Hub repo in the hub cache (its `revision`, default main). None when only the Hub has it."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if name_or_path.count("/") > 1 or name_or_path.startswith((".", "/", "~")):
        return None
    repo = _hub_cache() / f"models--{name_or_path.replace('/', '--')}"
    ref = repo / "refs" / (revision or "main")
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit if commit else None
    return snapshot if snapshot is not None and snapshot.is_dir() else None


def _json(folder: Path, name: str) -> dict:
    try:
        data = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def required_packages(folder: Path) -> list[tuple[str, str]]:
    """(package, what needs it) for the checkpoint in `folder` that this Python cannot import."""
    config, tok_config = _json(folder, "config.json"), _json(folder, "tokenizer_config.json")
    tokenizer_class = str(tok_config.get("tokenizer_class") or "")
    model_type = str(config.get("model_type") or "")
    needs: list[tuple[str, str]] = []
    if tokenizer_class in SENTENCEPIECE_TOKENIZERS or (
        not tokenizer_class and model_type in SENTENCEPIECE_MODEL_TYPES
    ):
        needs.append(("sentencepiece", tokenizer_class or f"the {model_type} tokenizer"))
    elif not (folder / "tokenizer.json").exists():
        spm = next((name for name in SENTENCEPIECE_FILES if (folder / name).exists()), None)
        if spm is not None:
            needs += [
                ("sentencepiece", f"its tokenizer ({spm})"),
                ("google.protobuf", f"its tokenizer ({spm})"),
            ]
    return [(package, why) for package, why in needs if not installed(package)]


PIP_NAMES = {"google.protobuf": "protobuf"}


def check_packages(name_or_path: str, revision: str | None, key: str) -> None:
    """MissingPackage (exit 2, naming the package and the pip command) when the checkpoint, as far as its
    local files tell, needs a package that is not installed."""
    folder = local_files(name_or_path, revision)
    missing = required_packages(folder) if folder is not None else []
    if missing:
        package, why = missing[0]
        raise MissingPackage(PIP_NAMES.get(package, package), f"{name_or_path}: {why}", key=key)


def pickle_only(name_or_path: str, revision: str | None = None) -> bool:
    """The checkpoint's local files hold pickle weights (*.bin / *.pt) and no safetensors."""
    folder = local_files(name_or_path, revision)
    if folder is None:
        return False
    names = [p.name for p in folder.iterdir()]
    return not any(
        n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names
    ) and any(n.endswith(PICKLE_SUFFIXES) for n in names)
