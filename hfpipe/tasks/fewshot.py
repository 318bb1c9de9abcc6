"""Few-shot evaluation (hfpipe/fewshot/): k-shot prompts scored on a trained language model. A recipe of this
task is run by `hfpipe fewshot`, never trained: it names its examples per few-shot task, not in `data`."""

from __future__ import annotations

from hfpipe.tasks import Task, register


def check_recipe(recipe) -> None:
    if recipe.fewshot is None:
        raise ValueError("@fewshot: task fewshot needs a fewshot section (tasks, k, seeds)")
    if recipe.model.architecture:
        raise ValueError("@model: a few-shot evaluation needs a trained model: give model.name_or_path")


def _not_trained(*args, **kwargs):
    from hfpipe.errors import RecipeError

    raise RecipeError("a few-shot evaluation is not trained: run it with `hfpipe fewshot RECIPE`", key="task")


FEWSHOT = register(
    Task(
        name="fewshot",
        description="Few-shot evaluation of a trained language model (hfpipe fewshot): k-shot prompts scored by "
        "option log-likelihood, generation or perplexity.",
        command="fewshot",
        auto_model="",
        peft_task_type="",
        pipeline_tag="",
        configure=_not_trained,
        training_text=_not_trained,
        prepare=_not_trained,
        collator=_not_trained,
        evaluate=_not_trained,
        primary_metric=_not_trained,
        metric_names=_not_trained,
        predict=_not_trained,
        check_recipe=check_recipe,
        run_commands=(),
    )
)
