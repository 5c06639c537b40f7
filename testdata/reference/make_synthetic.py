#!/usr/bin/env python3
"""Writes synthetic.json: two tiny random MoE models covering the paths the Hugging Face fixtures
do not (q/k RMSNorm per head as in Qwen3-MoE and over the full projection as in OLMoE, dense
layers, tied embeddings, head_dim != hidden/heads, top-3, q/k/v bias with a gated shared expert),
with float64 logits from an independent PyTorch implementation of the transformers semantics.
Run once with Debian's python3-torch; the test (compiler/reference/synthetic_test.ts) only reads the JSON.
"""
import json, math, torch

torch.manual_seed(20240601)
F64 = torch.float64

def rand(*shape, scale=0.3):  # float32-representable values, so the f32 IR reads them exactly
    return (torch.randn(*shape) * scale).float().double()

def norm_w(n):
    return (1 + 0.2 * torch.randn(n)).float().double()

def rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w

def rot_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)

def swiglu(x, m):
    return (torch.nn.functional.silu(x @ m["gate"].T) * (x @ m["up"].T)) @ m["down"].T

def make(cfg):
    H, nh, nkv, hd, V = cfg["hiddenSize"], cfg["numHeads"], cfg["numKvHeads"], cfg["headDim"], cfg["vocabSize"]
    E = cfg["routing"]["numExperts"]
    mlp = lambda I: {"gate": rand(I, H), "up": rand(I, H), "down": rand(H, I)}
    W = {"embed": rand(V, H, scale=1.0), "finalNorm": norm_w(H), "layers": []}
    W["lmHead"] = W["embed"] if cfg["tieWordEmbeddings"] else rand(V, H)
    for kind in cfg["layerKinds"]:
        L = {"inputNorm": norm_w(H), "postAttentionNorm": norm_w(H),
             "q": rand(nh * hd, H), "k": rand(nkv * hd, H), "v": rand(nkv * hd, H), "o": rand(H, nh * hd)}
        if cfg["qkvBias"]:
            L.update(qBias=rand(nh * hd), kBias=rand(nkv * hd), vBias=rand(nkv * hd))
        if cfg["qkNorm"] == "head":
            L.update(qNorm=norm_w(hd), kNorm=norm_w(hd))
        elif cfg["qkNorm"] == "full":
            L.update(qNorm=norm_w(nh * hd), kNorm=norm_w(nkv * hd))
        if kind == "dense":
            L["mlp"] = mlp(cfg["denseIntermediateSize"])
        else:
            L["router"] = rand(E, H, scale=1.0)
            L["experts"] = [mlp(cfg["expertIntermediateSize"]) for _ in range(E)]
            if cfg["sharedIntermediateSize"]:
                L["shared"] = mlp(cfg["sharedIntermediateSize"])
                if cfg["sharedExpertGated"]:
                    L["sharedGate"] = rand(1, H)
        W["layers"].append(L)
    return W

def forward(cfg, W, ids):
    H, nh, nkv, hd = cfg["hiddenSize"], cfg["numHeads"], cfg["numKvHeads"], cfg["headDim"]
    eps, T, r = cfg["rmsNormEps"], len(ids), cfg["routing"]
    x = W["embed"][torch.tensor(ids)]
    inv = 1.0 / cfg["ropeTheta"] ** (torch.arange(0, hd, 2, dtype=F64) / hd)
    ang = torch.outer(torch.arange(T, dtype=F64), inv)
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    mask = torch.full((T, T), -math.inf, dtype=F64).triu(1)
    for L, kind in zip(W["layers"], cfg["layerKinds"]):
        h = rms(x, L["inputNorm"], eps)
        q, k, v = h @ L["q"].T, h @ L["k"].T, h @ L["v"].T
        if cfg["qkvBias"]:
            q, k, v = q + L["qBias"], k + L["kBias"], v + L["vBias"]
        if cfg["qkNorm"] == "full":  # OLMoE: over the whole projection, before the head split
            q, k = rms(q, L["qNorm"], eps), rms(k, L["kNorm"], eps)
        q, k, v = q.view(T, nh, hd).transpose(0, 1), k.view(T, nkv, hd).transpose(0, 1), v.view(T, nkv, hd).transpose(0, 1)
        if cfg["qkNorm"] == "head":  # Qwen3: per head over head_dim
            q, k = rms(q, L["qNorm"], eps), rms(k, L["kNorm"], eps)
        q, k = q * cos + rot_half(q) * sin, k * cos + rot_half(k) * sin
        k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, -1) @ v
        x = x + a.transpose(0, 1).reshape(T, nh * hd) @ L["o"].T
        h = rms(x, L["postAttentionNorm"], eps)
        if kind == "dense":
            x = x + swiglu(h, L["mlp"])
            continue
        p = torch.softmax(h @ L["router"].T, -1)
        w, idx = p.topk(r["topK"], -1)
        if r["normTopK"]:
            w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(h)
        for t in range(T):
            for j in range(r["topK"]):
                out[t] += w[t, j] * swiglu(h[t], L["experts"][int(idx[t, j])])
        if "shared" in L:
            s = swiglu(h, L["shared"])
            if "sharedGate" in L:
                s = torch.sigmoid(h @ L["sharedGate"].T) * s
            out = out + s
        x = x + out
    return rms(x, W["finalNorm"], eps) @ W["lmHead"].T

def to_json(W):
    if isinstance(W, torch.Tensor):
        return {"shape": list(W.shape), "data": W.reshape(-1).tolist()}
    if isinstance(W, dict):
        return {k: to_json(v) for k, v in W.items()}
    return [to_json(v) for v in W]

base = dict(vocabSize=40, hiddenSize=24, numHeads=4, numKvHeads=2, headDim=8, expertIntermediateSize=20,
            denseIntermediateSize=0, sharedIntermediateSize=0, sharedExpertGated=False, ropeTheta=10000.0,
            rmsNormEps=1e-6, maxPositions=64, tieWordEmbeddings=False, qkvBias=False, qkNorm="none",
            activation="silu", bosTokenId=None, eosTokenIds=[1])
cases = {
    "qwen3-like": dict(base, family="qwen3_moe", qkNorm="head", tieWordEmbeddings=True, denseIntermediateSize=28,
                       layerKinds=["dense", "moe", "moe"], numLayers=3,
                       routing=dict(scoring="softmax", numExperts=5, topK=2, normTopK=True)),
    "olmoe-like": dict(base, family="olmoe", qkNorm="full", qkvBias=True, sharedIntermediateSize=12,
                       sharedExpertGated=True, layerKinds=["moe", "moe"], numLayers=2, ropeTheta=500.0,
                       routing=dict(scoring="softmax", numExperts=6, topK=3, normTopK=False)),
}
out = {}
for name, cfg in cases.items():
    W = make(cfg)
    ids = torch.randint(0, cfg["vocabSize"], (9,)).tolist()
    out[name] = {"config": cfg, "weights": to_json(W), "input_ids": ids,
                 "logits": forward(cfg, W, ids).reshape(-1).tolist()}
json.dump(out, open(__file__.replace("make_synthetic.py", "synthetic.json"), "w"))
print("wrote synthetic.json")
