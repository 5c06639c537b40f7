#!/usr/bin/env python3
"""Writes olmoe-clip/: a tiny OLMoE checkpoint with `clip_qkv` set small enough that the clamp
changes many q/k/v values, and reference.json with transformers' logits (same layout as
testdata/hf-oracle, see its README). The hf-oracle olmoe fixtures have clip_qkv null, so this is
the only oracle for the clamp (transformers clamps after the q/k RMSNorm, before RoPE).

Run with torch 2.13 (CPU) and transformers 5.18:
    python3 testdata/hf-oracle-extra/make_olmoe_clip.py
The test (compiler/reference/oracle_test.ts) only reads the output.
"""
import json, math, os, sys

import torch
from torch.overrides import TorchFunctionMode
from transformers import OlmoeConfig, OlmoeForCausalLM

SEED = 51
CLIP = 0.6
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "olmoe-clip")
HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(HERE, "..", "hf-oracle", "olmoe-a", "config.json")


class Float64Everywhere(TorchFunctionMode):
    """Lifts every float32 request to float64 (transformers' float32 islands: RMSNorm, RoPE,
    attention softmax, router softmax) and counts the values each clamp_ changes."""

    def __init__(self):
        super().__init__()
        self.clamped = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = torch.float64
        if func is torch.Tensor.float:
            return args[0].to(torch.float64)
        if func is torch.Tensor.to:
            args = tuple(torch.float64 if a is torch.float32 else a for a in args)
        if func is torch.Tensor.clamp_:
            x, limit = args[0], kwargs.get("max")
            self.clamped += int((x.abs() > limit).sum())
        return func(*args, **kwargs)


def randomize(model, gen):
    """Non-trivial weights: norm weights 1 ± 0.3, routers decisive, linears ~ 1.5/√fan_in."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith("mlp.gate.weight"):
                p.copy_(3.0 * torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
            else:
                p.copy_(1.5 * torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))


def argmax_loop(model, prompt, steps):
    ids = list(prompt)
    for _ in range(steps):
        logits = model(torch.tensor([ids])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids[len(prompt):]


def main():
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    raw = json.load(open(BASE))
    raw["clip_qkv"] = CLIP
    for k in ("architectures", "transformers_version", "dtype"):
        raw.pop(k, None)
    config = OlmoeConfig(**raw, attn_implementation="eager", experts_implementation="eager")
    model = OlmoeForCausalLM(config).eval()
    randomize(model, gen)
    model.save_pretrained(OUT, safe_serialization=True)

    input_ids = torch.randint(3, config.vocab_size, (8,), generator=gen).tolist()
    model = model.double()
    with torch.no_grad():
        hf = model(torch.tensor([input_ids])).logits[0]
        out = model.generate(
            torch.tensor([input_ids]), do_sample=False, max_new_tokens=6, eos_token_id=None,
            pad_token_id=0, output_scores=True, return_dict_in_generate=True,
        )
        generated = out.sequences[0, len(input_ids):].tolist()
        assert generated == argmax_loop(model, input_ids, 6), "cached and uncached greedy differ"
        gaps = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
        assert min(gaps) > 1e-3, f"greedy step too close to a tie: {gaps}"

        strict_model = OlmoeForCausalLM.from_pretrained(
            OUT, dtype=torch.float64, attn_implementation="eager", experts_implementation="eager"
        ).eval()
        for m in strict_model.modules():  # RoPE inv_freq recomputed in float64
            if hasattr(m, "inv_freq"):
                dim = config.hidden_size // config.num_attention_heads
                theta = config.rope_parameters["rope_theta"]
                m.inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
                m.original_inv_freq = m.inv_freq
        mode = Float64Everywhere()
        with mode:
            strict = strict_model(torch.tensor([input_ids])).logits[0]
    assert mode.clamped > 0, "clip_qkv clamps nothing: lower CLIP"

    ref = {
        "source": f"transformers float64 eager (OlmoeForCausalLM), random weights, seed {SEED}, "
                  f"torch {torch.__version__}",
        "input_ids": input_ids,
        "hf_logits": hf.flatten().tolist(),
        "hf_logits_f64strict": strict.flatten().tolist(),
        "f64strict_vs_hf_max_abs_diff": float((strict - hf).abs().max()),
        "greedy_decode": {"prompt_ids": input_ids, "generated_ids": generated},
        "greedy_min_top2_gap": min(gaps),
        "clip_qkv": CLIP,
        "clamped_values": mode.clamped,
        "exercises": f"clip_qkv {CLIP} (q, k, v clamped after the full-width q/k RMSNorm, "
                     f"{mode.clamped} values changed in the strict forward), top-2 of 8",
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f)
    print(json.dumps({k: v for k, v in ref.items() if not isinstance(v, list)}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
