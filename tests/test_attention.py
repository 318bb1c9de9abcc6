"""`hfpipe attention`: the heat maps show the model's own attention weights (checked against a hand
computation from its query / key projections), rows sum to 1, causal rows stop at the diagonal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hfpipe.api import open_run
from hfpipe.attention import attention_maps, figures

TEXT = "the plot was not dull"


def test_encoder_maps_are_the_softmax_of_the_model_s_queries_and_keys(tiny_run):
    _, _, model, tokenizer = open_run(tiny_run)
    maps = attention_maps(model, tokenizer, TEXT)
    assert list(maps.weights) == ["encoder"] and len(maps.weights["encoder"]) == 2
    assert model.config._attn_implementation == "sdpa"  # restored after the eager pass
    enc = tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad():
        hidden = model.bert.embeddings(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"])
        attention = model.bert.encoder.layer[0].attention.self
        heads = model.config.num_attention_heads
        size = model.config.hidden_size // heads

        def split(x):  # (1, T, hidden) -> (heads, T, size)
            return x[0].view(-1, heads, size).transpose(0, 1)

        q, k = split(attention.query(hidden)), split(attention.key(hidden))
        expected = torch.softmax(q @ k.transpose(-1, -2) / size**0.5, dim=-1).numpy()
    layer0 = maps.weights["encoder"][0]
    assert layer0.shape == (heads, enc["input_ids"].shape[1], enc["input_ids"].shape[1])
    np.testing.assert_allclose(layer0, expected, atol=1e-5)
    for layer in maps.weights["encoder"]:
        np.testing.assert_allclose(layer.sum(-1), 1.0, atol=1e-5)
    assert maps.queries["encoder"][0] == "[CLS]" and "dull" in maps.queries["encoder"]

    figs = figures(maps, layer=0)
    assert list(figs) == ["attention-encoder-layer0.png"]
    images = [ax.images[0].get_array() for ax in figs["attention-encoder-layer0.png"].axes if ax.images]
    assert len(images) == heads
    for h, image in enumerate(images):
        np.testing.assert_array_equal(np.asarray(image), layer0[h])  # what is drawn is the weights
    ax = figs["attention-encoder-layer0.png"].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == maps.keys["encoder"]


def test_a_decoder_s_maps_are_triangular(clm_run):
    _, task, model, tokenizer = open_run(clm_run)
    maps = attention_maps(model, tokenizer, TEXT, causal=True)
    assert list(maps.weights) == ["decoder"]
    for layer in maps.weights["decoder"]:
        assert np.triu(layer, k=1).max() == 0.0  # nothing attends to a later token
        np.testing.assert_allclose(layer.sum(-1), 1.0, atol=1e-5)


def test_encoder_decoder_has_encoder_decoder_and_cross_attention(tiny_run):
    from transformers import BartConfig, BartForConditionalGeneration

    _, _, _, tokenizer = open_run(tiny_run)
    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=16,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.cls_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    model = BartForConditionalGeneration(config)
    maps = attention_maps(model, tokenizer, TEXT, target="a fine film")
    assert set(maps.weights) == {"encoder", "decoder", "cross"}
    assert (
        len(maps.weights["encoder"]) == 1 and len(maps.weights["decoder"]) == len(maps.weights["cross"]) == 2
    )
    source, target = len(maps.keys["encoder"]), len(maps.queries["decoder"])
    assert maps.weights["cross"][0].shape == (2, target, source)
    for kind, layers in maps.weights.items():
        for layer in layers:
            np.testing.assert_allclose(layer.sum(-1), 1.0, atol=1e-5)
            if kind == "decoder":
                assert np.triu(layer, k=1).max() == 0.0
    assert set(figures(maps, layer=0, head=1)) == {
        f"attention-{kind}-layer0-head1.png" for kind in ("encoder", "decoder", "cross")
    }


@pytest.mark.parametrize("args, written", [(["--layer", "1", "--head", "0"], 1), ([], 2)])
def test_attention_command(cli, tiny_run, tmp_path, args, written):
    result = cli("attention", tiny_run, "--text", TEXT, "-o", tmp_path, *args)
    assert result.exit_code == 0, result.output
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == written and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_attention_command_refuses_a_layer_the_model_lacks(cli, tiny_run, tmp_path):
    result = cli("attention", tiny_run, "--text", TEXT, "--layer", "7", "-o", tmp_path)
    assert result.exit_code == 2 and "layers 0 to 1" in result.output and not list(tmp_path.glob("*.png"))


def test_prefix_tuning_runs_are_refused_rather_than_drawn_without_their_prefix(clm_run):
    from peft import PrefixTuningConfig, get_peft_model

    from hfpipe.errors import UsageError

    _, _, model, tokenizer = open_run(clm_run)
    prefixed = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    with pytest.raises(UsageError, match="prefix_tuning runs are not supported"):
        attention_maps(prefixed, tokenizer, TEXT, causal=True)
