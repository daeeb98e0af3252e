#!/usr/bin/env python3
"""PyTorch eager on Strata's GPT, for the side-by-side tokens/s and MFU
comparison in bench/gpt_gpu.sh.

The same network as Strata's `gpt` (pre-norm blocks, fused causal
scaled-dot-product attention, GELU MLP, tied output projection, GPT-2
initialisation), the same byte-level windows of the same text, batch,
AdamW (betas 0.9/0.95, weight decay 0.1 on matrices only, PyTorch's default
foreach implementation), gradient clipping at 1.0 and autocast dtype.

Prints: tokens_per_s <tokens/s over the timed steps> params <N>
"""
import argparse
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, c, h):
        super().__init__()
        self.h = h
        self.c_attn = nn.Linear(c, 3 * c)
        self.c_proj = nn.Linear(c, c)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).view(b, t, 3, self.h, c // self.h).permute(2, 0, 3, 1, 4)
        if hasattr(F, "scaled_dot_product_attention"):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # torch 1.13 (Debian): the explicit form, as Strata's 1.13 build
            att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
            future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            y = att.masked_fill(future, float("-inf")).softmax(-1) @ v
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class Mlp(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_fc = nn.Linear(c, 4 * c)
        self.c_proj = nn.Linear(4 * c, c)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, c, h):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c)
        self.attn = Attention(c, h)
        self.ln_2 = nn.LayerNorm(c)
        self.mlp = Mlp(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Gpt(nn.Module):
    def __init__(self, vocab, seq_len, n_layer, n_head, d_model):
        super().__init__()
        self.wte = nn.Embedding(vocab, d_model)
        self.wpe = nn.Embedding(seq_len, d_model)
        self.h = nn.ModuleList(Block(d_model, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        proj_std = 0.02 / math.sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if "ln_" in name:
                continue
            if p.dim() == 1:
                nn.init.zeros_(p)
            elif name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, proj_std)
            else:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, idx):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for b in self.h:
            x = b(x)
        return self.ln_f(x) @ self.wte.weight.t()


def read_text(path):
    if os.path.isdir(path):
        parts = []
        for n in sorted(os.listdir(path)):
            f = os.path.join(path, n)
            if n.endswith(".dat") or os.path.islink(f) or not os.path.isfile(f):
                continue
            with open(f, "rb") as fh:
                parts.append(fh.read())
        return b"\n".join(parts)
    with open(path, "rb") as fh:
        return fh.read()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--text", default="/usr/share/games/fortunes")
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--clip", type=float, default=1.0, help="0: no clipping")
    p.add_argument("--no-foreach", action="store_true", help="per-parameter AdamW")
    a = p.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = Gpt(a.vocab, a.seq_len, a.n_layer, a.n_head, a.d_model).to(dev)
    params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95),
                            foreach=False if a.no_foreach else None)
    text = torch.from_numpy(np.frombuffer(read_text(a.text), dtype=np.uint8).astype(np.int64))
    g = torch.Generator().manual_seed(0)
    amp = a.precision == "bf16"

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    t0 = None
    for step in range(a.steps):
        if step == a.warmup:
            sync()
            t0 = time.perf_counter()
        starts = torch.randint(0, len(text) - a.seq_len - 1, (a.batch,), generator=g)
        w = torch.stack([text[s:s + a.seq_len + 1] for s in starts.tolist()])
        if dev.type == "cuda":
            w = w.pin_memory()
        x = w[:, :-1].to(dev, non_blocking=True)
        y = w[:, 1:].to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    elapsed = time.perf_counter() - t0
    print(f"tokens_per_s {(a.steps - a.warmup) * a.batch * a.seq_len / elapsed:.1f} params {params}"
          f" loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
