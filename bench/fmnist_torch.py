"""Fashion-MNIST and Strata's built-in image models in PyTorch, for the Python side of the
benchmarks and interop tests: the IDX reader, Strata's normalisation, and `cnn` / `mlp` with
the parameter names of Strata's model.pt, so `load_state_dict(torch.load(model.pt))` fits."""
import gzip

import numpy as np
import torch
import torch.ao.quantization as tq
import torch.nn as nn

ROOT = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def images(split, root=ROOT):
    """`split` ("train" or "t10k") as N x 1 x 28 x 28 floats, normalised as Strata does."""
    x = read_idx(f"{root}/{split}-images-idx3-ubyte.gz")
    return ((torch.from_numpy(x.astype(np.float32)) / 255.0 - MEAN) / STD).unsqueeze(1)


def labels(split, root=ROOT):
    return torch.from_numpy(read_idx(f"{root}/{split}-labels-idx1-ubyte.gz").astype(np.int64))


class Cnn(nn.Module):
    """Strata's `cnn` with its default channels [32, 64] and fc 128. The quant stubs are
    identities (and hold no tensors) until torch.ao prepares the model."""

    fuse = [["features.0", "features.1", "features.2"], ["features.4", "features.5", "features.6"],
            ["classifier.0", "classifier.1"]]

    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
            nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
            nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.classifier(self.features(self.quant(x)).flatten(1)))


class Mlp(nn.Module):
    """Strata's `mlp` with hidden [256, 128]."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                                 nn.Linear(128, 10))

    def forward(self, x):
        return self.net(x.flatten(1))
