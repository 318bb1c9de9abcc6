"""PEFT on every head: wrap a model with the recipe's ``peft:`` section; save, reload and merge adapter runs.

Nothing here knows a task. The task's ``peft_task_type`` picks PEFT's model class, which also trains the
head of classification / QA models in full (``classifier``, ``qa_outputs``); default target modules come
from the model's ``model_type``. A new task, or a pretrained model of another architecture, needs no code.

An adapter run directory is a PEFT adapter directory (adapter_config.json, adapter_model.safetensors,
tokenizer) plus hfpipe's files; it has no config.json on purpose: transformers would take the directory
for a full model and look for its weights. ``base_model.json`` names the base model, the config it was
loaded with (labels, dropout overrides) and, for a local base, the sha256 of its weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hfpipe.errors import RecipeError, RunError, first_line

log = logging.getLogger("hfpipe")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_RECORD = "base_model.json"

# Default modules per model_type. Attention query / value for LoRA (as in the LoRA paper); IA3 scales keys,
# values and the feed-forward output. Other model types fall back to PEFT's own tables.
LORA_TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "gpt2": ["c_attn"],
    "t5": ["q", "v"],
    "bart": ["q_proj", "v_proj"],
    "marian": ["q_proj", "v_proj"],
}
IA3_TARGETS = {  # (target_modules, feedforward_modules)
    "bert": (["key", "value", "output.dense"], ["output.dense"]),
    "roberta": (["key", "value", "output.dense"], ["output.dense"]),
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
    "t5": (["k", "v", "wo"], ["wo"]),
    "bart": (["k_proj", "v_proj", "fc2"], ["fc2"]),
    "marian": (["k_proj", "v_proj", "fc2"], ["fc2"]),
}


# The modules PEFT's task classes train in full by themselves (peft.PeftModelFor*: classifier_module_names,
# qa_module_names).
HEADS = {
    "SEQ_CLS": ("classifier", "score"),
    "TOKEN_CLS": ("classifier", "score"),
    "QUESTION_ANS": ("qa_outputs",),
}


def is_adapter_run(run_dir) -> bool:
    return (Path(run_dir) / ADAPTER_CONFIG).is_file()


def is_peft_model(model) -> bool:
    """True for a PeftModel, without importing peft (7 s) when nothing uses it."""
    import sys

    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def _matches(name: str, target: str) -> bool:
    """PEFT's rule for a list of target names: the module's dotted path is the name or ends with .name."""
    return name == target or name.endswith("." + target)


def _layer_names(model) -> list[str]:
    """Distinct last names of the model's linear layers: what a user can put in target_modules."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if type(module).__name__ in ("Linear", "Conv1D") and name
    }
    return sorted(names)


def _check_names(model, names: list[str], key: str) -> None:
    modules = [name for name, _ in model.named_modules()]
    missing = [t for t in names if not any(_matches(m, t) for m in modules)]
    if missing:
        raise RecipeError(
            f"no module of this {model.config.model_type} model is called {', '.join(map(repr, missing))} "
            f"(its linear layers: {', '.join(_layer_names(model))})",
            key=key,
        )


def _defaults(model, method: str):
    """(target_modules, feedforward_modules) of the model's architecture for `method`."""
    from peft.utils import constants

    model_type = model.config.model_type
    if method == "lora":
        targets = LORA_TARGETS.get(
            model_type
        ) or constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
        feedforward = None
    else:
        targets, feedforward = IA3_TARGETS.get(model_type) or (
            constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING.get(model_type),
            constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type),
        )
    if not targets:
        raise RecipeError(
            f"no default target modules for model type {model_type!r}: give peft.target_modules "
            f"(its linear layers: {', '.join(_layer_names(model))})",
            key="peft.target_modules",
        )
    return list(targets), list(feedforward) if feedforward else None


def _conv1d(model, targets: list[str]) -> bool:
    """GPT-2 keeps its attention / MLP weights as Conv1D (in x out, the transpose of nn.Linear)."""
    return any(
        type(module).__name__ == "Conv1D" and any(_matches(name, t) for t in targets)
        for name, module in model.named_modules()
    )


