"""Build the task's head: ``from_pretrained`` for a Hub name or local directory, ``from_config`` for scratch."""

from __future__ import annotations

import logging
from typing import Any

from hfpipe.errors import RecipeError, RunError, did_you_mean
from hfpipe.errors import first_line as _first_line

log = logging.getLogger("hfpipe")


def auto_class(task):
    import transformers

    return getattr(transformers, task.auto_model)


# Config values hfpipe derives from the tokenizer and the data; a recipe setting them would disagree.
DERIVED_KEYS = (
    "vocab_size",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "decoder_start_token_id",
    "forced_eos_token_id",
    "num_labels",
    "id2label",
    "label2id",
    "problem_type",
)


def _error_text(exc: Exception) -> str:
    """An exception's message on one line (validation errors span several)."""
    return " ".join(line.strip() for line in str(exc).strip().splitlines())[:300] or type(exc).__name__


def _check_config_keys(config_class, keys, where: str) -> None:
    """RecipeError for a config key the model class does not know (AutoConfig would silently keep it)."""
    for key in keys:
        if key in DERIVED_KEYS:
            raise RecipeError(
                "set by hfpipe from the tokenizer and the data; remove it from the recipe",
                key=f"{where}.{key}",
            )
    known = set(config_class().to_dict())
    known |= set(getattr(config_class, "attribute_map", {}))
    for key in keys:
        if key not in known:
            raise RecipeError(
                f"{config_class.model_type} has no config key {key!r}{did_you_mean(key, known)}",
                key=f"{where}.{key}",
            )


def _has_pickle_weights(name_or_path: str) -> bool:
    from pathlib import Path

    folder = Path(name_or_path)
    return folder.is_dir() and any(folder.glob("*.bin")) or folder.is_dir() and any(folder.glob("*.pt"))


def build_model(recipe, task, tokenizer, head_kwargs: dict[str, Any]):
    """The model for `recipe` with the task's head; config values from the recipe, then the head's."""
    import transformers

    cls = auto_class(task)
    spec = recipe.model
    if spec.architecture:
        from hfpipe.architectures import ARCHITECTURES

        arch = ARCHITECTURES[spec.architecture]
        config_class = transformers.CONFIG_MAPPING[arch.model_type]
        _check_config_keys(config_class, spec.config, "model.config")
        special = {
            f"{k}_id": tokenizer.convert_tokens_to_ids(v)
            for k, v in arch.special_tokens.items()
            if k in ("pad_token", "bos_token", "eos_token")
        }
        if arch.decoder_start:  # encoder-decoders: the decoder's first token, and the one that must end
            special["decoder_start_token_id"] = special[f"{arch.decoder_start}_id"]
            special["forced_eos_token_id"] = special["eos_token_id"]
            if arch.model_type == "marian":  # Marian names its pad-like start token separately
                special["decoder_vocab_size"] = len(tokenizer)
        transformers.set_seed(recipe.train.seed)  # the random init is part of the recipe's seed
        try:
            config = config_class(
                **spec.config,
                vocab_size=len(tokenizer),
                **special,
                **head_kwargs,
            )
            model = cls.from_config(config, **_attention(spec))
        except Exception as exc:  # noqa: BLE001  only recipe values go in: a wrong type, heads not dividing hidden
            raise RecipeError(f"invalid model config: {_error_text(exc)}", key="model.config") from None
        log.info(
            "built %s from config: %s parameters, %s attention",
            arch.model_type,
            f"{model.num_parameters():,}",
            model.config._attn_implementation,
        )
        return model
    config = pretrained_config(spec, head_kwargs)
    transformers.set_seed(recipe.train.seed)  # a new head is initialised randomly too
    try:
        model, loading = cls.from_pretrained(
            spec.name_or_path,
            output_loading_info=True,
            config=config,
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            # A new label set (or a checkpoint of another head) gets a freshly initialised head.
            ignore_mismatched_sizes=True,
            use_safetensors=None if spec.allow_pickle_weights else True,
            **_attention(spec),
        )
    except (OSError, ValueError) as exc:
        if not spec.allow_pickle_weights and _has_pickle_weights(spec.name_or_path):
            raise RecipeError(
                f"{spec.name_or_path} has only pickle weights (*.bin / *.pt), which can run code when loaded; "
                "convert them to safetensors, or set model.allow_pickle_weights: true for a checkpoint you trust",
                key="model.name_or_path",
            ) from None
        raise RecipeError(
            f"cannot load model {spec.name_or_path!r}: {_first_line(exc)}", key="model.name_or_path"
        ) from None
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        if recipe.peft is not None:
            raise RecipeError(
                f"the tokenizer has {len(tokenizer)} tokens, the base model's embeddings "
                f"{model.get_input_embeddings().num_embeddings}: an adapter keeps the embeddings frozen and "
                "cannot add tokens; use the base model's own tokenizer",
                key="tokenizer.name_or_path",
            )
        model.resize_token_embeddings(len(tokenizer))
    log.info(
        "loaded %s: %s parameters, %s attention",
        spec.name_or_path,
        f"{model.num_parameters():,}",
        model.config._attn_implementation,
    )
    if recipe.peft is not None:
        from hfpipe.adapters import wrap

        model = wrap(model, recipe, task, new_modules=_newly_initialised(loading))
    return model


