"""The recipe schema: nested, strict, frozen pydantic sections. Each field is documented here, once.

Unknown keys are errors at every level (``extra="forbid"``); cross-field rules live in ``mode="after"``
validators on the section that owns both fields. Names (tasks, architectures, built-in datasets,
schedulers) are checked against registries, never imported: a recipe is data.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from hfpipe.training.trackers import names as tracker_names

# Marks a field whose value is a filesystem path: the loader resolves it relative to the recipe file.
PATH = {"hfpipe_path": True}
# Marks a field that may be a path or a Hub name: resolved only when it exists or starts with . / ~
PATH_OR_HUB = {"hfpipe_path": "maybe"}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Model(Section):
    """Which model to start from: a pretrained checkpoint, or an architecture built from a config."""

    name_or_path: str | None = Field(
        None,
        description="Hub model name or local directory (e.g. a previous hfpipe run) to start from.",
        json_schema_extra=PATH_OR_HUB,
    )
    architecture: str | None = Field(
        None,
        description="Build a randomly initialised model of this architecture (see `hfpipe tasks`).",
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Config values for the model (hidden_size, num_hidden_layers, dropout, ...). "
        "With `architecture` they define the model; with `name_or_path` they override the checkpoint's.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of name_or_path.")
    trust_remote_code: bool = Field(
        False, description="Allow the checkpoint to run its own Python code. Off unless set here."
    )
    allow_pickle_weights: bool = Field(
        False,
        description="Load a checkpoint that has only pickle weights (*.bin / *.pt). Off: unpickling can run "
        "code, so only safetensors load unless this is set for a checkpoint you trust.",
    )
    attn_implementation: Literal["sdpa", "eager"] | None = Field(
        None,
        description="Attention kernel: sdpa (PyTorch's scaled_dot_product_attention) or eager (the model's "
        "own matmuls); default: transformers' choice for the model (sdpa where supported).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Model:
        if bool(self.name_or_path) == bool(self.architecture):
            raise ValueError("give exactly one of model.name_or_path or model.architecture")
        if self.architecture is not None:
            from hfpipe.architectures import ARCHITECTURES

            if self.architecture not in ARCHITECTURES:
                from hfpipe.errors import did_you_mean, excerpt

                name = self.architecture
                raise ValueError(
                    f"unknown architecture {excerpt(name)}{did_you_mean(name, ARCHITECTURES)}"
                    f" (known: {', '.join(sorted(ARCHITECTURES))})"
                )
        return self


class TokenizerTraining(Section):
    """Train a tokenizer on the training split with the `tokenizers` library."""

    algorithm: Literal["wordpiece", "byte-level-bpe"] | None = Field(
        None,
        description="Tokenization model; None picks the architecture's own (WordPiece for BERT, byte-level "
        "BPE for GPT-2).",
    )
    vocab_size: int = Field(8000, ge=64, le=1_000_000, description="Target vocabulary size.")
    min_frequency: int = Field(2, ge=1, description="Drop merges / pieces seen fewer times than this.")
    lowercase: bool = Field(True, description="Lowercase and strip accents before tokenizing.")
    max_examples: int | None = Field(
        None, ge=1, description="Train on at most this many training rows (None: all of them)."
    )


class Tokenizer(Section):
    """Where the tokenizer comes from. Empty: the model's own (pretrained) or a trained one (scratch)."""

    name_or_path: str | None = Field(
        None, description="Hub name or local directory of a tokenizer.", json_schema_extra=PATH_OR_HUB
    )
    train: TokenizerTraining | None = Field(None, description="Train a new tokenizer on the training data.")

    @model_validator(mode="after")
    def _one_source(self) -> Tokenizer:
        if self.name_or_path and self.train:
            raise ValueError("give at most one of tokenizer.name_or_path or tokenizer.train")
        return self


