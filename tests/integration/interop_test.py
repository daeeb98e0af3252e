#!/usr/bin/env python3
"""model.pt interop: Python's torch.load reads Strata's state dict.

Trains a small CNN with strata-train, loads model.pt with
torch.load(weights_only=True) -- PyTorch's default since 2.6: only
allow-listed globals, no arbitrary code -- as it does a step checkpoint's
model and optimizer shards, rebuilds
the same network in PyTorch, load_state_dict(strict=True) (names and shapes),
and evaluates it on the same test samples: the accuracy must equal the one
Strata recorded in its summary (values). Then strata-export --format
torchscript: torch.jit.load reads the traced model, its state dict equals
model.pt and its outputs equal the PyTorch network's (1e-5); a run directory
without recipe.yaml, or with a recipe for another model, exits 2 naming why.

usage: interop_test.py STRATA_TRAIN_BIN SOURCE_DIR
"""
import json
import os
import subprocess
import sys
import tempfile

import shutil

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../bench"))
from fmnist_torch import Cnn, images, labels  # noqa: E402

TEST_N = 2000


def main():
    binary, source = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        cmd = [binary, os.path.join(source, "recipes/fashion_mnist.yaml"),
               f"run.dir={run}", "model.name=cnn", "data.train_subset=2048",
               f"data.test_subset={TEST_N}", "train.max_steps=16",
               "run.threads=2"]
        subprocess.run(cmd + ["checkpoint.every_steps=8"], check=True)
        state = torch.load(os.path.join(run, "model.pt"), weights_only=True)
        step = os.path.join(run, "checkpoints", "step_00000016")
        shard = torch.load(os.path.join(step, "model-pp0-tp0.pt"), weights_only=True)
        optim = torch.load(os.path.join(step, "optim-pp0-tp0.pt"), weights_only=True)
        train = torch.jit.load(os.path.join(step, "train-pp0-tp0.pt"))
        with open(os.path.join(step, "metadata.json")) as f:
            meta = json.load(f)
        assert int(train.step) == 16 and meta["step"] == 16, (train.step, meta)
        for name, size in meta["files"].items():
            assert os.path.getsize(os.path.join(step, name)) == size, name
        with open(os.path.join(run, "metrics.jsonl")) as f:
            summary = json.loads(f.read().strip().splitlines()[-1])
        scripted = export_torchscript(os.path.dirname(binary), source, run, tmp)
        int8, int8_report = export_int8(os.path.dirname(binary), run)

    assert isinstance(state, dict), type(state)
    assert shard.keys() == state.keys() and all(torch.equal(shard[k], state[k]) for k in state)
    assert all(isinstance(v, torch.Tensor) for v in optim.values()), optim.keys()
    print("step checkpoint: model shard equals model.pt;", len(optim), "optimizer tensors")
    model = Cnn()
    missing = model.load_state_dict(state, strict=True)
    print("loaded", len(state), "tensors:", ", ".join(list(state)[:4]), "...")
    assert not missing.missing_keys and not missing.unexpected_keys
    assert state["features.1.num_batches_tracked"].item() == 16

    x = images("t10k")[:TEST_N]
    y = labels("t10k")[:TEST_N]
    model.eval()
    with torch.no_grad():
        logits = model(x)
    accuracy = (logits.argmax(1) == y).sum().item() / TEST_N  # as Strata: double
    loss = nn.functional.cross_entropy(logits, y).item()
    print(f"python accuracy {accuracy:.4f} loss {loss:.5f}; strata accuracy "
          f"{summary['accuracy']:.4f} loss {summary['loss']:.5f}")
    assert summary["kind"] == "summary"
    assert abs(accuracy - summary["accuracy"]) < 1e-9, "accuracy differs"
    assert abs(loss - summary["loss"]) < 1e-4, "loss differs"

    scripted_state = scripted.state_dict()
    assert scripted_state.keys() == state.keys(), (list(scripted_state), list(state))
    assert all(torch.equal(scripted_state[k], state[k]) for k in state)
    with torch.no_grad():
        traced_logits = scripted(x)
    diff = (traced_logits - logits).abs().max().item()
    print(f"torchscript: {len(scripted_state)} tensors equal to model.pt's; outputs within "
          f"{diff:.3g} of PyTorch's on {TEST_N} samples")
    assert diff < 1e-5, diff
    assert torch.equal(traced_logits.argmax(1), logits.argmax(1))

    with torch.no_grad():
        int8_pred = int8(x).argmax(1)
    int8_accuracy = (int8_pred == y).sum().item() / TEST_N
    agreement = (int8_pred == logits.argmax(1)).float().mean().item()
    print(f"int8 torchscript in python: accuracy {int8_accuracy:.4f} (strata-export reported "
          f"{int8_report['accuracy_int8']:.4f}, fp32 {accuracy:.4f}), argmax agreement "
          f"{agreement:.4f}")
    assert int8_accuracy == int8_report["accuracy_int8"], "python's int8 predictions differ"
    assert agreement >= 0.95, agreement
    print("1 passed, 0 failed")


