"""What protects a user's work and data: overwrite rules, checks before writing, label mapping, multi-process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import RECIPES, ROOT, TINY, tiny_recipe, write

from hfpipe.api import train
from hfpipe.errors import DataError, RecipeError, UsageError
from hfpipe.recipe import load_recipe

tiny = tiny_recipe


def _fingerprint(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "override, error, fragment",
    [
        ("train.precision=fp16", RecipeError, "needs a CUDA GPU"),
        ("train.metric_for_best=f1_macro", RecipeError, "does not compute 'f1_macro'"),
        ("data.max_length=512", RecipeError, "max_position_embeddings"),
        ("model.config.num_attention_heads=3", RecipeError, "not a multiple"),
    ],
)
def test_bad_settings_never_touch_a_previous_run(tmp_path, tiny_run, override, error, fragment):
    victim = tmp_path / "victim"
    shutil.copytree(tiny_run, victim)
    before = _fingerprint(victim)
    with pytest.raises(error, match=fragment):
        train(
            load_recipe(RECIPES / "quickstart.yaml", [*TINY, override, f"output_dir={victim}"]),
            overwrite=True,
        )
    assert _fingerprint(victim) == before


def test_overwrite_spares_directories_hfpipe_did_not_create(tmp_path):
    project = tmp_path / "project"
    write(project / "notes.txt", "mine")
    write(project / "recipe.yaml", "not an hfpipe run")
    with pytest.raises(UsageError, match="not created by hfpipe"):
        train(tiny(tmp_path, "train.max_steps=1", out="project"), overwrite=True)
    assert (project / "notes.txt").read_text() == "mine"


def test_overwrite_refuses_a_run_directory_holding_the_data(tmp_path):
    first = train(tiny(tmp_path, "train.max_steps=1"))
    data = write(first / "my_data.csv", "text,label\ngood film,pos\nbad film,neg\n" * 5)
    with pytest.raises(UsageError, match="which this run reads"):
        train(tiny(tmp_path, "~data.builtin", f"data.train={data}", "train.max_steps=1"), overwrite=True)
    assert data.exists()


def test_overwrite_replaces_a_previous_run(tmp_path):
    first = train(tiny(tmp_path, "train.max_steps=1"))
    (first / "stale.txt").write_text("old")
    again = train(tiny(tmp_path, "train.max_steps=2"), overwrite=True)
    assert not (again / "stale.txt").exists()
    assert json.loads((again / "metrics.json").read_text())["train"]["steps"] == 2


def test_one_based_int_labels_are_class_names(tmp_path):
    rows = "".join(
        json.dumps({"text": f"{w} film", "label": stars}) + "\n"
        for w, stars in [("awful", 1), ("fine", 2), ("great", 3)] * 10
    )
    run = train(
        tiny(
            tmp_path, "~data.builtin", f"data.train={write(tmp_path / 's.jsonl', rows)}", "train.max_steps=2"
        )
    )
    assert json.loads((run / "config.json").read_text())["id2label"] == {"0": "1", "1": "2", "2": "3"}


def test_numeric_string_labels_sort_by_value(tmp_path):
    rows = "".join(json.dumps({"text": f"film {i}", "label": str(i)}) + "\n" for i in range(1, 12))
    run = train(
        tiny(
            tmp_path, "~data.builtin", f"data.train={write(tmp_path / 's.jsonl', rows)}", "train.max_steps=1"
        )
    )
    names = list(json.loads((run / "config.json").read_text())["id2label"].values())
    assert names == [str(i) for i in range(1, 12)]


def test_blank_label_is_an_error_not_a_class(tmp_path):
    data = write(tmp_path / "b.csv", "text,label\ngood film,1\nbad film,0\nodd film,\n")
    with pytest.raises(DataError, match="empty label") as info:
        train(tiny(tmp_path, "~data.builtin", f"data.train={data}"))
    assert info.value.line == 4


def test_string_and_int_labels_map_to_the_same_classes(tmp_path):
    # train labels read as strings ("0"/"1" with a "x" forcing the type), validation as ints
    train_file = write(
        tmp_path / "t.jsonl",
        "".join(
            json.dumps({"text": f"{w} film", "label": lab}) + "\n"
            for w, lab in [("good", "1"), ("bad", "0")] * 8
        ),
    )
    val_file = write(
        tmp_path / "v.jsonl",
        "".join(
            json.dumps({"text": f"{w} film", "label": lab}) + "\n" for w, lab in [("good", 1), ("bad", 0)] * 4
        ),
    )
    run = train(
        tiny(
            tmp_path,
            "~data.builtin",
            f"data.train={train_file}",
            f"data.validation={val_file}",
            "train.max_steps=1",
        )
    )
    assert json.loads((run / "config.json").read_text())["label2id"] == {"0": 0, "1": 1}


def test_unlabelled_test_split_is_predicted(tmp_path):
    test_file = write(tmp_path / "test.tsv", "sentence\tlabel\na good film\t-1\na dull film\t-1\n")
    train_file = write(tmp_path / "train.tsv", "sentence\tlabel\n" + "a good film\t1\na dull film\t0\n" * 8)
    run = train(
        tiny(
            tmp_path,
            "~data.builtin",
            f"data.train={train_file}",
            f"data.test={test_file}",
            "data.columns.text=sentence",
            "train.max_steps=2",
        )
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test" not in metrics
    rows = [json.loads(line) for line in (run / "test_predictions.jsonl").read_text().splitlines()]
    assert [r["sentence"] for r in rows] == ["a good film", "a dull film"]
    assert all(r["label"] in ("0", "1") for r in rows)


def test_yaml_1_2_floats_in_model_config(tmp_path):
    recipe = write(
        tmp_path / "r.yaml",
        (RECIPES / "quickstart.yaml")
        .read_text()
        .replace("max_position_embeddings: 128", "max_position_embeddings: 128\n    layer_norm_eps: 1e-5"),
    )
    loaded = load_recipe(recipe, ["train.lr=3e-4"])
    assert loaded.model.config["layer_norm_eps"] == 1e-5 and loaded.train.lr == 3e-4


def test_derived_config_keys_are_refused(tmp_path):
    with pytest.raises(RecipeError, match="set by hfpipe") as info:
        train(tiny(tmp_path, "model.config.vocab_size=1000"))
    assert info.value.key == "model.config.vocab_size"


def test_predict_rejects_non_text_inputs(cli, tiny_run, tmp_path):
    data = write(tmp_path / "in.jsonl", '{"text": "fine"}\n{"text": null}\n')
    result = cli("predict", tiny_run, "--file", data)
    assert result.exit_code == 3 and "row 2" in result.output and "None" in result.output


def test_output_into_a_new_directory(cli, tiny_run, tmp_path):
    result = cli("predict", tiny_run, "--text", "good", "-o", tmp_path / "new" / "dir" / "p.jsonl")
    assert result.exit_code == 0 and (tmp_path / "new" / "dir" / "p.jsonl").exists()


@pytest.mark.slow
def test_two_processes_write_one_run(tmp_path):
    """torchrun with 2 CPU processes (gloo): one run directory, per-process RNG in checkpoints,
    steps counted per process, the schedule reaching zero at the last step."""
    out = tmp_path / "mp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        str(ROOT / ".venv" / "bin" / "torchrun")
        if (ROOT / ".venv" / "bin" / "torchrun").exists()
        else "torchrun",
        "--nproc_per_node",
        "2",
        "-m",
        "hfpipe",
        "train",
        str(RECIPES / "quickstart.yaml"),
        *TINY,
        "data.builtin.train_size=256",
        "data.builtin.validation_size=64",
        "data.builtin.test_size=64",
        "train.max_steps=6",
        "train.save_every=3",
        "train.log_every=1",
        f"output_dir={out}",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["processes"] == 2 and metrics["train"]["steps"] == 6
    lrs = [
        r["lr"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if r["type"] == "train"
    ]
    assert len(lrs) == 6 and lrs[-1] == 0.0
    for step in ("step-0000003", "step-0000006"):
        assert (out / "checkpoints" / step / "random_states_1.pkl").exists()
    assert (out / "config.json").exists()


def test_hub_classlabel_ints_index_their_names(tmp_path):
    """A Hub dataset's ClassLabel column: ints are ids of the feature's names (offline stand-in)."""
    import datasets
    from transformers import BertTokenizerFast

    from hfpipe.data import ROW, RawData
    from hfpipe.tasks.classification import configure, prepare

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    )
    ds = datasets.Dataset.from_dict({"text": ["bad film", "good film"], "label": [0, 1]}, features=features)
    raw = RawData({"train": ds.add_column(ROW, [0, 1])}, origin="hub:x")
    recipe = tiny(tmp_path, "~data.builtin", "data.dataset=x")
    head = configure(raw, recipe)
    assert head["id2label"] == {0: "negative", 1: "positive"}
    from transformers import BertConfig

    tok = BertTokenizerFast(
        vocab_file=str(write(tmp_path / "v.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nbad\ngood\nfilm\n"))
    )
    out = prepare(raw, "train", tok, BertConfig(**head), recipe)
    assert out["labels"] == [0, 1]


def test_a_run_whose_head_weights_are_missing_is_refused(tiny_run, tmp_path, cli):
    """predict / evaluate on a model directory without its classifier would score a random head."""
    import shutil

    from safetensors.torch import load_file, save_file

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_run, damaged, ignore=shutil.ignore_patterns("checkpoints", ".hfpipe-lock"))
    weights = load_file(str(damaged / "model.safetensors"))
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("classifier.")},
        str(damaged / "model.safetensors"),
    )
    for command in (["predict", damaged, "--text", "a fine film"], ["evaluate", damaged]):
        result = cli(*command)
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert "has no weights for classifier" in result.output
