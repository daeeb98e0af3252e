#!/usr/bin/python3
"""Hedge Backpropagation in PyTorch (eager, batch 1): the reference for Strata's.

    bench/hbp_torch.py BUILD_DIR [--instances 2000] [--speed-instances 20000]
                       [--depth 20] [--width 100] [--out DIR]

1. Writes a seeded stream (Gaussian features, labels from a random 4-layer
   ReLU network) as a Strata stream file (Note [Stream files]) and the
   initial weights (Glorot-uniform, zero biases, alpha uniform) as init.pt.
2. Learns it online with HBP written in PyTorch the plain way: every head's
   logits, loss = sum_l alpha_l CE_l, one backward, SGD, then the hedge
   (losses scaled to [0, 1] by min and max, alpha * beta^loss, floor s / L,
   normalised) -- the update of Sahoo et al. 2018 that Strata implements.
3. Runs strata-train on the same file from the same weights (train.init,
   data.name=stream_file, an online record per instance) and compares alpha
   after every instance and the test-then-train mistakes.
4. Times both on --speed-instances instances, one thread each: instances/s
   and the ratio.
Exit 0 when the trajectories agree (alpha within 1e-4 everywhere), 1 when
they do not; prints a markdown summary.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

BETA, SMOOTHING, LR, FEATURES, CLASSES = 0.99, 0.2, 0.01, 50, 2


def write_stream(path, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, FEATURES)).astype(np.float32)
    h = x
    for _ in range(4):  # a random ReLU teacher, He-scaled
        w = rng.standard_normal((h.shape[1], 100)) * np.sqrt(2.0 / h.shape[1])
        h = np.maximum(h @ w, 0)
    z = h @ rng.standard_normal(100)
    p = 1 / (1 + np.exp(-(z - np.median(z)) / z.std()))
    y = (rng.random(n) < p).astype(np.int32)
    rows = np.empty(n, dtype=np.dtype([("x", "<f4", (FEATURES,)), ("y", "<i4")]))
    rows["x"], rows["y"] = x, y
    with open(path, "wb") as f:
        f.write(b"SSTREAM1" + struct.pack("<II", FEATURES, CLASSES))
        f.write(rows.tobytes())
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


class Linear(torch.nn.Module):
    """A stacked weight [..., out, in] and bias [..., out], Glorot-uniform / zero."""

    def __init__(self, shape):
        super().__init__()
        bound = (6.0 / (shape[-1] + shape[-2])) ** 0.5
        self.weight = torch.nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        self.bias = torch.nn.Parameter(torch.zeros(shape[:-1]))


class HBP(torch.nn.Module):
    """Strata's model.name=hbp, parameter for parameter (trainer/models/hbp.h)."""

    def __init__(self, depth, width):
        super().__init__()
        self.depth = depth
        self.first = Linear((width, FEATURES))
        self.hidden = Linear((depth - 1, width, width))
        self.head0 = Linear((CLASSES, FEATURES))
        self.heads = Linear((depth, CLASSES, width))
        self.register_buffer("alpha", torch.full((depth + 1,), 1.0 / (depth + 1)))

    def forward(self, x):  # every head's logits [L+1, B, K]
        logits = [F.linear(x, self.head0.weight, self.head0.bias)]
        h = F.relu(F.linear(x, self.first.weight, self.first.bias))
        logits.append(F.linear(h, self.heads.weight[0], self.heads.bias[0]))
        for l in range(1, self.depth):
            h = F.relu(F.linear(h, self.hidden.weight[l - 1], self.hidden.bias[l - 1]))
            logits.append(F.linear(h, self.heads.weight[l], self.heads.bias[l]))
        return torch.stack(logits)


