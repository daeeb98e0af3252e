#!/usr/bin/env python3
"""int8 on the edge, side by side: Strata's post-training quantization (strata-export
--quantize) against torch.ao's eager-mode PTQ on the same trained weights, the same
engine and the same thread count.

  bench/edge_int8.py BUILD_DIR CNN_RUN_DIR MLP_RUN_DIR [--calibration-batches N] [--threads N]

CNN_RUN_DIR and MLP_RUN_DIR are finished strata-train runs of recipes/fashion_mnist.yaml
and recipes/fashion_mnist_mlp.yaml (model.pt + recipe.yaml). For each model and scheme it
runs strata-export, reads its export.json, then quantizes the same model.pt with
torch.ao (Debian's python3-torch) -- static: fuse conv+bn+relu / linear+relu, MinMax
activation observers, symmetric int8 weights per channel or per tensor, calibrated on as
many training batches; dynamic: quantize_dynamic over the linear layers -- and measures
both on the full test set: accuracy, argmax agreement with fp32, file bytes and batch-1 /
batch-64 latency (median, the Strata file loaded with torch.jit.load here, so both run in
the same runtime; Strata's C++ figure from export.json is listed too). Prints a markdown
table with ratios (Strata / torch.ao latency: below 1 is faster).
"""
import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.ao.quantization as tq

from fmnist_torch import Cnn, Mlp, images, labels
def load(cls, run):
    m = cls()
    state = torch.load(os.path.join(run, "model.pt"), weights_only=True)
    m.load_state_dict(state, strict=True)
    return m.eval()


def latency_ms(fn, x, reps):
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        ms = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(x)
            ms.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ms))


def evaluate(fn, x, y, ref=None, batch=1000):
    correct, agree, preds = 0, 0, []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            p = fn(x[i:i + batch]).argmax(1)
            preds.append(p)
            correct += (p == y[i:i + batch]).sum().item()
    preds = torch.cat(preds)
    if ref is not None:
        agree = (preds == ref).float().mean().item()
    return correct / len(x), agree, preds


def file_bytes(module):
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    return len(buf.getvalue())


def strata_export(build, run, scheme, args):
    out = os.path.join(run, f"model.{scheme}.int8.pt")
    cmd = [os.path.join(build, "bin", "strata-export"), run, "--format", "torchscript",
           "--out", out, "--threads", str(args.threads)]
    if scheme == "dynamic":
        cmd += ["--quantize", "dynamic"]
    else:
        cmd += ["--quantize", "static", "--calibration-batches", str(args.calibration_batches)]
        if scheme == "static_per_tensor":
            cmd += ["--per-tensor"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(run, "export.json")) as f:
        report = json.load(f)
    shutil.copy(os.path.join(run, "export.json"), os.path.join(run, f"export.{scheme}.json"))
    return out, report


def torch_ao(model_cls, run, scheme, calib):
    m = load(model_cls, run)
    if scheme == "dynamic":
        q = tq.quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)
    else:
        m = tq.fuse_modules(m, model_cls.fuse)
        weight = (tq.default_per_channel_weight_observer if scheme == "static_per_channel"
                  else tq.default_weight_observer)
        m.qconfig = tq.QConfig(activation=tq.MinMaxObserver.with_args(dtype=torch.quint8),
                               weight=weight)
        tq.prepare(m, inplace=True)
        with torch.no_grad():
            for b in calib:
                m(b)
        q = tq.convert(m)
    example = torch.zeros(1, 1, 28, 28)
    with torch.no_grad():
        traced = torch.jit.freeze(torch.jit.trace(q, example).eval())
    return traced


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build")
    ap.add_argument("cnn_run")
    ap.add_argument("mlp_run")
    ap.add_argument("--calibration-batches", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.backends.quantized.engine = "qnnpack"
    torch.set_num_threads(args.threads)

    x = images("t10k")
    y = labels("t10k")
    train = images("train")
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(train), generator=g)
    calib = [train[perm[i * 128:(i + 1) * 128]] for i in range(args.calibration_batches)]

    rows = []
    for name, cls, run, schemes in [("cnn", Cnn, args.cnn_run,
                                     ["static_per_channel", "static_per_tensor", "dynamic"]),
                                    ("mlp", Mlp, args.mlp_run, ["dynamic"])]:
        fp32 = load(cls, run)
        fp32_traced = torch.jit.freeze(torch.jit.trace(fp32, torch.zeros(1, 1, 28, 28)))
        acc32, _, ref = evaluate(fp32, x, y)
        fp32_bytes = file_bytes(torch.jit.trace(fp32, torch.zeros(1, 1, 28, 28)))
        lat32 = {b: latency_ms(fp32_traced, x[:b], 200 if b == 1 else 30) for b in (1, 64)}
        rows.append((name, "fp32", "torch (traced)", acc32, 1.0, fp32_bytes, lat32[1], lat32[64],
                     None))
        for scheme in schemes:
            path, report = strata_export(args.build, run, scheme, args)
            ours = torch.jit.load(path)
            acc_s, agree_s, _ = evaluate(lambda v: ours(v), x, y, ref)
            lat_s = {b: latency_ms(ours, x[:b], 200 if b == 1 else 30) for b in (1, 64)}
            assert abs(acc_s - report["accuracy_int8"]) < 1e-9, (acc_s, report["accuracy_int8"])
            rows.append((name, scheme, "strata", acc_s, agree_s, os.path.getsize(path), lat_s[1],
                         lat_s[64], report["latency"]["batch_1"]["int8_ms"]))
            ao = torch_ao(cls, run, scheme, calib)
            acc_t, agree_t, _ = evaluate(ao, x, y, ref)
            lat_t = {b: latency_ms(ao, x[:b], 200 if b == 1 else 30) for b in (1, 64)}
            rows.append((name, scheme, "torch.ao", acc_t, agree_t, file_bytes(ao), lat_t[1],
                         lat_t[64], None))

    print(f"engine qnnpack, {args.threads} thread(s), {args.calibration_batches} calibration "
          f"batches of 128, torch {torch.__version__}, Fashion-MNIST test set ({len(x)} images)\n")
    print("| model | scheme | by | accuracy | Δ vs fp32 (points) | argmax agreement | file bytes "
          "| × smaller | batch-1 ms | batch-64 ms | batch-1 ms (C++) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base = {}
    for r in rows:
        name, scheme, by, acc, agree, size, l1, l64, cpp = r
        if scheme == "fp32":
            base[name] = (acc, size)
        a0, s0 = base[name]
        print(f"| {name} | {scheme} | {by} | {acc:.4f} | {100 * (acc - a0):+.2f} | "
              f"{agree:.4f} | {size} | {s0 / size:.2f} | {l1:.3f} | {l64:.3f} | "
              f"{'' if cpp is None else f'{cpp:.3f}'} |")
    print("\nStrata / torch.ao batch-1 latency (same runtime, same engine):")
    for i, r in enumerate(rows):
        if r[2] == "strata":
            t = rows[i + 1]
            print(f"  {r[0]} {r[1]}: {r[6] / t[6]:.2f}x (batch 64: {r[7] / t[7]:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
