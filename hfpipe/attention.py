"""`hfpipe attention RUN_DIR --text ...`: the model's attention weights for one input, as PNG heat maps.

The weights come from the model's own forward pass with eager attention (PyTorch's fused SDPA kernel
never forms the weight matrix), so what is drawn is exactly the softmax each head applies: every row
sums to 1, a decoder's rows end at the diagonal. Encoders (BERT) show self-attention; decoders (GPT-2)
causal self-attention; encoder-decoders (T5, BART, Marian) their encoder's and decoder's self-attention
and the decoder's cross-attention over the source, for the model's own greedy output (or --target).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Maps:
    """Attention of one input: per kind ("encoder", "decoder", "cross") a list over layers of
    (heads, query tokens, key tokens) arrays, and the tokens on each axis."""

    weights: dict[str, list]  # kind -> [layer] -> numpy array (heads, queries, keys)
    queries: dict[str, list[str]]
    keys: dict[str, list[str]]


def attention_maps(
    model, tokenizer, text: str, text_pair: str | None = None, target: str | None = None, causal: bool = False
) -> Maps:
    """The attention weights of `model` on one input; `causal` for a decoder-only language model."""
    import torch

    config = getattr(model, "active_peft_config", None)
    if config is not None and config.is_prompt_learning:
        from hfpipe.errors import UsageError

        # PEFT feeds the learned prefix to every layer as extra keys; its base model alone would show
        # attention without them, which is not what the run computes.
        raise UsageError(
            f"attention maps of {config.peft_type.value.lower()} runs are not supported (the learned "
            "virtual tokens are keys the maps would leave out); LoRA and IA3 runs are"
        )
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    previous = base.config._attn_implementation
    base.set_attn_implementation("eager")
    try:
        model.eval()
        enc = tokenizer(text, text_pair, return_tensors="pt", truncation=True)
        device = next(model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        source_tokens = _labels(tokenizer, enc["input_ids"][0])
        with torch.no_grad():
            if base.config.is_encoder_decoder:
                if target is None:
                    decoder_ids = base.generate(**enc, max_new_tokens=32, num_beams=1, do_sample=False)
                else:
                    decoder_ids = tokenizer(text_target=target, return_tensors="pt")["input_ids"].to(device)
                    start = torch.full((1, 1), base.config.decoder_start_token_id, device=device)
                    decoder_ids = torch.cat([start, decoder_ids], dim=1)
                out = base(**enc, decoder_input_ids=decoder_ids, output_attentions=True)
                target_tokens = _labels(tokenizer, decoder_ids[0])
                weights = {
                    "encoder": out.encoder_attentions,
                    "decoder": out.decoder_attentions,
                    "cross": out.cross_attentions,
                }
                queries = {"encoder": source_tokens, "decoder": target_tokens, "cross": target_tokens}
                keys = {"encoder": source_tokens, "decoder": target_tokens, "cross": source_tokens}
            else:
                enc.pop("labels", None)
                out = base(**enc, output_attentions=True)
                kind = "decoder" if causal else "encoder"
                weights, queries, keys = {kind: out.attentions}, {kind: source_tokens}, {kind: source_tokens}
    finally:
        base.set_attn_implementation(previous)
    arrays = {kind: [layer[0].float().cpu().numpy() for layer in layers] for kind, layers in weights.items()}
    return Maps(arrays, queries, keys)


def _labels(tokenizer, ids) -> list[str]:
    """Tokens as people read them: byte-level BPE's "Ġfilm" as "film", special tokens as they are."""
    return [tokenizer.decode([i]).strip() or tokenizer.convert_ids_to_tokens(int(i)) for i in ids.tolist()]


TITLES = {"encoder": "self-attention", "decoder": "self-attention (decoder)", "cross": "cross-attention"}


def figures(maps: Maps, layer: int | None = None, head: int | None = None) -> dict[str, object]:
    """{file name: Figure}: per kind and layer, a grid of its heads, or the one head asked for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    for kind, layers in maps.weights.items():
        picked = range(len(layers)) if layer is None else [layer]
        for index in picked:
            heads = layers[index]
            shown = range(heads.shape[0]) if head is None else [head]
            columns = min(len(shown), 4)
            rows = -(-len(shown) // columns)
            q, k = maps.queries[kind], maps.keys[kind]
            cell = max(2.8, 0.28 * max(len(q), len(k)))
            fig, axes = plt.subplots(
                rows,
                columns,
                figsize=(cell * columns + 1, cell * rows + 0.6),
                squeeze=False,
                layout="constrained",
            )
            for n, (ax, h) in enumerate(zip(axes.flat, shown, strict=False)):
                image = ax.imshow(heads[h], vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
                ax.set_title(f"head {h}", fontsize="small")
                ax.set_xticks(range(len(k)), k, rotation=90, fontsize="x-small")
                ax.set_yticks(range(len(q)), q, fontsize="x-small")
                if n % columns == 0:
                    ax.set_ylabel("query (attending)", fontsize="small")
                if n // columns == rows - 1:
                    ax.set_xlabel("key (attended)", fontsize="small")
            for ax in list(axes.flat)[len(shown) :]:
                ax.set_visible(False)
            fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
            fig.suptitle(f"{TITLES[kind]}, layer {index}")
            name = f"attention-{kind}-layer{index}" + (f"-head{head}" if head is not None else "") + ".png"
            out[name] = fig
    return out


def check_indices(maps: Maps, layer: int | None, head: int | None) -> None:
    from hfpipe.errors import UsageError

    layers = min(len(v) for v in maps.weights.values())
    heads = min(v[0].shape[0] for v in maps.weights.values())
    if layer is not None and not 0 <= layer < layers:
        raise UsageError(f"--layer {layer}: the model has layers 0 to {layers - 1}")
    if head is not None and not 0 <= head < heads:
        raise UsageError(f"--head {head}: the model has heads 0 to {heads - 1}")


def write(maps: Maps, out_dir: str | Path, layer: int | None = None, head: int | None = None) -> list[Path]:
    import matplotlib.pyplot as plt

    check_indices(maps, layer, head)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures(maps, layer, head).items():
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(out_dir / name)
    return written