def export_torchscript(bin_dir, source, run, tmp):
    """strata-export --format torchscript on `run`, loaded with torch.jit.load;
    and its usage errors."""
    export = os.path.join(bin_dir, "strata-export")
    out = subprocess.run([export, run, "--format", "torchscript"], check=True,
                         capture_output=True, text=True).stdout
    print(out.splitlines()[0])
    with open(os.path.join(run, "export.json")) as f:
        report = json.load(f)
    assert report["format"] == "torchscript" and report["verified"], report
    assert report["accuracy_model"] == report["accuracy_torchscript"], report
    scripted = torch.jit.load(os.path.join(run, "model.torchscript.pt"))
    scripted.eval()

    def usage_error(run_dir, want):
        r = subprocess.run([export, run_dir, "--format", "torchscript"],
                           capture_output=True, text=True)
        assert r.returncode == 2 and want in r.stderr, (r.returncode, r.stderr)

    bare = os.path.join(tmp, "bare")
    os.mkdir(bare)
    shutil.copy(os.path.join(run, "model.pt"), bare)
    usage_error(bare, "has no recipe.yaml, which --format torchscript needs")
    shutil.copy(os.path.join(source, "recipes/fashion_mnist_mlp.yaml"),
                os.path.join(bare, "recipe.yaml"))
    usage_error(bare, "has no tensor 'net.0.weight' that the model needs; export with "
                      "the recipe the run was trained with")
    print("torchscript usage errors: exit 2 without recipe.yaml and for another model's recipe")
    return scripted


def export_int8(bin_dir, run):
    """strata-export --quantize static: the int8 TorchScript loads in Python
    (on the int8 engine strata-export used) with Strata's quantized ops; calibration
    batches out of range exit 2."""
    export = os.path.join(bin_dir, "strata-export")
    cmd = [export, run, "--format", "torchscript", "--quantize", "static"]
    for n, want in [("0", "--calibration-batches 0 is out of range: the training split holds "
                          "16 batches of data.batch_size 128; pass a number from 1 to 16"),
                    ("17", "--calibration-batches 17 is out of range")]:
        r = subprocess.run(cmd + ["--calibration-batches", n], capture_output=True, text=True)
        assert r.returncode == 2 and want in r.stderr, (r.returncode, r.stderr)
    out = subprocess.run(cmd + ["--calibration-batches", "4"], check=True, capture_output=True,
                         text=True).stdout
    print([line for line in out.splitlines() if line.startswith("static int8")][0])
    with open(os.path.join(run, "export.json")) as f:
        report = json.load(f)
    assert report["quantize"] == "static" and report["engine"] in ("onednn", "qnnpack"), report
    assert report["folded_batchnorms"] == 2 and len(report["layers"]) == 4, report
    assert report["compression"] > 3.5, report
    torch.backends.quantized.engine = report["engine"]
    extra = {"strata.json": ""}
    module = torch.jit.load(os.path.join(run, "model.int8.torchscript.pt"), _extra_files=extra)
    for op in ("quantized.conv2d_relu", "quantized.linear_relu", "quantized.linear"):
        assert op in module.code, module.code
    # The manifest a runtime feeds the model by (Note [The strata-int8 package]).
    manifest = json.loads(extra["strata.json"])
    assert manifest["version"] == 1 and manifest["input"]["shape"] == [1, 28, 28], manifest
    assert manifest["int8"]["engine"] == report["engine"], manifest
    assert [l["name"] for l in manifest["int8"]["layers"]] == \
        [l["name"] for l in report["layers"]], manifest
    print("int8 manifest: input", manifest["input"], "engine", manifest["int8"]["engine"])
    print("int8 usage errors: exit 2 for calibration batches out of range")
    return module, report


if __name__ == "__main__":
    main()
