#!/usr/bin/env python3
"""Writes spans.jsonl and reference.json for the `eval --spans` test: 8 teacher-forced examples
({input_ids, labels}) for testdata/hf-oracle/switch_transformers-a, and transformers' bits per
target token on them (float64 eager forward; decoder input = [decoder_start] + labels[:-1]).

Run with torch 2.13 (CPU) and transformers 5.18:
    python3 testdata/hf-oracle-extra/switch-spans/make_switch_spans.py
"""
import json, math, os, random

import torch
from transformers import SwitchTransformersForConditionalGeneration

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "..", "hf-oracle", "switch_transformers-a")


def main():
    model = SwitchTransformersForConditionalGeneration.from_pretrained(
        MODEL, dtype=torch.float64, attn_implementation="eager").eval()
    vocab = model.config.vocab_size
    start = model.config.decoder_start_token_id
    rng = random.Random(20261201)
    spans = []
    for i in range(8):
        spans.append({
            "input_ids": [rng.randrange(1, vocab) for _ in range(6 + i % 5)],
            "labels": [rng.randrange(1, vocab) for _ in range(3 + i % 4)],
        })
    bits, tokens = 0.0, 0
    with torch.no_grad():
        for s in spans:
            dec = [start] + s["labels"][:-1]
            logits = model(input_ids=torch.tensor([s["input_ids"]]),
                           decoder_input_ids=torch.tensor([dec])).logits[0]
            logp = torch.log_softmax(logits, dim=-1)
            bits -= float(sum(logp[t, y] for t, y in enumerate(s["labels"]))) / math.log(2)
            tokens += len(s["labels"])
    with open(os.path.join(HERE, "spans.jsonl"), "w") as f:
        f.write("".join(json.dumps(s) + "\n" for s in spans))
    ref = {
        "source": f"transformers float64 eager, torch {torch.__version__}",
        "examples": len(spans),
        "tokens": tokens,
        "bits_per_token_f64": bits / tokens,
    }
    with open(os.path.join(HERE, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)


if __name__ == "__main__":
    main()
