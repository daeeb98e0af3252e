#!/usr/bin/env python3
"""int8 on the edge, side by side: Strata's post-training quantization (strata-export
--quantize) against torch.ao's eager-mode PTQ on the same trained weights, the same
engine and the same thread count.

  bench/edge_int8.py BUILD_DIR CNN_RUN_DIR MLP_RUN_DIR [--calibration-batches N] [--threads N]
                     [--engine onednn|qnnpack]

CNN_RUN_DIR and MLP_RUN_DIR are finished strata-train runs of recipes/fashion_mnist.yaml
and recipes/fashion_mnist_mlp.yaml (model.pt + recipe.yaml). For each model and scheme it
runs strata-export, reads its export.json, then quantizes the same model.pt with
torch.ao (Debian's python3-torch) -- static: fuse conv+bn+relu / linear+relu, MinMax
activation observers, symmetric int8 weights per channel or per tensor, calibrated on as
many training batches; dynamic: quantize_dynamic over the linear layers -- and measures
both on the full test set: accuracy, argmax agreement with fp32, file bytes and batch-1 /
batch-64 latency (median, the Strata file loaded with torch.jit.load here, so both run in
the same runtime; Strata's C++ figure from export.json is listed too). Prints a markdown
table with ratios (Strata / torch.ao latency: below 1 is faster). Run with a Python that has
onnxruntime (e.g. the venv tests/integration/onnx_test.sh makes) and it adds onnxruntime
running Strata's ONNX exports: fp32 and QDQ int8.
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

try:  # optional: run this script with a Python that has onnxruntime (a venv)
    import onnxruntime as ort
except ImportError:
    ort = None
def load(cls, run):
    m = cls()
    state = torch.load(os.path.join(run, "model.pt"), weights_only=True)
    m.load_state_dict(state, strict=True)
    return m.eval()


def latencies_ms(fns, x, reps, rounds=10):
    """Median milliseconds of each of `fns` on `x`: `rounds` rounds, in each a block of calls
    of every fn in turn (three warm-up calls first), so that a change of the machine's speed
    hits all of them alike while no fn runs right after another's cache footprint."""
    ms = [[] for _ in fns]
    with torch.no_grad():
        for _ in range(rounds):
            for i, fn in enumerate(fns):
                for _ in range(3):
                    fn(x)
                for _ in range(max(1, reps // rounds)):
                    t0 = time.perf_counter()
                    fn(x)
                    ms[i].append((time.perf_counter() - t0) * 1e3)
    return [float(np.median(m)) for m in ms]


def latency_table(fns, x):
    """{batch: [ms per fn]} at batch 1 (300 calls each) and 64 (40 calls each)."""
    return {b: latencies_ms(fns, x[:b], 300 if b == 1 else 40) for b in (1, 64)}


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
           "--out", out, "--threads", str(args.threads), "--engine", args.engine]
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


def onnxruntime_rows(build, name, run, scheme, args, x, y, ref):
    """Strata's ONNX export (fp32, or QDQ int8 for the static schemes) in onnxruntime."""
    quant = [] if scheme == "fp32" else ["--quantize", "static", "--calibration-batches",
                                         str(args.calibration_batches)]
    if scheme == "static_per_tensor":
        quant.append("--per-tensor")
    out = os.path.join(run, f"model.{scheme}.onnx")
    subprocess.run([os.path.join(build, "bin", "strata-export"), run, "--format", "onnx",
                    "--out", out, *quant], check=True, stdout=subprocess.DEVNULL)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(out, opts, providers=["CPUExecutionProvider"])
    fn = lambda v: torch.from_numpy(sess.run(None, {"input": v.numpy()})[0])  # noqa: E731
    acc, agree, _ = evaluate(fn, x, y, ref)
    return [name, scheme, f"onnxruntime {ort.__version__}", acc, agree, os.path.getsize(out),
            None, None, None], fn


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


def pair(argv):
    """--pair A.pt B.pt: batch-1 and batch-64 latency of two TorchScript files, alone."""
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--engine", default="onednn")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.backends.quantized.engine = a.engine
    torch.set_num_threads(a.threads)
    x = images("t10k")[:64]
    lat = latency_table([torch.jit.load(a.a), torch.jit.load(a.b)], x)
    print(json.dumps([[lat[1][0], lat[64][0]], [lat[1][1], lat[64][1]]]))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--pair":
        return pair(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build")
    ap.add_argument("cnn_run")
    ap.add_argument("mlp_run")
    ap.add_argument("--calibration-batches", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--engine", default="onednn", help="int8 engine for both (qnnpack, onednn)")
    args = ap.parse_args()
    torch.backends.quantized.engine = args.engine
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
        # Each row: model, scheme, by, accuracy, agreement, bytes, batch-1 ms, batch-64 ms,
        # strata-export's C++ batch-1 ms; latencies measured per group, interleaved.
        fp32 = load(cls, run)
        fp32_traced = torch.jit.freeze(torch.jit.trace(fp32, torch.zeros(1, 1, 28, 28)))
        acc32, _, ref = evaluate(fp32, x, y)
        fp32_bytes = file_bytes(torch.jit.trace(fp32, torch.zeros(1, 1, 28, 28)))
        group = [([name, "fp32", "torch (traced)", acc32, 1.0, fp32_bytes, None, None, None],
                  fp32_traced)]
        groups = [group]
        if ort is not None:
            groups.append([onnxruntime_rows(args.build, name, run, "fp32", args, x, y, ref)])
        for scheme in schemes:
            path, report = strata_export(args.build, run, scheme, args)
            ours = torch.jit.load(path)
            acc_s, agree_s, _ = evaluate(lambda v: ours(v), x, y, ref)
            assert abs(acc_s - report["accuracy_int8"]) < 1e-9, (acc_s, report["accuracy_int8"])
            group = [([name, scheme, "strata", acc_s, agree_s, os.path.getsize(path), None, None,
                       report["latency"]["batch_1"]["int8_ms"]], ours)]
            ao = torch_ao(cls, run, scheme, calib)
            ao.save(os.path.join(run, f"model.{scheme}.torch_ao.pt"))
            acc_t, agree_t, _ = evaluate(ao, x, y, ref)
            group.append(([name, scheme, "torch.ao", acc_t, agree_t, file_bytes(ao), None, None,
                           None], ao))
            groups.append(group)
            # onnxruntime on its own: a block of it just before Strata's slows Strata's next
            # calls (its threads and caches), which would skew the Strata / torch.ao ratio.
            if ort is not None and scheme.startswith("static"):
                groups.append([onnxruntime_rows(args.build, name, run, scheme, args, x, y, ref)])
        for group in groups:
            lat = latency_table([fn for _, fn in group], x)
            for k, (row, _) in enumerate(group):
                row[6], row[7] = lat[1][k], lat[64][k]
                rows.append(tuple(row))

    print(f"engine {args.engine}, {args.threads} thread(s), {args.calibration_batches} calibration "
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
    print("\nThe same two files alone in a fresh process (nothing else loaded; the table's "
          "process also holds the data, the other models and onnxruntime):")
    for name, run, scheme in [("cnn", args.cnn_run, "static_per_channel"),
                              ("cnn", args.cnn_run, "static_per_tensor"),
                              ("mlp", args.mlp_run, "dynamic")]:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--pair",
                              os.path.join(run, f"model.{scheme}.int8.pt"),
                              os.path.join(run, f"model.{scheme}.torch_ao.pt"),
                              "--engine", args.engine, "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True).stdout
        (s1, s64), (t1, t64) = json.loads(out)
        print(f"  {name} {scheme}: Strata {s1:.3f} ms, torch.ao {t1:.3f} ms at batch 1: "
              f"{s1 / t1:.2f}x (batch 64: {s64:.3f} vs {t64:.3f} ms, {s64 / t64:.2f}x)")
    if ort is not None:
        print("\nStrata's int8 TorchScript / onnxruntime running Strata's ONNX (same scheme):")
        for r in rows:
            if r[2] == "strata":
                o = [q for q in rows if q[0] == r[0] and q[1] == r[1] and q[2].startswith("onnx")]
                if o:
                    print(f"  {r[0]} {r[1]}: {r[6] / o[0][6]:.2f}x (batch 64: {r[7] / o[0][7]:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
