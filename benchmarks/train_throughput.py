"""Training throughput (img/s) of the FourLayerCVAE encoders on this machine.

Usage: python benchmarks/train_throughput.py [--threads 2] [--size 64] [--batch-size 512]
           [--rounds 3] [--only "ae embench fp32,p_ae DataLoader fp32"]

Each configuration is one optimizer step (forward, loss, backward, Adam) on a batch. After one
warm-up step per configuration, ``--rounds`` rounds time one step of every configuration in
turn (interleaved, so load from other processes hits them alike); the median and best are
printed. Configurations: embench's path (uint8 data in memory, batched by index, converted to
float per batch; fp32 or bf16 autocast; optionally channels_last) and the "straightforward"
path (float32 TensorDataset + DataLoader(shuffle=True), eager fp32). The perceptual network
has random AlexNet weights (same cost as ImageNet weights).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from embench.encoders.autoencoder import FourLayerCVAE, _take, _to_unit
from embench.training import autocast


def perceptual_net() -> nn.Module:
    net = nn.Sequential(torchvision.models.alexnet(weights=None).features[:5], nn.Sigmoid())
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def loss_fn(model, pnet, x):
    recon, _, _ = model(x)
    if pnet is None:
        return F.mse_loss(recon.float(), x)
    with torch.no_grad():
        target = pnet(x).float()
    return F.mse_loss(pnet(recon).float(), target)


def embench_step(images, perceptual, precision, channels_last, batch_size):
    """A closure doing one training step the way embench does."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = FourLayerCVAE(64, images.shape[-1]).to(memory_format=fmt).train()
    pnet = perceptual_net().to(memory_format=fmt) if perceptual else None
    data = torch.from_numpy(images)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    device = torch.device("cpu")

    def step():
        idx = torch.randperm(len(data), generator=gen)[:batch_size].sort().values
        x = _to_unit(_take(data, idx)).contiguous(memory_format=fmt)
        with autocast(device, precision):
            loss = loss_fn(model, pnet, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def dataloader_step(images, perceptual, batch_size):
    """A closure doing one training step the textbook way."""
    torch.manual_seed(0)
    model = FourLayerCVAE(64, images.shape[-1]).train()
    pnet = perceptual_net() if perceptual else None
    dataset = TensorDataset(torch.from_numpy(images.astype(np.float32) / 255.0))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = iter(())

    def step():
        nonlocal batches
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            batch = next(batches)
        loss = loss_fn(model, pnet, batch[0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--only", default=None, help="comma-separated configuration names")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 3, args.size, args.size), dtype=np.uint8)
    factories = {}
    for name, perceptual in (("ae", False), ("p_ae", True)):
        for precision in ("fp32", "bf16"):
            for cl in (False, True):
                label = f"{name} embench {precision}" + (" channels_last" if cl else "")
                factories[label] = (embench_step, (images, perceptual, precision, cl,
                                                   args.batch_size))
        factories[f"{name} DataLoader fp32"] = (dataloader_step, (images, perceptual,
                                                                  args.batch_size))
    wanted = [n.strip() for n in args.only.split(",")] if args.only else list(factories)
    steps = {name: factories[name][0](*factories[name][1]) for name in wanted}
    print(f"threads={torch.get_num_threads()} size={args.size} batch={args.batch_size} "
          f"rounds={args.rounds} torch={torch.__version__}", flush=True)
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    for name, spent in times.items():
        rates = [args.batch_size / t for t in spent]
        print(f"{name:34s} median {statistics.median(rates):7.1f}  best {max(rates):7.1f} img/s",
              flush=True)


if __name__ == "__main__":
    main()