def learn(model, x, y, n, record=True):
    """Online HBP over the first n instances; alpha after each, and the mistakes."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    floor = SMOOTHING / model.depth
    alphas, mistakes = [], 0
    for i in range(n):
        xi, yi = x[i:i + 1], y[i:i + 1]
        logits = model(xi)  # [L+1, 1, K]
        mix = (model.alpha.view(-1, 1, 1) * logits.softmax(-1)).sum(0)
        mistakes += int(mix.argmax(-1).item() != yi.item())
        losses = F.cross_entropy(logits[:, 0, :], yi.expand(model.depth + 1), reduction="none")
        opt.zero_grad()
        (losses * model.alpha).sum().backward()
        opt.step()
        with torch.no_grad():
            l = losses.detach()
            l = (l - l.min()) / (l.max() - l.min()).clamp_min(torch.finfo(torch.float32).tiny)
            a = (model.alpha * BETA ** l).clamp_min(floor)
            model.alpha.copy_(a / a.sum())
        if record:
            alphas.append(model.alpha.clone())
    return alphas, mistakes


def strata(build, out, name, stream, init, n, depth, width, log_every):
    run_dir = os.path.join(out, name)
    cmd = [os.path.join(build, "bin", "strata-train"), os.path.join(os.path.dirname(__file__), "..",
           "recipes", "online_hbp.yaml"), f"run.dir={run_dir}", "data.name=stream_file",
           f"data.stream_file={stream}", f"data.train_subset={n}", f"model.depth={depth}",
           f"model.hidden=[{width}]", f"train.init={init}", f"run.log_every={log_every}",
           "run.threads=1", "checkpoint.every_steps=0", "checkpoint.every_minutes=0",
           "train.resume=never"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    records = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    return records, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build")
    ap.add_argument("--instances", type=int, default=2000)
    ap.add_argument("--speed-instances", type=int, default=20000)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = args.out or tempfile.mkdtemp(prefix="hbp_torch_")
    os.makedirs(out, exist_ok=True)
    n_all = max(args.instances, args.speed_instances)
    stream = os.path.join(out, "stream.sstream")
    x, y = write_stream(stream, n_all, seed=7)
    torch.manual_seed(7)
    model = HBP(args.depth, args.width)
    init = os.path.join(out, "init.pt")
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, init)
    start = {k: v.clone() for k, v in model.state_dict().items()}

    # 1. The alpha trajectory, instance by instance.
    ref, ref_mistakes = learn(model, x, y, args.instances)
    records, _ = strata(args.build, out, "trajectory", stream, init, args.instances, args.depth,
                        args.width, 1)
    online = [r for r in records if r["kind"] == "online"]
    got = torch.tensor([r["alpha"] for r in online], dtype=torch.float64)
    want = torch.stack(ref).double()
    worst = (got - want).abs().max().item() if got.shape == want.shape else float("inf")
    strata_mistakes = round(online[-1]["error"] * online[-1]["instances"])

    # 2. Speed, the same stream and start for both.
    model.load_state_dict(start)
    t0 = time.perf_counter()
    learn(model, x, y, args.speed_instances, record=False)
    torch_rate = args.speed_instances / (time.perf_counter() - t0)
    records, wall = strata(args.build, out, "speed", stream, init, args.speed_instances,
                           args.depth, args.width, args.speed_instances)
    train = [r for r in records if r["kind"] == "train"][-1]
    strata_rate = train["samples_per_s"]

    ok = worst <= 1e-4
    print(f"HBP {args.depth} x {args.width}, batch 1, SGD lr {LR}, beta {BETA}, s {SMOOTHING}; "
          f"torch {torch.__version__}, one thread each\n")
    print("| check | PyTorch | Strata |")
    print("|---|---|---|")
    print(f"| alpha after each of {args.instances} instances, largest difference | | "
          f"{worst:.2e} ({'within' if ok else 'NOT within'} 1e-4) |")
    print(f"| test-then-train mistakes in {args.instances} | {ref_mistakes} | {strata_mistakes} |")
    print(f"| final alpha, deepest head | {want[-1, -1].item():.6f} | {got[-1, -1].item():.6f} |")
    print(f"| instances/s over {args.speed_instances} | {torch_rate:,.0f} | {strata_rate:,.0f} "
          f"(process wall {wall:.1f} s with start-up) |")
    print(f"\nStrata / PyTorch: {strata_rate / torch_rate:.2f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
