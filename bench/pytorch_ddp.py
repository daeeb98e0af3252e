#!/usr/bin/env python3
"""PyTorch's own DistributedDataParallel (gloo) on Strata's models, for the
side-by-side samples/s comparison in bench/ddp_compare.sh.

Same networks as Strata's `cnn` and `mlp`, same per-rank batch, same SGD
(momentum 0.9, Nesterov, weight decay 5e-4), same threads per rank, the same
Fashion-MNIST samples held in memory and normalised once (no DataLoader
workers: the data path costs the same on both sides). Launched with
torchrun-style variables (launch/strata-run -n N -- python3 ...).

With --device cuda the model runs on the GPU and each batch is copied there
per step, as Strata's loader does (bench/gpu_check.sh).

Prints: samples_per_s <global samples/s over the timed steps>
"""
import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from fmnist_torch import Cnn, Mlp, images, labels



def make_model(name):
    return Mlp() if name == "mlp" else Cnn()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="cnn", choices=["cnn", "mlp"])
    p.add_argument("--batch", type=int, default=64, help="per rank")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bucket-mb", type=float, default=25.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    a = p.parse_args()
    ROOT = a.root
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = make_model(a.model).to(dev)
    if world > 1:
        model = DDP(model, bucket_cap_mb=a.bucket_mb)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                          nesterov=True, weight_decay=5e-4)
    x = images("train", ROOT)
    y = labels("train", ROOT)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    per_rank = len(y) // world
    mine = order[rank:per_rank * world:world]
    t0 = None
    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    for step in range(a.steps):
        if step == a.warmup:
            if world > 1:
                dist.barrier()
            sync()
            t0 = time.perf_counter()
        i = (step * a.batch) % (per_rank - a.batch)
        idx = mine[i:i + a.batch]
        opt.zero_grad()
        xb = x[idx].to(dev, non_blocking=True)
        yb = y[idx].to(dev, non_blocking=True)
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
    if world > 1:
        dist.barrier()
    sync()
    elapsed = time.perf_counter() - t0
    rate = (a.steps - a.warmup) * a.batch * world / elapsed
    if rank == 0:
        print(f"samples_per_s {rate:.1f}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
