#!/usr/bin/env python3
"""strata-export --format onnx, run by onnxruntime.

Trains each registered model briefly (mlp, cnn, resnet_small on Fashion-MNIST; gpt on the
fortunes text at a short seq_len), exports it as ONNX and as TorchScript, and runs both:
onnxruntime's outputs must equal the TorchScript model's (which strata-export checked against
Strata's own within 1e-5) within 1e-4, at a batch size other than the one exported. The
Fashion-MNIST cnn is then exported as QDQ int8 ONNX and as int8 TorchScript with the same
calibration: onnxruntime's int8 predictions must agree with Strata's int8 model on >= 99.5%
of the test set. --quantize dynamic with --format onnx exits 2.

usage: onnx_test.py BIN_DIR SOURCE_DIR   (with a Python that has onnxruntime)
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../bench"))
from fmnist_torch import images  # noqa: E402

FMNIST = ["data.train_subset=1024", "data.test_subset=256", "train.max_steps=8",
          "run.threads=2", "train.eval_every=0"]
MODELS = {
    "mlp": ("recipes/fashion_mnist_mlp.yaml", FMNIST),
    "cnn": ("recipes/fashion_mnist.yaml", FMNIST),
    "resnet_small": ("recipes/fashion_mnist.yaml",
                     FMNIST + ["model.name=resnet_small", "model.channels=[8,16]", "model.blocks=1"]),
    # Half of each layer's channels pruned: exported as the smaller dense model.
    "cnn_channels_pruned": ("recipes/fashion_mnist.yaml",
                            FMNIST + ["train.prune.sparsity=0.5", "train.prune.structure=channels",
                                      "train.prune.scope=layer", "train.prune.every=2"]),
    "gpt": ("recipes/gpt_tiny.yaml", ["model.seq_len=32", "model.n_layer=2", "model.d_model=64",
                                      "train.max_steps=4", "run.threads=2", "train.eval_every=0"]),
}


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def export(bin_dir, run_dir, *args):
    out = run([os.path.join(bin_dir, "strata-export"), run_dir, *args])
    with open(os.path.join(run_dir, "export.json")) as f:
        return out, json.load(f)


def session(path):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def main():
    bin_dir, source = sys.argv[1], sys.argv[2]
    test = images("t10k")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for name, (recipe, overrides) in MODELS.items():
            d = os.path.join(tmp, name)
            run([os.path.join(bin_dir, "strata-train"), os.path.join(source, recipe),
                 f"run.dir={d}", *overrides])
            runs[name] = d
            out, report = export(bin_dir, d, "--format", "onnx")
            assert report["onnx_checker"] == "passed" and report["opset"] >= 13, report
            if name == "cnn_channels_pruned":
                assert [l["kept"] for l in report["pruned_channels"]] == [16, 32, 64], report
            export(bin_dir, d, "--format", "torchscript")
            ts = torch.jit.load(os.path.join(d, "model.torchscript.pt"))
            sess = session(os.path.join(d, "model.onnx"))
            if name == "gpt":
                x = torch.randint(0, 256, (3, 32))  # another batch than the example's
            else:
                x = test[:37]
            with torch.no_grad():
                want = ts(x).numpy()
            got = sess.run(None, {"input": x.numpy()})[0]
            diff = float(np.abs(got - want).max())
            ok = got.shape == want.shape and diff <= 1e-4
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name}: onnxruntime {ort.__version__} on {tuple(x.shape)}"
                  f" within {diff:.3g} of the TorchScript export ({report['onnx_nodes']} nodes: "
                  f"{', '.join(f'{k} {v}' for k, v in report['onnx_ops'].items())})")

        cnn = runs["cnn"]
        _, onnx_report = export(bin_dir, cnn, "--format", "onnx", "--quantize", "static",
                                "--calibration-batches", "4")
        _, ts_report = export(bin_dir, cnn, "--format", "torchscript", "--quantize", "static",
                              "--calibration-batches", "4")
        torch.backends.quantized.engine = ts_report["engine"]
        int8_ts = torch.jit.load(os.path.join(cnn, "model.int8.torchscript.pt"))
        sess = session(os.path.join(cnn, "model.int8.onnx"))
        agree = 0
        for i in range(0, len(test), 1000):
            x = test[i:i + 1000]
            with torch.no_grad():
                a = int8_ts(x).argmax(1).numpy()
            b = sess.run(None, {"input": x.numpy()})[0].argmax(1)
            agree += int((a == b).sum())
        agreement = agree / len(test)
        ops = onnx_report["onnx_ops"]
        ok = agreement >= 0.995 and ops.get("QuantizeLinear", 0) > 0
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} cnn QDQ int8: onnxruntime agrees with Strata's int8 "
              f"TorchScript on {agreement:.4%} of {len(test)} test images (QuantizeLinear "
              f"{ops.get('QuantizeLinear')}, DequantizeLinear {ops.get('DequantizeLinear')})")

        r = subprocess.run([os.path.join(bin_dir, "strata-export"), cnn, "--format", "onnx",
                            "--quantize", "dynamic"], capture_output=True, text=True)
        ok = r.returncode == 2 and "dynamic int8 has no QDQ form" in r.stderr
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} --format onnx --quantize dynamic: exit {r.returncode}")
    print(f"{len(MODELS) + 2 - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
