#!/usr/bin/env python3
"""Writes switch-capacity/reference.json: transformers' logits of the hf-oracle switch_transformers-a
weights with `expert_capacity` lowered to 2, so both stacks' routers refuse tokens (the hf-oracle
fixture has capacity 16 and drops nothing). Same layout as testdata/hf-oracle/switch_transformers-a
(see its README); `dropped` lists, per router, the positions it refused.

The weights are not copied: the test loads ../hf-oracle/switch_transformers-a and sets the
capacity in its description. Run with torch 2.13 (CPU) and transformers 5.18:
    python3 testdata/hf-oracle-extra/make_switch_capacity.py
The test (compiler/reference/seq2seq_oracle_test.ts) only reads the output.
"""
import json, os, sys

import torch
from torch.overrides import TorchFunctionMode
from transformers import SwitchTransformersForConditionalGeneration

CAPACITY = 2
HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(HERE, "..", "hf-oracle", "switch_transformers-a")
OUT = os.path.join(HERE, "switch-capacity")


class Float64Everywhere(TorchFunctionMode):
    """Lifts every float32 request to float64 (transformers' float32 islands: T5 norm, relative
    bucket logarithm, router softmax)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = torch.float64
        if func is torch.Tensor.float:
            return args[0].to(torch.float64)
        if func is torch.Tensor.to:
            args = tuple(torch.float64 if a is torch.float32 else a for a in args)
        return func(*args, **kwargs)


def load():
    model = SwitchTransformersForConditionalGeneration.from_pretrained(
        BASE, dtype=torch.float64, attn_implementation="eager", expert_capacity=CAPACITY
    ).eval()
    for m in model.modules():
        if hasattr(m, "expert_capacity"):
            m.expert_capacity = CAPACITY
        if type(m).__name__ == "SwitchTransformersTop1Router":
            m.dtype = torch.float64  # the router's float32 request
    return model


def main():
    ref_a = json.load(open(os.path.join(BASE, "reference.json")))
    enc = ref_a["encoder_input_ids"] + [5, 9, 5, 12, 40, 7, 7, 33]
    dec = ref_a["decoder_input_ids"] + [18, 2, 30, 44, 9, 60, 3]
    model = load()
    dropped = {}

    def hook(name):
        def record(_module, _inputs, outputs):
            index = outputs[0][0]  # [seq, E] one-hot after the capacity mask
            dropped.setdefault(name, []).append(
                [t for t in range(index.shape[0]) if int(index[t].sum()) == 0])
        return record

    for name, m in model.named_modules():
        if name.endswith("mlp.router"):
            m.register_forward_hook(hook(name))
    with torch.no_grad(), Float64Everywhere():
        logits = model(input_ids=torch.tensor([enc]), decoder_input_ids=torch.tensor([dec])).logits[0]
    assert any(len(d[0]) for n, d in dropped.items() if n.startswith("encoder")), dropped
    assert any(len(d[0]) for n, d in dropped.items() if n.startswith("decoder")), dropped
    os.makedirs(OUT, exist_ok=True)
    ref = {
        "source": f"transformers float64 eager, every float32 request lifted to float64, weights of "
                  f"hf-oracle/switch_transformers-a, expert_capacity {CAPACITY}, torch {torch.__version__}",
        "expert_capacity": CAPACITY,
        "encoder_input_ids": enc,
        "decoder_input_ids": dec,
        "hf_logits_f64strict": logits.flatten().tolist(),
        "dropped": {n: d[0] for n, d in dropped.items()},
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f)
    print(json.dumps(ref["dropped"]))


if __name__ == "__main__":
    sys.exit(main())