def peft_config(model, recipe, task, new_modules: list[str] = ()):
    """The PEFT config of the recipe's `peft:` section for `model` (a transformers model); `new_modules`
    (weights the checkpoint lacked) train in full beside the adapter, as the recipe's modules_to_save."""
    import peft

    spec = recipe.peft
    if spec.modules_to_save:
        _check_names(model, spec.modules_to_save, "peft.modules_to_save")
    # PEFT trains the task head in full by itself (HEADS); a new module inside it (RoBERTa's
    # classifier.dense) must not be wrapped twice.
    given = list(spec.modules_to_save or ())
    covered = set(given) | set(HEADS.get(task.peft_task_type, ()))
    parts = lambda m: m.split(".")  # noqa: E731
    new = [
        m
        for m in new_modules
        if not any(_matches(".".join(parts(m)[:i]), c) for c in covered for i in range(1, len(parts(m)) + 1))
    ]
    to_save = [*given, *(m for m in new if m not in given)]
    common = {
        "task_type": task.peft_task_type,
        "modules_to_save": to_save or None,
        "revision": recipe.model.revision,
    }
    if spec.method == "prefix-tuning":
        if not (model.config.is_encoder_decoder or task.is_causal):
            raise RecipeError(
                f"prefix-tuning needs a decoder or an encoder-decoder (GPT-2, T5, BART, Marian); this "
                f"{model.config.model_type} encoder does not read key / value prefixes: use lora or ia3",
                key="peft.method",
            )
        return peft.PrefixTuningConfig(num_virtual_tokens=spec.num_virtual_tokens, **common)
    if spec.target_modules:
        targets = list(spec.target_modules)
        feedforward = list(spec.feedforward_modules or [])
        if spec.method == "ia3" and spec.feedforward_modules is None:  # the defaults' feed-forward names
            known = IA3_TARGETS.get(model.config.model_type, ((), ()))[1]
            feedforward = [t for t in targets if t in known]
    else:
        targets, feedforward = _defaults(model, spec.method)
    _check_names(model, targets, "peft.target_modules")
    if spec.method == "lora":
        return peft.LoraConfig(
            r=spec.r,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            target_modules=targets,
            bias=spec.bias,
            fan_in_fan_out=_conv1d(model, targets),
            **common,
        )
    return peft.IA3Config(
        target_modules=targets,
        feedforward_modules=feedforward or [],
        fan_in_fan_out=_conv1d(model, targets),
        **common,
    )


def wrap(model, recipe, task, new_modules: list[str] = ()):
    """`model` with the recipe's adapter: base weights frozen, adapter (and task head) trainable."""
    import warnings

    import peft

    config = peft_config(model, recipe, task, new_modules)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        try:
            wrapped = peft.get_peft_model(model, config)
        except (ValueError, TypeError) as exc:
            text = " ".join(str(exc).split())[:300]
            raise RecipeError(f"PEFT cannot adapt this model: {text}", key="peft") from None
    _pass_every_input(wrapped)
    trainable, total = wrapped.get_nb_trainable_parameters()
    spec = recipe.peft
    what = (
        f"{spec.method} r={spec.r} alpha={spec.alpha:g} on {', '.join(config.target_modules)}"
        if spec.method == "lora"
        else f"ia3 on {', '.join(config.target_modules)}"
        if spec.method == "ia3"
        else f"prefix-tuning, {spec.num_virtual_tokens} virtual tokens"
    )
    names = [name for name, _ in model.named_modules()]
    saved = sorted(t for t in wrapped.modules_to_save or () if any(_matches(n, t) for n in names))
    log.info(
        "%s%s: %s of %s parameters train (%.2f%%)",
        what,
        f" + {', '.join(saved)} in full" if saved else "",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return wrapped


def _pass_every_input(model):
    """PEFT 0.21's PeftModelForQuestionAnswering drops token_type_ids and position_ids on the way to a LoRA /
    IA3 model: BERT then reads the context as segment A, so the adapter trains on other inputs than the
    merged model sees (measured: logits 5.0 apart). The adapter's own forward (base_model: the LoRA / IA3
    wrapper) passes everything through; the PeftModel class stays, so saving and merging are unchanged."""
    if (
        type(model).__name__ == "PeftModelForQuestionAnswering"
        and not model.active_peft_config.is_prompt_learning
    ):
        model.forward = model.base_model.forward
    return model


def reserved_positions(model) -> int:
    """Positions a prefix-tuning adapter takes before the text of a decoder-only model (0 otherwise)."""
    if not is_peft_model(model) or model.config.is_encoder_decoder:
        return 0
    config = model.active_peft_config
    return config.num_virtual_tokens if config.is_prompt_learning else 0


def parameter_counts(model) -> dict:
    """{"total", "trainable", "trainable_fraction"} of a model (wrapped or not)."""
    if is_peft_model(model):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "trainable_fraction": round(trainable / total, 6)}