def pretrained_config(spec, head_kwargs: dict[str, Any]):
    """The config of a pretrained `model.name_or_path` (downloaded or local; no weights) with the recipe's
    `model.config` values and the head's on top; RecipeError for what cannot load or does not fit."""
    import transformers

    from hfpipe.adapters import is_adapter_run

    if is_adapter_run(spec.name_or_path):
        raise RecipeError(
            f"{spec.name_or_path} is an adapter run (no full model): `hfpipe merge` it and start from the merged "
            "directory",
            key="model.name_or_path",
        )
    try:
        config = transformers.AutoConfig.from_pretrained(
            spec.name_or_path, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise RecipeError(
            f"cannot load model {spec.name_or_path!r}: {_first_line(exc)}", key="model.name_or_path"
        ) from None
    _check_config_keys(type(config), spec.config, "model.config")
    try:
        for key, value in {**spec.config, **head_kwargs}.items():
            setattr(config, key, value)
    except Exception as exc:  # noqa: BLE001  only recipe values go in
        raise RecipeError(f"invalid model config: {_error_text(exc)}", key="model.config") from None
    return config


def _newly_initialised(loading: dict) -> list[str]:
    """The outermost modules holding weights the checkpoint lacked (a new head: classifier, qa_outputs, an
    MLM head on a classifier's checkpoint). Under an adapter they train in full and are saved with it: left
    frozen, they would stay random, and not the same random when the run is loaded again."""
    keys = set(loading.get("missing_keys") or ())
    keys |= {k[0] if isinstance(k, tuple) else k for k in loading.get("mismatched_keys") or ()}
    modules = sorted({k.rsplit(".", 1)[0] for k in keys if "." in k}, key=lambda m: m.count("."))
    outermost: list[str] = []
    for module in modules:
        if not any(module == m or module.startswith(m + ".") for m in outermost):
            outermost.append(module)
    return outermost


def load_run_model(run_dir, task, recipe):
    """Model and tokenizer of a finished run directory: a Hugging Face model directory, or an adapter
    directory whose base model is loaded first (transparently: the same calls work on both)."""
    from transformers import AutoTokenizer

    from hfpipe.adapters import is_adapter_run, load_adapter_run

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(run_dir))
        if is_adapter_run(run_dir):
            return load_adapter_run(run_dir, task, recipe), tokenizer
        model = auto_class(task).from_pretrained(str(run_dir))
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot load the model: {_first_line(exc)}", file=str(run_dir)) from None
    model.eval()
    return model, tokenizer


def _attention(spec) -> dict:
    """model.attn_implementation as the keyword transformers takes (nothing: its own default)."""
    return {"attn_implementation": spec.attn_implementation} if spec.attn_implementation else {}
