"""Fashion-MNIST from Debian's dataset-fashion-mnist (gzip'd big-endian IDX files), as tensors
for LeNet (1x28x28) and for the CIFAR-style ResNet18 (the images padded to 32x32, 3 channels)."""

import gzip
import os

import numpy as np
import torch

DATA_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530  # of the training images, scaled to [0, 1]
INPUT_SHAPES = {"lenet": (1, 28, 28), "resnet18": (3, 32, 32)}


def read_idx(path):
    """An IDX file (optionally gzip'd) as a numpy array: magic 0 0 <dtype 0x08=u8> <ndim>, then
    ndim big-endian uint32 sizes, then the data."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = bytearray(f.read())  # writable, so torch.from_numpy takes it without a copy
    if data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(split, limit=None, data_dir=DATA_DIR):
    """(images uint8 [N, 28, 28], labels int64 [N]) of split "train" or "test"."""
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels.astype(np.int64)


def to_input(images, model):
    """uint8 [N, 28, 28] -> normalised float tensor for `model` ("lenet" or "resnet18")."""
    x = (torch.from_numpy(np.ascontiguousarray(images)).float() / 255 - MEAN) / STD
    x = x.unsqueeze(1)
    if model == "resnet18":
        pad = (0 - MEAN) / STD  # the padding is black, like the images' background
        x = torch.nn.functional.pad(x, (2, 2, 2, 2), value=pad).repeat(1, 3, 1, 1)
    return x.contiguous()


def dataset(split, model, limit=None):
    """(inputs, labels) tensors of a split for `model`."""
    images, labels = load(split, limit)
    return to_input(images, model), torch.from_numpy(labels)


def batches(x, y, batch_size, shuffle=False, seed=0):
    """Yields (inputs, labels) mini-batches; shuffled with a fixed seed when asked."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)) if shuffle \
        else torch.arange(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]