# ---------------------------------------------------------------------------------------------------
# Checkpoints: only what trains


def save_options(model) -> dict:
    """Keywords of `save_pretrained` for `model`. An adapter never saves its base's embedding matrix: hfpipe
    refuses a tokenizer that would resize it, and peft's "auto" check asks the Hub for the base's config
    (a warning offline)."""
    return {"save_embedding_layers": False} if is_peft_model(model) else {}


def register_checkpoint_hooks(accelerator) -> None:
    """Resumable checkpoints of a model with frozen weights hold only its trainable ones.

    The frozen base comes back from the recipe (model.name_or_path) when a run resumes, so a LoRA checkpoint
    of a 110M-parameter model is a few MB, not 440. Models without frozen weights are saved whole, as before.
    """

    def trainable_names(model) -> set[str] | None:
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        return names if len(names) < sum(1 for _ in model.parameters()) else None

    def save_hook(models, weights, _output_dir) -> None:
        for i, model in enumerate(models):
            names = trainable_names(model)
            if names is not None and i < len(weights):
                weights[i] = {k: v for k, v in weights[i].items() if k in names}

    def load_hook(models, input_dir) -> None:
        from safetensors.torch import load_file

        for i, model in list(enumerate(models)):
            names = trainable_names(model)
            if names is None:
                continue
            path = Path(input_dir) / (f"model_{i}.safetensors" if i else "model.safetensors")
            state = load_file(str(path))
            missing = sorted(names - set(state))
            if missing:
                raise RunError(
                    f"checkpoint lacks trainable weights {missing[:3]} of this model", file=str(path)
                )
            try:
                model.load_state_dict(state, strict=False)
            except RuntimeError as exc:  # a base of another shape than the one the run started with
                raise RunError(
                    f"checkpoint does not fit the model: {first_line(exc)}", file=str(path)
                ) from None
            models.remove(model)  # loaded: Accelerate must not load it again, strictly

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def load_saved_adapter(model, directory) -> None:
    """Load the adapter weights saved by `model.save_pretrained(directory)` back into `model` (the best one)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(Path(directory) / ADAPTER_WEIGHTS)))


# ---------------------------------------------------------------------------------------------------
# The run directory


def _weights(folder: Path) -> dict[str, dict]:
    """{file: {sha256, size, mtime_ns}} of a local model's safetensors files."""
    import hashlib

    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        stat = path.stat()
        out[path.name] = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return out


def base_changed(record: dict, base: str) -> bool:
    """True when a local base's weights differ from those recorded. Files of the recorded size and time
    are taken as unchanged (hashing a multi-GB base at every command would cost seconds)."""
    expected = record.get("weights")
    folder = Path(base)
    if not expected or not folder.is_dir():
        return False
    files = sorted(folder.glob("*.safetensors"))
    if [p.name for p in files] != sorted(expected):
        return True
    stale = [
        p
        for p in files
        if (p.stat().st_size, p.stat().st_mtime_ns)
        != (expected[p.name]["size"], expected[p.name]["mtime_ns"])
    ]
    if not stale:
        return False
    current = _weights(folder)
    return any(current[p.name]["sha256"] != expected[p.name]["sha256"] for p in stale)