class Columns(Section):
    """Which column of the data plays which role."""

    text: str = Field("text", description="Column with the (first) text.")
    text_pair: str | None = Field(None, description="Column with the second text of a sentence pair.")
    label: str = Field("label", description="Column with the label (a class name, an int id, or a float).")
    prompt: str = Field("prompt", description="generation: column with the prompt.")
    completion: str = Field("completion", description="generation: column with the completion to learn.")
    question: str = Field("question", description="question-answering: column with the question.")
    context: str = Field("context", description="question-answering: column with the context passage.")
    answers: str = Field(
        "answers",
        description="question-answering: column with {text: [...], answer_start: [...]} (the SQuAD layout).",
    )
    id: str = Field(
        "id", description="question-answering: column with the question id (default: row number)."
    )


def check_format(value: str) -> str:
    """A Python format string whose every {} names a column (generation templates, few-shot prompts)."""
    import string

    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
    except ValueError as exc:
        raise ValueError(f"not a valid format string: {exc}") from None
    if any(not name or not name.isidentifier() for name in fields):
        raise ValueError("every {} must name a column, e.g. {text}")
    return value


class Template(Section):
    """generation: build prompt and completion from other columns with Python format strings."""

    prompt: str = Field(description='Prompt, e.g. "Review: {text}\\nVerdict:" ({column} inserts a column).')
    completion: str = Field(description='Completion, e.g. " {label}". EOS is appended by hfpipe.')

    @field_validator("prompt", "completion")
    @classmethod
    def _parses(cls, value: str) -> str:
        return check_format(value)

    @staticmethod
    def fields(text: str) -> list[str]:
        """The columns a (validated) template string names, in order."""
        import string

        return [name for _, name, _, _ in string.Formatter().parse(text) if name]


class Builtin(Section):
    """A dataset that hfpipe generates itself, deterministically (for demos and tests)."""

    name: str = Field(description="Generator name, e.g. `sentiment`.")
    train_size: int = Field(4000, ge=1, description="Rows in the train split.")
    validation_size: int = Field(500, ge=0, description="Rows in the validation split.")
    test_size: int = Field(500, ge=0, description="Rows in the test split.")
    seed: int = Field(0, description="Seed of the generator (not of training).")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from hfpipe.builtin_data import GENERATORS

        if name not in GENERATORS:
            from hfpipe.errors import did_you_mean, excerpt

            raise ValueError(
                f"unknown built-in dataset {excerpt(name)}{did_you_mean(name, GENERATORS)} "
                f"(known: {', '.join(sorted(GENERATORS))})"
            )
        return name


Files = str | list[str]


