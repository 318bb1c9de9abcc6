"""Build the task's head: ``from_pretrained`` for a Hub name or local directory, ``from_config`` for scratch."""

from __future__ import annotations

import logging
from typing import Any

from hfpipe.errors import HfpipeError, RecipeError, RunError, did_you_mean, first_line

log = logging.getLogger("hfpipe")


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


def build_model(recipe, task, tokenizer, head_kwargs: dict[str, Any]):
    """The model for `recipe` with the task's head; config values from the recipe, then the head's."""
    import transformers

    cls = task.auto_class
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
            model = cls.from_config(config, **attention_kwargs(spec))
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
    model, fresh = load_pretrained(
        cls,
        spec.name_or_path,
        spec,
        where={"key": "model.name_or_path"},
        config=config,
        # A new label set (or a checkpoint of another head) gets a freshly initialised head.
        ignore_mismatched_sizes=True,
    )
    if fresh:
        log.info("%s: new weights, randomly initialised: %s", spec.name_or_path, ", ".join(fresh))
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        # GPT-2 has no pad token: its sequence-classification head finds each row's last token by the pad id.
        model.config.pad_token_id = tokenizer.pad_token_id
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

        model = wrap(model, recipe, task, new_modules=fresh)
    return model


def pretrained_config(spec, head_kwargs: dict[str, Any]):
    """The config of a pretrained `model.name_or_path` (downloaded or local; no weights) with the recipe's
    `model.config` values and the head's on top; RecipeError for what cannot load or does not fit."""
    import transformers

    from hfpipe.adapters import is_adapter_run
    from hfpipe.model_files import check_packages

    if is_adapter_run(spec.name_or_path):
        raise RecipeError(
            f"{spec.name_or_path} is an adapter run (no full model): `hfpipe merge` it and start from the merged "
            "directory",
            key="model.name_or_path",
        )
    check_packages(spec.name_or_path, spec.revision, "model.name_or_path")
    try:
        config = transformers.AutoConfig.from_pretrained(
            spec.name_or_path, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError, ImportError) as exc:
        raise RecipeError(
            f"cannot load model {spec.name_or_path!r}: {first_line(exc)}", key="model.name_or_path"
        ) from None
    _check_config_keys(type(config), spec.config, "model.config")
    try:
        for key, value in {**spec.config, **head_kwargs}.items():
            # task_specific_params (a T5 checkpoint's summarization and translation prefixes) gain entries
            # and keys; the checkpoint's other entries stay.
            if key == "task_specific_params" and isinstance(getattr(config, key, None), dict):
                value = _merged(getattr(config, key), value)
            setattr(config, key, value)
    except Exception as exc:  # noqa: BLE001  only recipe values go in
        raise RecipeError(f"invalid model config: {_error_text(exc)}", key="model.config") from None
    return config


def _merged(base: dict, top: dict) -> dict:
    """`top` merged into `base` key by key, nested dicts too."""
    out = dict(base)
    for key, value in top.items():
        out[key] = (
            _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def load_pretrained(
    cls,
    name_or_path: str,
    spec=None,
    *,
    where: dict,
    score: bool = False,
    error: type[HfpipeError] = RecipeError,
    **kwargs,
):
    """(model, new weights) of `cls` from a Hub name or local directory, with the recipe's `model` settings
    (`spec`: revision, trust_remote_code, allow_pickle_weights, attn_implementation; None for an hfpipe run
    directory, which holds safetensors). Every failure is one line (`error` at `where`): a missing package,
    pickle-only weights, a checkpoint that does not load.

    The new weights are the outermost modules the checkpoint has no weights for (a new head). Training
    gives them a random start; `score` (evaluation, prediction, few-shot) refuses them: a random head scored
    as if trained gives a different number on every run."""
    from hfpipe.model_files import check_packages, pickle_only

    revision = getattr(spec, "revision", None)
    allow_pickle = getattr(spec, "allow_pickle_weights", False)
    check_packages(name_or_path, revision, where.get("key"))
    try:
        model, loading = cls.from_pretrained(
            name_or_path,
            output_loading_info=True,
            revision=revision,
            trust_remote_code=getattr(spec, "trust_remote_code", False),
            use_safetensors=None if allow_pickle else True,
            **(attention_kwargs(spec) if spec is not None else {}),
            **kwargs,
        )
    except (OSError, ValueError, ImportError) as exc:
        check_packages(name_or_path, revision, where.get("key"))  # downloaded by now: its files tell
        if not allow_pickle and (pickle_only(name_or_path, revision) or "use_safetensors" in str(exc)):
            raise error(
                f"{name_or_path} has only pickle weights (*.bin / *.pt), which can run code when loaded; "
                "convert them to safetensors, or set model.allow_pickle_weights: true for a checkpoint you trust",
                **where,
            ) from None
        raise error(f"cannot load model {name_or_path!r}: {first_line(exc)}", **where) from None
    fresh = newly_initialised(loading)
    if score and fresh:
        raise error(
            f"{name_or_path} has no weights for {', '.join(fresh)} of {type(model).__name__}: scoring it would "
            "score a random head; train this head first (hfpipe train) or use a checkpoint that has it",
            **where,
        )
    return model, fresh


def newly_initialised(loading: dict) -> list[str]:
    """The outermost modules holding weights the checkpoint lacked (a new head: classifier, qa_outputs, an
    MLM head on a classifier's checkpoint). Under an adapter they train in full and are saved with it: left
    frozen, they would stay random, and not the same random when the run is loaded again."""
    keys = set(loading.get("missing_keys") or ())
    keys |= {k[0] if isinstance(k, tuple) else k for k in loading.get("mismatched_keys") or ()}
    modules = sorted({k.rsplit(".", 1)[0] if "." in k else k for k in keys}, key=lambda m: m.count("."))
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
    except (OSError, ValueError, ImportError) as exc:
        raise RunError(f"cannot load the tokenizer: {first_line(exc)}", file=str(run_dir)) from None
    if is_adapter_run(run_dir):
        return load_adapter_run(run_dir, task, recipe), tokenizer
    model, _ = load_pretrained(
        task.auto_class, str(run_dir), where={"file": str(run_dir)}, score=True, error=RunError
    )
    model.eval()
    return model, tokenizer


def attention_kwargs(spec) -> dict:
    """model.attn_implementation as the keyword transformers takes (nothing: its own default)."""
    return {"attn_implementation": spec.attn_implementation} if spec.attn_implementation else {}
