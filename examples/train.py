"""Trains the example models on Fashion-MNIST on the CPU, with fixed seeds, and saves their
checkpoints into examples/checkpoints/.

    python3 examples/train.py                    # LeNet: 1 epoch on the 60 000 images (~1 min)
    python3 examples/train.py --model resnet18   # ResNet18: 1 epoch on 5 000 images (~5-10 min)
    python3 examples/train.py --model resnet18 --full --device cuda   # 60 000 images, 5 epochs

The LeNet checkpoint (1.7 MB) is shipped; ResNet18's (45 MB) is not: this script makes it.
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fashion_mnist  # noqa: E402
from models import MODELS  # noqa: E402

CHECKPOINTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints")

# model -> (training images, epochs, batch size, learning rate); --full: all images, more epochs
DEFAULTS = {"lenet": (60000, 1, 64, 1e-3), "resnet18": (5000, 1, 64, 1e-3)}
FULL = {"lenet": (60000, 5, 64, 1e-3), "resnet18": (60000, 5, 128, 1e-3)}


def checkpoint_path(model, full=False):
    return os.path.join(CHECKPOINTS, f"{model}{'-full' if full else ''}.pth")


def train(model, x, y, epochs=1, lr=1e-3, batch_size=64, seed=0, log=print, device="cpu"):
    """Adam with a cosine-decayed learning rate; returns the model (in train mode)."""
    torch.manual_seed(seed)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    step, start = 0, time.time()
    for epoch in range(epochs):
        for xb, yb in fashion_mnist.batches(x, y, batch_size, shuffle=True, seed=seed + epoch):
            xb, yb = xb.to(device), yb.to(device)
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if log and (step % 200 == 0 or step == steps):
                log(f"  epoch {epoch + 1}/{epochs} step {step}/{steps} loss {loss.item():.3f} "
                    f"({time.time() - start:.0f} s)")
    return model


def finetune(model, x, y, lr=1e-4, batch_size=64, seed=1, device="cpu"):
    """A short fine-tune (QAT): SGD with momentum 0.9 at a constant, small learning rate, with
    the BatchNorm statistics frozen (BatchNorm layers in eval mode). Adam's normalised steps
    move every weight by about lr at once, which costs a briefly trained model accuracy."""
    torch.manual_seed(seed)
    model.to(device).train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for xb, yb in fashion_mnist.batches(x, y, batch_size, shuffle=True, seed=seed):
        loss = torch.nn.functional.cross_entropy(model(xb.to(device)), yb.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@torch.no_grad()
def accuracy(predict, x, y, batch_size=500):
    """Top-1 accuracy in percent of predict(batch) -> logits over (x, y)."""
    correct = 0
    for xb, yb in fashion_mnist.batches(x, y, batch_size):
        correct += (torch.as_tensor(predict(xb)).argmax(1) == yb).sum().item()
    return 100.0 * correct / len(x)


def evaluate(model, x, y):
    model.eval()
    return accuracy(model, x, y)


def train_model(name, full=False, seed=0, log=print, device="cpu"):
    """Trains `name` from scratch and saves its checkpoint; returns (model, its path)."""
    limit, epochs, batch_size, lr = (FULL if full else DEFAULTS)[name]
    x, y = fashion_mnist.dataset("train", name, limit)
    torch.manual_seed(seed)
    model = MODELS[name]()
    log(f"training {name} on {len(x)} images, {epochs} epoch(s), batch {batch_size}")
    start = time.time()
    train(model, x, y, epochs, lr, batch_size, seed, log, device)
    model.cpu().eval()
    os.makedirs(CHECKPOINTS, exist_ok=True)
    path = checkpoint_path(name, full)
    torch.save(model.state_dict(), path)
    log(f"  {time.time() - start:.0f} s, saved {os.path.relpath(path)}")
    return model, path


def load_model(name, full=False, train_if_missing=True, log=print):
    """The trained model from its checkpoint, training it first where there is none."""
    path = checkpoint_path(name, full)
    if not os.path.exists(path):
        if not train_if_missing:
            raise FileNotFoundError(f"{path}: run examples/train.py --model {name}")
        return train_model(name, full, log=log)[0]
    model = MODELS[name]()
    model.load_state_dict(torch.load(path, map_location="cpu"))
    return model.eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["lenet", "resnet18", "all"], default="lenet")
    parser.add_argument("--full", action="store_true",
                        help="all 60 000 training images and 5 epochs (checkpoints *-full.pth)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="e.g. cuda, for the --full runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in (["lenet", "resnet18"] if args.model == "all" else [args.model]):
        model, _ = train_model(name, args.full, args.seed, device=args.device)
        x, y = fashion_mnist.dataset("test", name)
        print(f"  {name}: test accuracy {evaluate(model, x, y):.2f}% on {len(x)} images")


if __name__ == "__main__":
    main()
