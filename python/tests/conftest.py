"""Shared fixtures: a small LeNet-like model, data drawn like its calibration data, and engines
built once per test session (the machine is small)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

import mixq  # noqa: E402

torch.set_num_threads(2)

INPUT_SHAPE = (16, 1, 28, 28)
MAX_BATCH = 16


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


def make_lenet(seed=0):
    torch.manual_seed(seed)
    return LeNet().eval()


def sample(n, seed):
    """Inputs drawn like the calibration data: standard normal images."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g)


def sqnr_db(got, ref):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    noise = np.sum((got - ref) ** 2)
    return float("inf") if noise == 0 else 10 * np.log10(np.sum(ref**2) / noise)


@pytest.fixture(scope="session")
def lenet():
    return make_lenet()


@pytest.fixture(scope="session")
def calib_tensor():
    return sample(64, seed=1)


@pytest.fixture(scope="session")
def fp32_speedup(lenet):
    s = mixq.ModelSpeedup(lenet, INPUT_SHAPE, batchsize=MAX_BATCH)
    s.compress()
    return s


@pytest.fixture(scope="session")
def int8_speedup(lenet, calib_tensor):
    s = mixq.ModelSpeedup(lenet, INPUT_SHAPE, extra_layer_bits=8, strict_datatype=False,
                          calib_data=calib_tensor, batchsize=MAX_BATCH)
    s.compress()
    return s