def base_record(model, recipe) -> dict:
    """base_model.json: which base the adapter needs, the config it was loaded with, and (local) the
    sha256 of its weights / (Hub) the commit it came from."""
    name = recipe.model.name_or_path
    inner = model.get_base_model() if is_peft_model(model) else model
    record = {
        "name_or_path": name,
        "revision": recipe.model.revision,
        "commit": getattr(inner.config, "_commit_hash", None),
        "model_type": inner.config.model_type,
        "config": inner.config.to_dict(),
    }
    if Path(name).is_dir():
        record["weights"] = _weights(Path(name))
    return record


def load_adapter_run(run_dir, task, recipe):
    """(model) of an adapter run: its base model (loaded with the config of training) plus the adapter."""
    import transformers
    from peft import PeftModel

    run_dir = Path(run_dir)
    try:
        adapter = json.loads((run_dir / ADAPTER_CONFIG).read_text())
        record = json.loads((run_dir / BASE_RECORD).read_text()) if (run_dir / BASE_RECORD).exists() else {}
    except (OSError, ValueError) as exc:
        raise RunError(f"unreadable adapter description: {exc}", file=str(run_dir)) from None
    base = adapter.get("base_model_name_or_path") or record.get("name_or_path")
    if not base:
        raise RunError(f"{ADAPTER_CONFIG} names no base model (base_model_name_or_path)", file=str(run_dir))
    config = None
    conf = record.get("config") or {}
    if conf.get("model_type") in transformers.CONFIG_MAPPING:  # else (remote code): the base's own config
        config = transformers.CONFIG_MAPPING[conf["model_type"]].from_dict(conf)
    if base_changed(record, base):
        log.warning(
            "the base model %s has changed since this adapter was trained on it (its weights' sha256 "
            "differ): outputs will not be those the run measured",
            base,
        )
    try:
        model = task.auto_class.from_pretrained(
            base,
            config=config,
            # the Hub commit of training, when the recipe named no revision
            revision=adapter.get("revision") or (record.get("commit") if not Path(base).is_dir() else None),
            trust_remote_code=recipe.model.trust_remote_code,
            ignore_mismatched_sizes=True,  # a new head (other labels): its trained weights are the adapter's
            use_safetensors=None if recipe.model.allow_pickle_weights else True,
        )
    except (OSError, ValueError) as exc:
        raise RunError(
            f"this adapter needs its base model {base!r} ({ADAPTER_CONFIG} base_model_name_or_path), which "
            f"does not load: {first_line(exc)}",
            file=str(run_dir),
        ) from None
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        try:
            model = PeftModel.from_pretrained(model, str(run_dir))
        except (RuntimeError, ValueError, KeyError) as exc:  # e.g. a size mismatch with a changed base
            raise RunError(
                f"the adapter does not fit its base model {base!r}: {' '.join(first_line(exc).split())}",
                file=str(run_dir),
            ) from None
    _pass_every_input(model)
    model.eval()
    return model


def probe_inputs(model, tokenizer):
    """One input every head accepts (decoder inputs too for encoder-decoders), to compare two models."""
    # A text pair where the tokenizer knows segments (BERT: token_type_ids 0 and 1), short enough for any
    # model's positions.
    first, second = ["where does the quick brown fox jump?"], ["the fox jumps over the dog."]
    pair = "token_type_ids" in tokenizer.model_input_names and not model.config.is_encoder_decoder
    batch = tokenizer(first, second if pair else None, truncation=True, max_length=24, return_tensors="pt")
    if model.config.is_encoder_decoder:
        start = model.config.decoder_start_token_id or 0
        decoder = batch["input_ids"][:, :-1].clone()
        decoder[:, 0] = start
        batch["decoder_input_ids"] = decoder
    return {k: v.to(model.device) for k, v in batch.items()}


def max_output_difference(a, b, absolute: bool = False) -> float:
    """Largest absolute difference between the tensors two model outputs share (logits, start / end);
    `absolute`: the largest magnitude in `a` instead."""
    import torch

    worst = 0.0
    for key, value in a.items():
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            continue
        if absolute:
            worst = max(worst, value.float().abs().max().item())
            continue
        other = b.get(key) if hasattr(b, "get") else None
        if isinstance(other, torch.Tensor):
            worst = max(worst, (value.float() - other.float()).abs().max().item())
    return worst