class Data(Section):
    """Where the examples come from: local files, a Hub dataset, or a built-in generator."""

    train: Files | None = Field(
        None, description="Training file(s): csv, tsv, json, jsonl, parquet or txt.", json_schema_extra=PATH
    )
    validation: Files | None = Field(
        None, description="Validation file(s), same formats.", json_schema_extra=PATH
    )
    test: Files | None = Field(
        None, description="Test file(s), scored once at the end with the best model.", json_schema_extra=PATH
    )
    source_hint: str | None = Field(
        None, description="Where the data files come from: said when one is missing (e.g. a download page)."
    )
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet", "text", "parallel"] = Field(
        "auto",
        description="File format; auto picks it from the file extension (.txt is text). parallel: each split "
        "is a path prefix of two aligned text files, PREFIX.SOURCE_LANG and PREFIX.TARGET_LANG (one sentence "
        "per line).",
    )
    text_unit: Literal["line", "paragraph", "file"] = Field(
        "line",
        description="Text files: one document per line, per blank-line-separated paragraph, or per file "
        "(column `text`).",
    )
    dataset: str | None = Field(None, description="Hub dataset name (needs network unless cached).")
    dataset_config: str | None = Field(None, description="Hub dataset configuration, e.g. `sst2` of `glue`.")
    revision: str | None = Field(None, description="Hub dataset revision.")
    splits: dict[Literal["train", "validation", "test"], str] = Field(
        default_factory=dict,
        description="Hub split names to use, e.g. {validation: validation_matched}. Default: same names.",
    )
    builtin: Builtin | None = Field(None, description="Generate the data instead of reading it.")
    validation_fraction: float | None = Field(
        None, gt=0, lt=1, description="Hold out this fraction of train as validation when none is given."
    )
    columns: Columns = Field(default_factory=Columns, description="Column roles.")
    template: Template | None = Field(
        None, description="generation: prompt and completion built from columns (instead of columns.prompt)."
    )
    labels: list[str] | None = Field(
        None,
        description="Class names in id order. Int labels in the data index this list; string labels must "
        "be in it. None: inferred from the training split (sorted).",
    )
    label_type: Literal["auto", "classes", "regression"] = Field(
        "auto", description="auto: float labels mean regression (one output), anything else classes."
    )
    max_length: int = Field(128, ge=8, description="Truncate inputs to this many tokens.")
    max_train_samples: int | None = Field(None, ge=1, description="Use only the first N training rows.")
    streaming: bool = Field(
        False,
        description="causal-lm: read the train files as a stream (corpora larger than memory): shuffled in a "
        "buffer, tokenized and packed on the fly; needs train.max_steps. Validation / test load as usual.",
    )
    shuffle_buffer: int = Field(
        10_000, ge=1, description="data.streaming: documents held in the shuffling buffer."
    )
    max_eval_samples: int | None = Field(
        None, ge=1, description="Use only the first N validation / test rows."
    )
    source_lang: str | None = Field(
        None,
        description="translation: source language code: a column of that name, a key of a `translation` "
        "column (the WMT layout), or the suffix of parallel files.",
    )
    target_lang: str | None = Field(None, description="translation: target language code (as source_lang).")
    source_prefix: str | None = Field(
        None,
        description='translation: text put before every source, e.g. "translate English to German: " (T5).',
    )
    max_target_length: int | None = Field(
        None,
        ge=2,
        description="translation: truncate targets to this many tokens (default: max_length, "
        "which limits the sources).",
    )
    cache: bool = Field(
        True,
        description="Reuse tokenized splits from an earlier run with the same data contents, tokenizer and "
        "settings (in $HFPIPE_CACHE, default ~/.cache/hfpipe).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Data:
        sources = [name for name in ("files", "dataset", "builtin") if self._has(name)]
        if not sources:
            raise ValueError("give data.train (files), data.dataset (Hub) or data.builtin")
        if len(sources) > 1:
            raise ValueError(f"give only one data source, not {' and '.join(sources)}")
        if self.format == "parallel" and not (self.source_lang and self.target_lang):
            raise ValueError("data.format: parallel needs data.source_lang and data.target_lang")
        if (self.source_lang is None) != (self.target_lang is None):
            raise ValueError("give both data.source_lang and data.target_lang")
        if self.source_lang is not None and self.source_lang == self.target_lang:
            raise ValueError("data.source_lang and data.target_lang are the same")
        if self.validation is not None and self.validation_fraction is not None:
            raise ValueError("give data.validation or data.validation_fraction, not both")
        if self.labels is not None:
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("data.labels has duplicates")
            if self.label_type == "regression":
                raise ValueError("data.labels makes no sense with label_type: regression")
        return self

    def _has(self, source: str) -> bool:
        if source == "files":
            return any(v is not None for v in (self.train, self.validation, self.test))
        return getattr(self, source) is not None


class Train(Section):
    """How to train: schedule, optimisation, evaluation and checkpoint cadence, early stopping."""

    epochs: float = Field(3.0, gt=0, description="Passes over the training data (ignored with max_steps).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(32, ge=1, description="Examples per device per forward pass.")
    eval_batch_size: int | None = Field(None, ge=1, description="Batch size for evaluation (default: 2x).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Forward passes per optimizer step.")
    global_batch_size: int | None = Field(
        None,
        ge=1,
        description="Examples per optimizer step over all processes, instead of gradient_accumulation_steps: "
        "the accumulation is derived (global_batch_size / (batch_size x processes)), so a recipe keeps its "
        "step on any number of GPUs.",
    )
    lr: float = Field(5e-5, gt=0, lt=1, description="Peak learning rate (AdamW).")
    scheduler: Literal["linear", "cosine", "constant", "inverse_sqrt"] = Field(
        "linear",
        description="Decay after warmup: linear to 0, cosine to 0, constant, or inverse_sqrt "
        "(lr x sqrt(warmup / step) after warmup, as in the Transformer paper; needs warmup).",
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Warmup as a fraction of all steps.")
    warmup_steps: int | None = Field(None, ge=0, description="Warmup steps (overrides warmup_ratio).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases / LayerNorm).")
    adam_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), description="AdamW betas, each in [0, 1)."
    )
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm (None: no clipping).")
    seed: int = Field(42, description="Seeds python, numpy, torch, model init and the data order.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="Mixed precision. fp32 is the CPU default (bf16 is ~15x slower on CPUs "
        "without AMX); fp16 needs a GPU.",
    )
    compile: bool = Field(
        False,
        description="torch.compile the model (dynamic shapes) through Accelerate; the first steps pay the "
        "compilation. Measured in `make bench` (entry precision): see the README before turning it on.",
    )
    compile_backend: Literal[
        "inductor", "aot_eager", "eager", "cudagraphs", "onnxrt", "tensorrt", "tvm", "ofi", "fx2trt"
    ] = Field(
        "inductor",
        description="torch.compile backend (Accelerate's names): inductor (generated kernels; needs a C++ "
        "compiler on CPU), aot_eager (traces forward and backward, no code generation), eager (graph capture "
        "only), or a GPU / external one.",
    )
    fast_kernels: bool = Field(
        True,
        description="Faster kernels computing the same functions during training: CPU dropout masks drawn "
        "in bulk (numpy's PCG64 seeded by torch's generator: other masks than PyTorch's for a seed), eager "
        "attention on CPU for a model with attention dropout that transformers gave SDPA, gelu_new (GPT-2, "
        "T5 v1.1, ...) as PyTorch's fused tanh GELU, gradient scaling and clipping in one foreach pass; the "
        "model gets its own modules and attention back when training ends. false: the model's own modules, "
        "PyTorch's dropout and clip_grad_norm_. Off under train.compile.",
    )
    eval_every: Annotated[int, Field(ge=1)] | Literal["epoch", "never"] = Field(
        "epoch", description="Evaluate every N optimizer steps, each epoch, or never."
    )
    save_every: Annotated[int, Field(ge=1)] | Literal["epoch", "never"] = Field(
        "epoch", description="Write a resumable checkpoint every N steps, each epoch, or never."
    )
    save_total_limit: int | None = Field(
        2, ge=1, description="Keep only the newest N checkpoints (the best model is kept apart)."
    )
    log_every: int = Field(20, ge=1, description="Log loss, lr and throughput every N optimizer steps.")
    metric_for_best: str | None = Field(
        None, description="Validation metric that picks the best model (default: the task's, e.g. accuracy)."
    )
    greater_is_better: bool | None = Field(
        None, description="Direction of metric_for_best (default: False for loss / perplexity, else True)."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improvement of metric_for_best."
    )
    early_stopping_threshold: float = Field(
        0.0, ge=0, description="An improvement smaller than this does not count."
    )
    group_by_length: bool = Field(
        True, description="Batch examples of similar length together (less padding), in shuffled order."
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    resume: Literal["never", "auto"] = Field(
        "never",
        description="auto: continue from the newest complete checkpoint in output_dir, if any "
        "(as `hfpipe train --resume`).",
    )
    mlm_probability: float = Field(
        0.15,
        gt=0,
        lt=1,
        description="masked-lm: fraction of tokens to predict (80% [MASK], 10% random, 10% kept).",
    )
    whole_word_mask: bool = Field(
        False,
        description="masked-lm: mask whole words (all their word pieces) rather than single tokens.",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Training loss: spread this much of each target's probability over the other classes "
        "/ tokens (0.1 is usual for translation). Evaluation loss and perplexity stay plain.",
    )
    on_nonfinite_loss: Literal["stop", "skip"] = Field(
        "stop",
        description="A NaN / inf loss stops training (the last checkpoint stays intact) or skips the batch.",
    )

    @model_validator(mode="after")
    def _cadence(self) -> Train:
        if self.early_stopping_patience is not None and self.eval_every == "never":
            raise ValueError("early_stopping_patience needs evaluation: set eval_every")
        if self.scheduler == "inverse_sqrt" and not (self.warmup_steps or self.warmup_ratio):
            raise ValueError("scheduler inverse_sqrt decays from the end of warmup: set warmup_steps")
        if self.global_batch_size is not None:
            if self.gradient_accumulation_steps != 1:
                raise ValueError(
                    "@train.global_batch_size: give it or gradient_accumulation_steps, not both (the accumulation is "
                    "derived from it)"
                )
            if self.global_batch_size % self.batch_size:
                raise ValueError(
                    f"@train.global_batch_size: {self.global_batch_size} is not a multiple of batch_size "
                    f"({self.batch_size}, per process)"
                )
        return self

    def accumulation(self, processes: int) -> int:
        """Forward passes per optimizer step in each of `processes` processes."""
        if self.global_batch_size is None:
            return self.gradient_accumulation_steps
        per_step = self.batch_size * processes
        if self.global_batch_size % per_step:
            from hfpipe.errors import RecipeError

            raise RecipeError(
                f"{self.global_batch_size} is not a multiple of batch_size {self.batch_size} x {processes} "
                f"process(es) = {per_step}",
                key="train.global_batch_size",
            )
        return self.global_batch_size // per_step


class Generation(Section):
    """How text is generated: at evaluation of generation tasks, and the defaults of `hfpipe generate`."""

    max_new_tokens: int = Field(32, ge=1, description="Stop after this many new tokens (or at EOS).")
    num_beams: int = Field(1, ge=1, description="Beam search width; 1 is greedy or sampling.")
    do_sample: bool = Field(False, description="Sample instead of taking the most likely token.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (with do_sample).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep this much probability mass.")
    top_k: int = Field(50, ge=0, description="Sample among the k most likely tokens (0: no limit).")
    length_penalty: float = Field(1.0, description="Beam search: exponent on length (>1 favours longer).")
    eval_samples: int | None = Field(
        None,
        ge=0,
        description="At each evaluation, generate for at most the first N examples (None: all; 0: none, "
        "loss only). Evaluation decodes greedily or by beam search: sampling is for `hfpipe generate`.",
    )


class QuestionAnswering(Section):
    """question-answering: windows over long contexts, and how answers are picked from the logits."""

    version_2_with_negative: bool = Field(
        False,
        description="SQuAD v2: some questions have no answer (empty answers / is_impossible); the model may "
        "answer nothing.",
    )
    doc_stride: int = Field(
        128,
        ge=0,
        description="Tokens shared by consecutive windows of a context longer than data.max_length.",
    )
    max_question_length: int = Field(
        64, ge=1, description="Longest question, in tokens (longer ones are an error naming the example)."
    )
    n_best_size: int = Field(
        20, ge=1, description="Start and end candidates per window; answers kept in nbest."
    )
    max_answer_length: int = Field(30, ge=1, description="Longest answer, in tokens.")
    null_score_diff_threshold: float = Field(
        0.0, description="v2: answer nothing when the null score beats the best span's by more than this."
    )


class Peft(Section):
    """Parameter-efficient fine-tuning with PEFT: the pretrained model stays frozen; small added weights
    (and the task head: classifier / qa_outputs) train, and the run directory holds only those."""

    method: Literal["lora", "ia3", "prefix-tuning"] = Field(
        "lora",
        description="lora: low-rank updates of chosen weight matrices; ia3: learned rescaling of activations; "
        "prefix-tuning: learned key / value prefixes in every layer (decoders and encoder-decoders only).",
    )
    r: int = Field(8, ge=1, description="lora: rank of the update.")
    alpha: float = Field(16.0, gt=0, description="lora: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="lora: dropout on the adapted layers' input.")
    target_modules: list[str] | None = Field(
        None,
        description="lora / ia3: modules to adapt; a name matches every module whose dotted path ends with it. "
        "None: the architecture's own (lora: BERT query, value; GPT-2 c_attn; T5 q, v; BART / Marian q_proj, "
        "v_proj).",
    )
    feedforward_modules: list[str] | None = Field(
        None,
        description="ia3: which of target_modules are feed-forward layers (scaled at their input). None: those "
        "of target_modules that are feed-forward in the architecture's defaults.",
    )
    bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="lora: biases that train too: none, all, or those of the adapted layers."
    )
    modules_to_save: list[str] | None = Field(
        None,
        description="Modules trained in full and saved with the adapter, besides the task head "
        "(classifier / qa_outputs always are).",
    )
    num_virtual_tokens: int = Field(20, ge=1, description="prefix-tuning: learned positions per layer.")

    @model_validator(mode="after")
    def _options_of_the_method(self) -> Peft:
        applies = {
            "r": ("lora",),
            "alpha": ("lora",),
            "dropout": ("lora",),
            "bias": ("lora",),
            "target_modules": ("lora", "ia3"),
            "feedforward_modules": ("ia3",),
            "num_virtual_tokens": ("prefix-tuning",),
        }
        for name in sorted(self.model_fields_set):  # set to something else than the default
            methods = applies.get(name)
            default = type(self).model_fields[name].default
            if methods and self.method not in methods and getattr(self, name) != default:
                raise ValueError(f"@peft.{name}: {name} applies to {' / '.join(methods)}, not {self.method}")
        for name in ("target_modules", "feedforward_modules", "modules_to_save"):
            value = getattr(self, name)
            if value is not None and (not value or any(not m.strip() for m in value)):
                raise ValueError(f"@peft.{name}: give module names (or leave it out for the defaults)")
        if self.feedforward_modules and not self.target_modules:
            raise ValueError(
                "@peft.feedforward_modules: give peft.target_modules too (they must include these)"
            )
        extra = set(self.feedforward_modules or ()) - set(self.target_modules or ())
        if extra:
            from hfpipe.errors import clip

            raise ValueError(
                f"@peft.feedforward_modules: {clip(', '.join(sorted(extra)))} not in peft.target_modules"
            )
        return self


class FewshotTask(Section):
    """One few-shot task: its data, how a prompt is written, what is scored and how."""

    name: str = Field(description="Name in the results, e.g. `piqa`.")
    data: Data = Field(description="Where the examples come from (files, a Hub dataset or a built-in set).")
    split: Literal["train", "validation", "test"] = Field("test", description="The split that is scored.")
    fewshot_split: Literal["train", "validation", "test"] = Field(
        "train",
        description="Where k-shot examples are drawn from (may be the scored split: the scored example is "
        "never its own shot).",
    )
    mode: Literal["multiple_choice", "classification", "generate", "loglikelihood_rolling"] = Field(
        description="multiple_choice / classification: score each option by its summed log-likelihood after "
        "the prompt (acc, acc_norm); generate: generate and compare with the target; loglikelihood_rolling: "
        "perplexity of a text.",
    )
    description: str = Field(
        "",
        description="Put verbatim before every prompt (before its k-shot examples), e.g. an instruction ending "
        'in "\n\n"; a format string over the columns like prompt (the harness\'s task description).',
    )
    prompt: str = Field(
        "{text}",
        description='Python format string over the columns, e.g. "Question: {goal}\nAnswer:". Masked LMs '
        "(classification by cloze) need {mask} where the verbalizer goes.",
    )
    target: str | None = Field(
        None,
        description="generate: format string of the expected text (also the answer shown in k-shot examples).",
    )
    choices: list[str] | str | None = Field(
        None,
        description='multiple_choice: format strings of the options, e.g. ["{sol1}", "{sol2}"], or the name of '
        "a column holding a list of options.",
    )
    label: str = Field(
        "label",
        description="Column of the answer: an option index (multiple_choice) or a class name (classification).",
    )
    verbalizer: dict[str, str] | None = Field(
        None, description="classification: the word for each class (default: the class name itself)."
    )
    target_delimiter: str = Field(" ", description="Put between the prompt and an option / target.")
    fewshot_delimiter: str = Field("\n\n", description="Put between k-shot examples and before the question.")
    stop: list[str] = Field(
        default_factory=lambda: ["\n\n"], description="generate: generation stops at any of these strings."
    )
    max_new_tokens: int = Field(32, ge=1, description="generate: at most this many new tokens.")
    num_beams: int = Field(1, ge=1, description="generate: 1 is greedy.")
    text: str = Field("text", description="loglikelihood_rolling: column with the text.")

    @field_validator("description", "prompt", "target", "choices")
    @classmethod
    def _format_string(cls, value):
        for text in [value] if isinstance(value, str) else value or []:
            check_format(text)
        return value

    @model_validator(mode="after")
    def _mode_needs(self) -> FewshotTask:
        if self.mode == "multiple_choice" and not self.choices:
            raise ValueError("choices: multiple_choice needs the options (format strings or a list column)")
        if self.mode == "generate" and not self.target:
            raise ValueError("target: generate needs the expected text (a format string)")
        if self.mode != "multiple_choice" and self.choices:
            raise ValueError(f"choices: options are for multiple_choice, not {self.mode}")
        return self


class Fewshot(Section):
    """Few-shot evaluation (`hfpipe fewshot`): tasks, shots and seeds."""

    tasks: list[FewshotTask] = Field(min_length=1, description="The tasks to evaluate.")
    k: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="Numbers of examples in the prompt, e.g. [0, 1, 5].",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [1234],
        min_length=1,
        description="Seeds of the k-shot draws; several give mean ± std.",
    )
    sampler: Literal["per_example", "harness", "fixed", "first_n"] = Field(
        "per_example",
        description="per_example: k examples drawn for each scored example from its own seed; harness: "
        "lm-evaluation-harness's draw (one random stream per task, in data order), so prompts equal the "
        "harness's for the same seed; fixed: one draw per seed shared by every example (an example among the "
        "shots is replaced by the next drawn), so causal LMs compute the shared prompt once; first_n: the first "
        "k of the fewshot split, skipping the scored example (the harness's first_n).",
    )
    batch_size: int = Field(16, ge=1, description="Requests per forward pass.")
    reuse_context: bool = Field(
        True,
        description="Causal LMs: run each example's context once and share its key / value cache between the "
        "options, and a prompt start shared by examples (fixed shots, a description) once for all of them "
        "(same scores, less compute); false scores every (context, option) on its own.",
    )
    limit: int | None = Field(None, ge=1, description="Score only the first N examples of each task.")
    max_length: int | None = Field(
        None,
        ge=8,
        description="Longest input in tokens (default: the model's positions); longer keep their end.",
    )

    @field_validator("tasks")
    @classmethod
    def _distinct_names(cls, tasks):
        from collections import Counter

        from hfpipe.errors import clip

        twice = sorted(name for name, count in Counter(t.name for t in tasks).items() if count > 1)
        if twice:
            raise ValueError(f"task names must differ: {clip(', '.join(twice))} is used twice")
        return tasks


class Card(Section):
    """What the run directory's model card (README.md) declares beyond what hfpipe knows."""

    license: str | None = Field(
        None,
        description="License identifier for the card's metadata, e.g. apache-2.0, mit, cc-by-4.0 (the Hub's "
        "list); a fine-tuned model usually inherits its base model's license.",
    )
    language: list[str] = Field(
        default_factory=list, description="Language codes of the model, e.g. [en, de]."
    )
    datasets: list[str] = Field(
        default_factory=list,
        description="Hub dataset ids to credit (a Hub `data.dataset` is added by itself).",
    )


class Launch(Section):
    """How `hfpipe train` starts its processes (through Accelerate's launcher)."""

    num_processes: int | None = Field(
        None,
        ge=1,
        description="Training processes on this machine (GPUs, or CPU processes in a gloo group); more than 1 "
        "hands the run to `accelerate launch`. train.batch_size is per process.",
    )
    config_file: str | None = Field(
        None,
        description="A standard Accelerate config file (`accelerate config`): multi-GPU, multi-node, DeepSpeed "
        "ZeRO, FSDP; see examples/accelerate/.",
        json_schema_extra=PATH,
    )


# jsonl and the trackers of hfpipe.training.trackers' registry: a new tracker is one class there
TrackerName = Literal[tuple(tracker_names())]


class Recipe(Section):
    """A whole recipe: which task, which model and tokenizer, which data, how to train, where to write."""

    task: str = Field(
        description="Task head, e.g. `classification` (see `hfpipe tasks`), or `fewshot` for a few-shot "
        "evaluation recipe (`hfpipe fewshot`)."
    )
    description: str | None = Field(None, description="One line saying what this recipe is for.")
    model: Model = Field(description="The model to fine-tune or build.")
    tokenizer: Tokenizer = Field(default_factory=Tokenizer, description="The tokenizer to load or train.")
    data: Data | None = Field(
        None, description="The examples (required to train; few-shot tasks have their own)."
    )
    train: Train = Field(default_factory=Train, description="The training loop's settings.")
    generation: Generation = Field(default_factory=Generation, description="Text generation settings.")
    qa: QuestionAnswering = Field(
        default_factory=QuestionAnswering, description="question-answering: windows and answer selection."
    )
    peft: Peft | None = Field(
        None,
        description="Train an adapter (LoRA, IA3, prefix-tuning) on a frozen pretrained model instead of all "
        "its weights; the run directory holds the adapter and names the base model.",
    )
    fewshot: Fewshot | None = Field(None, description="Few-shot evaluation: tasks, k, seeds (task: fewshot).")
    name: str | None = Field(
        None, description="Run name for trackers, reports and the card (default: output_dir's folder name)."
    )
    tags: list[str] = Field(default_factory=list, description="Tags for trackers and the model card.")
    tracking: list[TrackerName] = Field(
        default_factory=lambda: ["jsonl"],
        description="Where training logs go: jsonl (metrics.jsonl, always written), tensorboard (event files in "
        "OUTPUT_DIR/tensorboard), mlflow (MLFLOW_TRACKING_URI, or a local store in OUTPUT_DIR/mlruns). "
        "Through Accelerate's trackers; pip install 'hfpipe[tracking]'.",
    )
    card: Card = Field(default_factory=Card, description="Model card metadata: license, languages, datasets.")
    accelerate: Launch = Field(
        default_factory=Launch,
        description="Processes and Accelerate config file for `hfpipe train` (the command line's "
        "--num-processes / --accelerate-config win).",
    )
    output_dir: str = Field(
        description="Run directory: a Hugging Face model directory plus recipe, metrics and card.",
        json_schema_extra=PATH,
    )

    # Where the recipe came from (for messages and the model card); not part of the recipe.
    _source: str | None = PrivateAttr(None)
    _overrides: tuple[str, ...] = PrivateAttr(())

    @field_validator("task")
    @classmethod
    def _known_task(cls, name: str) -> str:
        from hfpipe.tasks import task_names

        names = task_names()
        if name not in names:
            from hfpipe.errors import did_you_mean, excerpt

            raise ValueError(
                f"unknown task {excerpt(name)}{did_you_mean(name, names)} (known: {', '.join(names)})"
            )
        return name

    @model_validator(mode="after")
    def _sections_of_the_task(self) -> Recipe:
        from hfpipe.tasks import check_recipe, get_task

        check_recipe(get_task(self.task), self)  # what every task needs, then the task's own checks
        return self

    @model_validator(mode="after")
    def _peft_needs_pretrained(self) -> Recipe:
        if self.peft is not None and self.model.architecture:
            raise ValueError(
                "@peft: an adapter trains on a frozen pretrained model: give model.name_or_path (a Hub name or "
                "a run directory); a model built from config has no trained weights to keep"
            )
        return self

    @model_validator(mode="after")
    def _tokenizer_source(self) -> Recipe:
        if self.model.name_or_path and self.tokenizer.train:
            raise ValueError(
                "tokenizer.train needs model.architecture: a pretrained model keeps its own vocabulary"
            )
        if self.model.architecture and not (self.tokenizer.name_or_path or self.tokenizer.train):
            # A model built from scratch has no tokenizer of its own: train one with the defaults.
            object.__setattr__(self, "tokenizer", Tokenizer(train=TokenizerTraining()))
        if self.tokenizer.train and self.tokenizer.train.algorithm is None:
            from hfpipe.architectures import ARCHITECTURES

            arch = ARCHITECTURES.get(self.model.architecture or "bert")
            train = self.tokenizer.train.model_copy(update={"algorithm": arch.tokenizer})
            object.__setattr__(self, "tokenizer", self.tokenizer.model_copy(update={"train": train}))
        return self

    @property
    def source(self) -> str | None:
        return self._source

    @property
    def overrides(self) -> tuple[str, ...]:
        return self._overrides
