#!/usr/bin/env python3
"""dlfs's models in PyTorch: the same networks, named and shaped as dlfs names them.

Builds DeepConvNet, Vgg, ResNet, GoogLeNet, BinaryConvNet and ConvStack exactly as dlfs's `dl-models` does (the
structure comes from the model's configuration, the same JSON dlfs writes into a
parameter file's metadata), moves weights between the two, and serves three purposes:

  logits FILE      load a dlfs safetensors file (any model; the kind and configuration
                   come from its metadata) and print the logits of a fixed input
  golden DIR       write the golden files the Rust test `golden` compares against: for
                   each model, a dlfs parameter file (random weights and batch-norm
                   statistics, float32) and a file with a fixed input batch, the logits
                   in evaluation mode, and after one training-mode forward and backward
                   the loss, every parameter's gradient and the updated running
                   statistics, all computed in float64
  deskew FILE      write the golden file of dl-layers' `Deskew` test: non-negative
                   images, their deskewed images and the gradient of a weighted sum of
                   them (centre and skew moving with the input), by moments computed in
                   torch and `grid_sample`'s bilinear sampling, in float64
  bench            training (forward, backward, Adam; batch 100) and inference
                   throughput of one model on MNIST, as medians over windows, for
                   `cargo xtask bench --vs-torch`

Needs Python with torch, numpy and safetensors:
  python3 -m venv .venv && .venv/bin/pip install torch numpy safetensors

Name mapping (dlfs -> torch): `W` -> `weight` (transposed for an Affine layer, which dlfs
keeps as (in, out)), `b` -> `bias`, `gamma` -> `weight`, `beta` -> `bias`; batch-norm
running statistics keep their names. The book's DeepConvNet names (`W1` ... `b8`) map to
its eight weighted layers in order.
"""
import argparse
import gzip
import json
import os
import statistics
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file

# ----------------------------------------------------------------------------
# The models (structure and names as dl-models builds them)
# ----------------------------------------------------------------------------


class BookDropout(nn.Module):
    """The book's dropout: training multiplies by a {0,1} mask, evaluation by 1 - ratio."""

    def __init__(self, ratio):
        super().__init__()
        self.ratio = ratio

    def forward(self, x):
        if self.training:
            return x * (torch.rand_like(x) > self.ratio).to(x.dtype)
        return x * (1.0 - self.ratio)


def deep_convnet(cfg):
    c, h, w = cfg["input_dim"]
    layers = []
    for i, p in enumerate(cfg["conv_params"]):
        conv = nn.Conv2d(c, p["filter_num"], p["filter_size"], p["stride"], p["pad"])
        layers += [conv]
        if cfg.get("use_batchnorm"):
            layers += [nn.BatchNorm2d(p["filter_num"], eps=1e-6, momentum=0.1)]
        layers += [nn.ReLU()]
        c = p["filter_num"]
        h = (h + 2 * p["pad"] - p["filter_size"]) // p["stride"] + 1
        w = (w + 2 * p["pad"] - p["filter_size"]) // p["stride"] + 1
        if i % 2 == 1:
            layers += [nn.MaxPool2d(2, 2)]
            h, w = h // 2, w // 2
    drop = (lambda r: nn.Dropout(r)) if cfg["inverted_dropout"] else BookDropout
    layers += [nn.Flatten(), nn.Linear(c * h * w, cfg["hidden_size"])]
    if cfg.get("use_batchnorm"):
        layers += [nn.BatchNorm1d(cfg["hidden_size"], eps=1e-6, momentum=0.1)]
    layers += [nn.ReLU(), drop(cfg["dropout_ratio"]), nn.Linear(cfg["hidden_size"], cfg["output_size"]),
               drop(cfg["dropout_ratio"])]
    return nn.Sequential(*layers)


class Vgg(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c, h, w = cfg["input_dim"]
        feats = []
        for n, ch in cfg["blocks"]:
            for _ in range(n):
                feats.append(nn.Conv2d(c, ch, 3, 1, 1))
                if cfg["use_batchnorm"]:
                    feats.append(nn.BatchNorm2d(ch))
                feats.append(nn.ReLU())
                c = ch
            feats.append(nn.MaxPool2d(2, 2))
            h, w = h // 2, w // 2
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(
            nn.Linear(c * h * w, cfg["hidden_size"]), nn.ReLU(), nn.Dropout(cfg["dropout_ratio"]),
            nn.Linear(cfg["hidden_size"], cfg["output_size"]))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        s = x if self.downsample is None else self.downsample(x)
        return F.relu(y + s)


class ResNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c0 = cfg["input_dim"][0]
        widths = cfg["widths"]
        self.conv1 = nn.Conv2d(c0, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        c = widths[0]
        self.stages = []
        for i, width in enumerate(widths):
            blocks = []
            for b in range(cfg["blocks_per_stage"]):
                blocks.append(BasicBlock(c, width, 2 if i > 0 and b == 0 else 1))
                c = width
            name = f"layer{i + 1}"
            setattr(self, name, nn.Sequential(*blocks))
            self.stages.append(name)
        self.fc = nn.Linear(c, cfg["output_size"])

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 1, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    def __init__(self, cin, p):
        super().__init__()
        self.branch1 = BasicConv2d(cin, p["ch1x1"], 1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, p["ch3x3red"], 1), BasicConv2d(p["ch3x3red"], p["ch3x3"], 3))
        self.branch3 = nn.Sequential(BasicConv2d(cin, p["ch5x5red"], 1), BasicConv2d(p["ch5x5red"], p["ch5x5"], 5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), BasicConv2d(cin, p["pool_proj"], 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c = cfg["stem_channels"]
        self.conv1 = BasicConv2d(cfg["input_dim"][0], c, 3)
        self.order = ["conv1"]
        for s, stage in enumerate(cfg["stages"]):
            name = f"maxpool{s + 1}"
            setattr(self, name, nn.MaxPool2d(2, 2))
            self.order.append(name)
            for m, p in enumerate(stage):
                name = f"inception{s + 3}{chr(ord('a') + m)}"
                setattr(self, name, Inception(c, p))
                self.order.append(name)
                c = p["ch1x1"] + p["ch3x3"] + p["ch5x5"] + p["pool_proj"]
        self.dropout = nn.Dropout(cfg["dropout_ratio"])
        self.fc = nn.Linear(c, cfg["output_size"])

    def forward(self, x):
        for name in self.order:
            x = getattr(self, name)(x)
        return self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


class SignSte(torch.autograd.Function):
    """The BNN sign: +1 for x >= 0, else -1; backward, the straight-through estimator
    with hard-tanh clipping (the gradient passes where |x| <= 1)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


class WeightSign(torch.autograd.Function):
    """The sign of a latent weight; backward, the gradient of the sign unchanged."""

    @staticmethod
    def forward(ctx, w):
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)

    @staticmethod
    def backward(ctx, g):
        return g


class Sign(nn.Module):
    def forward(self, x):
        return SignSte.apply(x)


class BinaryConv2d(nn.Conv2d):
    def forward(self, x):
        return F.conv2d(x, WeightSign.apply(self.weight), None, self.stride, self.padding)


class BinaryLinear(nn.Linear):
    def forward(self, x):
        return F.linear(x, WeightSign.apply(self.weight))


class BookBatchNorm1d(nn.Module):
    """The book's batch norm over activations: eps 1e-6, running = 0.9 * running + 0.1 *
    batch, with the biased batch variance."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.zeros(n))

    def forward(self, x):
        if self.training:
            mean, var = x.mean(0), x.var(0, unbiased=False)
            with torch.no_grad():
                self.running_mean.mul_(0.9).add_(0.1 * mean)
                self.running_var.mul_(0.9).add_(0.1 * var)
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) / torch.sqrt(var + 1e-6) * self.weight + self.bias


class BinaryConvNet(nn.Module):
    """dl-models' BinaryConvNet: blocks of 3x3 convolutions (the first in float, without
    a bias; the others binarized), each followed by (the block's max pool, then) a batch
    norm and the sign; a binarized affine layer, a batch norm, the sign, the classifier."""

    def __init__(self, cfg):
        super().__init__()
        c, h, w = cfg["input_dim"]
        feats, first = [], True
        for n, ch in cfg["blocks"]:
            for i in range(n):
                conv = nn.Conv2d if first else BinaryConv2d
                feats.append(conv(c, ch, 3, 1, 1, bias=False))
                first = False
                if i + 1 == n:
                    feats.append(nn.MaxPool2d(2, 2))
                feats += [nn.BatchNorm2d(ch), Sign()]
                c = ch
            h, w = h // 2, w // 2
        self.features = nn.Sequential(*feats)
        hidden = cfg["hidden_size"]
        self.classifier = nn.Sequential(BinaryLinear(c * h * w, hidden, bias=False), BookBatchNorm1d(hidden),
                                        Sign(), nn.Linear(hidden, cfg["output_size"]))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def sign_margin(model, x):
    """The least distance of a Sign's input to 0 or to +-1 (where the sign or its
    gradient jumps) in a training and an evaluation forward of `x`: below float32's
    error there, the two implementations could differ by a whole sign."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
             for m in model.modules() if isinstance(m, Sign)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for train in (False, True):
            model.train(train)
            model(x)
    model.load_state_dict(state)
    for h in hooks:
        h.remove()
    return min(min(v.abs().min().item(), (v.abs() - 1).abs().min().item()) for v in seen)


class ConvStack(nn.Module):
    """An et al. 2020's plain stack: unpadded convolutions (no bias under batch norm),
    each with batch norm and ReLU, no pooling, then one linear layer."""

    def __init__(self, cfg):
        super().__init__()
        c, h, w = cfg["input_dim"]
        k, bn = cfg["kernel_size"], cfg["use_batchnorm"]
        feats = []
        for ch in cfg["channels"]:
            feats.append(nn.Conv2d(c, ch, k, 1, 0, bias=not bn))
            if bn:
                feats.append(nn.BatchNorm2d(ch))
            feats.append(nn.ReLU())
            c, h, w = ch, h - k + 1, w - k + 1
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Linear(c * h * w, cfg["output_size"]))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


BUILDERS = {"DeepConvNet": deep_convnet, "Vgg": Vgg, "ResNet": ResNet, "GoogLeNet": GoogLeNet,
            "BinaryConvNet": BinaryConvNet, "ConvStack": ConvStack}

# ----------------------------------------------------------------------------
# Names between dlfs and torch
# ----------------------------------------------------------------------------


def dlfs_names(model, kind):
    """{dlfs name: (torch state_dict key, is_linear_weight)} for every saved tensor."""
    sd = model.state_dict()
    out = {}
    if kind == "DeepConvNet":
        k = 0
        for i, layer in enumerate(model):
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                k += 1
                out[f"W{k}"] = (f"{i}.weight", isinstance(layer, nn.Linear))
                out[f"b{k}"] = (f"{i}.bias", False)
            elif isinstance(layer, (nn.BatchNorm2d, nn.BatchNorm1d)):
                for d, t in [("gamma", "weight"), ("beta", "bias"), ("running_mean", "running_mean"),
                             ("running_var", "running_var")]:
                    out[f"{d}{k}"] = (f"{i}.{t}", False)
        return out
    mods = dict(model.named_modules())
    for key in sd:
        if key.endswith("num_batches_tracked"):
            continue
        prefix, leaf = key.rsplit(".", 1)
        m = mods[prefix]
        if isinstance(m, (nn.BatchNorm2d, BookBatchNorm1d)):
            leaf = {"weight": "gamma", "bias": "beta"}.get(leaf, leaf)
        else:
            leaf = {"weight": "W", "bias": "b"}[leaf]
        out[f"{prefix}.{leaf}"] = (key, isinstance(m, nn.Linear) and leaf == "W")
    return out


def to_dlfs(model, kind):
    sd = model.state_dict()
    out = {}
    for name, (key, linear) in dlfs_names(model, kind).items():
        v = sd[key].detach().double().numpy()
        out[name] = v.T.copy() if linear else v
    return out


def from_dlfs(model, kind, tensors):
    sd = model.state_dict()
    names = dlfs_names(model, kind)
    missing = set(names) - set(tensors)
    extra = set(tensors) - set(names)
    if missing or extra:
        sys.exit(f"names differ: missing {sorted(missing)}, extra {sorted(extra)}")
    for name, (key, linear) in names.items():
        v = torch.from_numpy(np.ascontiguousarray(tensors[name].T if linear else tensors[name]))
        if tuple(v.shape) != tuple(sd[key].shape):
            sys.exit(f"{name}: shape {tuple(v.shape)}, the torch model has {tuple(sd[key].shape)}")
        sd[key] = v.to(sd[key].dtype)
    model.load_state_dict(sd)


def read_dlfs(path):
    """(kind, config dict, tensors) of a dlfs safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    info = json.loads(header["__metadata__"]["dlfs"])
    return info["model"], json.loads(info["config"]), load_file(path)


def write_dlfs(path, kind, cfg, tensors):
    meta = {"dlfs": json.dumps({"config": json.dumps(cfg, separators=(",", ":")), "model": kind},
                               separators=(",", ":"))}
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, path, metadata=meta)

# ----------------------------------------------------------------------------
# Modes
# ----------------------------------------------------------------------------


def fixed_input(cfg, n, seed):
    g = np.random.default_rng(seed)
    c, h, w = cfg["input_dim"]
    return g.random((n, c, h, w)), g.integers(0, cfg["output_size"], n)


def logits(args):
    kind, cfg, tensors = read_dlfs(args.file)
    model = BUILDERS[kind](cfg).double().eval()
    from_dlfs(model, kind, tensors)
    x, _ = fixed_input(cfg, args.n, args.seed)
    with torch.no_grad():
        y = model(torch.from_numpy(x))
    np.set_printoptions(precision=6, suppress=True, linewidth=120)
    print(y.numpy())


# Small configurations that keep every structure of the defaults (identity and
# projection shortcuts, every inception branch, several channels of input) and keep
# the committed files small.
GOLDEN = {
    "DeepConvNet": {"input_dim": [1, 28, 28], "conv_params": [
        {"filter_num": f, "filter_size": 3, "pad": p, "stride": 1}
        for f, p in [(16, 1), (16, 1), (32, 1), (32, 2), (64, 1), (64, 1)]],
        "hidden_size": 50, "output_size": 10, "dropout_ratio": 0.0, "inverted_dropout": False,
        "use_batchnorm": False},
    "Vgg": {"input_dim": [1, 28, 28], "blocks": [[2, 8], [2, 16], [3, 16]], "hidden_size": 32,
            "output_size": 10, "dropout_ratio": 0.0, "use_batchnorm": True},
    "ResNet": {"input_dim": [3, 16, 16], "blocks_per_stage": 2, "widths": [4, 8, 16], "output_size": 10},
    "GoogLeNet": {"input_dim": [1, 28, 28], "stem_channels": 8, "stages": [
        [{"ch1x1": 4, "ch3x3red": 4, "ch3x3": 8, "ch5x5red": 2, "ch5x5": 4, "pool_proj": 4},
         {"ch1x1": 8, "ch3x3red": 4, "ch3x3": 8, "ch5x5red": 2, "ch5x5": 4, "pool_proj": 4}],
        [{"ch1x1": 8, "ch3x3red": 6, "ch3x3": 12, "ch5x5red": 2, "ch5x5": 4, "pool_proj": 8}]],
        "dropout_ratio": 0.0, "output_size": 10},
    "BinaryConvNet": {"input_dim": [1, 28, 28], "blocks": [[2, 8], [2, 16]], "hidden_size": 32, "output_size": 10},
    "ConvStack": {"input_dim": [2, 14, 12], "kernel_size": 3, "channels": [4, 6, 8, 10], "output_size": 10,
                  "use_batchnorm": True},
}

# A binarized network's input is drawn again until no sign's input lies within this of
# a jump (0, or +-1 for the gradient): float32's error there is below 1e-6.
SIGN_MARGIN = 1e-5


def golden(args):
    os.makedirs(args.dir, exist_ok=True)
    for i, (kind, cfg) in enumerate(GOLDEN.items()):
        if args.only and kind not in args.only:
            continue
        torch.manual_seed(100 + i)
        model = BUILDERS[kind](cfg).double()
        g = np.random.default_rng(200 + i)
        # random weights, and batch-norm statistics and scales away from their defaults
        params = to_dlfs(model, kind)
        for name, v in params.items():
            if name.endswith("running_var"):
                params[name] = g.uniform(0.5, 1.5, v.shape)
            elif name.endswith(("gamma",)):
                params[name] = g.uniform(0.5, 1.5, v.shape)
            elif name.endswith(("running_mean", "beta")) or name.split(".")[-1].startswith("b"):
                params[name] = g.uniform(-0.1, 0.1, v.shape)
            else:
                fan_in = int(np.prod(v.shape[1:])) if v.ndim == 4 else v.shape[0]
                params[name] = g.normal(0.0, np.sqrt(2.0 / fan_in), v.shape)
        # the float32 values dlfs will hold, so both sides start from the same numbers
        params = {k: v.astype(np.float32).astype(np.float64) for k, v in params.items()}
        from_dlfs(model, kind, params)
        seed = 300 + i
        x, t = fixed_input(cfg, args.n, seed)
        x = x.astype(np.float32).astype(np.float64)
        xt = torch.from_numpy(x)
        while kind == "BinaryConvNet" and sign_margin(model, xt) < SIGN_MARGIN:
            if seed > 300 + i + 1000 * 100:
                sys.exit(f"{kind}: no input among 100 draws keeps every sign {SIGN_MARGIN} from a jump")
            seed += 1000
            x, t = fixed_input(cfg, args.n, seed)
            x = x.astype(np.float32).astype(np.float64)
            xt = torch.from_numpy(x)
        model.eval()
        with torch.no_grad():
            y_eval = model(xt).numpy()
        model.train()
        y = model(xt)
        loss = F.cross_entropy(y, torch.from_numpy(t))
        loss.backward()
        out = {"input": x, "labels": t.astype(np.float64), "logits_eval": y_eval,
               "logits_train": y.detach().numpy(), "loss_train": np.array([loss.item()])}
        grads = {}
        sd_names = dlfs_names(model, kind)
        named = dict(model.named_parameters())
        for name, (key, linear) in sd_names.items():
            if key in named:
                gr = named[key].grad.numpy()
                grads[name] = gr.T if linear else gr
        out.update({f"grad.{k}": v for k, v in grads.items()})
        after = to_dlfs(model, kind)
        out.update({f"after.{k}": v for k, v in after.items() if "running" in k})
        write_dlfs(os.path.join(args.dir, f"{kind.lower()}.safetensors"), kind, cfg, params)
        save_file({k: np.ascontiguousarray(v) for k, v in out.items()},
                  os.path.join(args.dir, f"{kind.lower()}-golden.safetensors"),
                  metadata={"torch": torch.__version__, "dtype": "float64"})
        print(f"{kind}: {sum(v.size for v in params.values())} values, loss {loss.item():.6f}, "
              f"{len(grads)} gradients")


def deskew_torch(x):
    """dlfs's `Deskew` by torch's own operations: each image's ink (summed over channels)
    gives its centre of mass (r, c), row variance and covariance, skew a = cov / var;
    output pixel (i, j) samples the input bilinearly, zeros outside, at row
    r + (i - H/2), column c + (j - W/2) + a (i - H/2)."""
    n, _, h, w = x.shape
    ink = x.sum(1)
    rows = torch.arange(h, dtype=x.dtype).view(1, h, 1)
    cols = torch.arange(w, dtype=x.dtype).view(1, 1, w)
    m = ink.sum((1, 2))
    r = ((ink * rows).sum((1, 2)) / m).view(n, 1, 1)
    c = ((ink * cols).sum((1, 2)) / m).view(n, 1, 1)
    var = (ink * (rows - r) ** 2).sum((1, 2)).view(n, 1, 1) / m.view(n, 1, 1)
    cov = (ink * (rows - r) * (cols - c)).sum((1, 2)).view(n, 1, 1) / m.view(n, 1, 1)
    a = cov / var
    i = rows - h / 2
    j = cols - w / 2
    sr = (r + i).expand(n, h, w)
    sc = c + j + a * i
    # grid_sample's coordinates: -1 and 1 are the first and last pixels' centres
    grid = torch.stack([2 * sc / (w - 1) - 1, 2 * sr / (h - 1) - 1], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def deskew(args):
    g = np.random.default_rng(args.seed)
    out = {}
    for k, shape in enumerate([(3, 1, 28, 28), (2, 2, 9, 8)]):
        # sparse non-negative ink, as digits have, in float32 values
        x = g.random(shape) * (g.random(shape) < 0.3)
        x = x.astype(np.float32).astype(np.float64)
        rw = g.uniform(-1, 1, shape).astype(np.float32).astype(np.float64)
        xt = torch.from_numpy(x).requires_grad_(True)
        y = deskew_torch(xt)
        (y * torch.from_numpy(rw)).sum().backward()
        out.update({f"{k}.x": x, f"{k}.r": rw, f"{k}.y": y.detach().numpy(), f"{k}.dx": xt.grad.numpy()})
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, args.file,
              metadata={"torch": torch.__version__, "dtype": "float64"})
    print(f"wrote {args.file}: {len(out) // 4} cases")


def load_mnist(root):
    def read(name):
        path = os.path.join(root, name)
        opener = gzip.open if not os.path.exists(path) else open
        with opener(path if os.path.exists(path) else path + ".gz", "rb") as f:
            data = f.read()
        ndim = data[3]
        dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
        return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    xtr = read("train-images-idx3-ubyte")[:, None].astype(np.float32) / 255.0
    ttr = read("train-labels-idx1-ubyte").astype(np.int64)
    xte = read("t10k-images-idx3-ubyte")[:, None].astype(np.float32) / 255.0
    return torch.from_numpy(xtr), torch.from_numpy(ttr), torch.from_numpy(xte)


def bench(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    kind = {"deep": "DeepConvNet", "vgg": "Vgg", "resnet": "ResNet", "googlenet": "GoogLeNet",
            "convstack": "ConvStack"}[args.model]
    cfg = json.loads(args.config) if args.config else DEFAULTS[kind]
    model = BUILDERS[kind](cfg)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xtr, ttr, xte = load_mnist(args.mnist)
    B, n = 100, xtr.shape[0]
    g = torch.Generator().manual_seed(args.seed)
    perm, pos = torch.randperm(n, generator=g), 0

    def step():
        nonlocal perm, pos
        if pos + B > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + B]
        pos += B
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xtr[idx]), ttr[idx])
        loss.backward()
        opt.step()

    model.train()
    for _ in range(args.warmup):
        step()
    rates = []
    for _ in range(args.windows):
        t0 = time.perf_counter()
        for _ in range(args.iters):
            step()
        rates.append(args.iters * B / (time.perf_counter() - t0))
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "model": kind,
              "channels_last": args.channels_last, "train_images_per_sec": statistics.median(rates)}
    print(f"{kind} train batch {B}: {statistics.median(rates):.0f} img/s (median of {args.windows})")
    model.eval()
    with torch.no_grad():
        for bs in (100, 1000):
            for i in range(0, 2000, bs):
                model(xte[i:i + bs])
            rates = []
            for _ in range(min(args.windows, 5)):
                t0 = time.perf_counter()
                for i in range(0, xte.shape[0], bs):
                    model(xte[i:i + bs])
                rates.append(xte.shape[0] / (time.perf_counter() - t0))
            result[f"infer_images_per_sec_b{bs}"] = statistics.median(rates)
            print(f"{kind} infer batch {bs}: {statistics.median(rates):.0f} img/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


# The default configurations of dl-models (`cargo xtask train --model ...`).
DEFAULTS = {
    "DeepConvNet": dict(GOLDEN["DeepConvNet"], dropout_ratio=0.5),
    "Vgg": {"input_dim": [1, 28, 28], "blocks": [[2, 32], [2, 64], [3, 128]], "hidden_size": 256,
            "output_size": 10, "dropout_ratio": 0.5, "use_batchnorm": True},
    "ResNet": {"input_dim": [1, 28, 28], "blocks_per_stage": 3, "widths": [16, 32, 64], "output_size": 10},
    "GoogLeNet": {"input_dim": [1, 28, 28], "stem_channels": 32, "stages": [
        [dict(zip(["ch1x1", "ch3x3red", "ch3x3", "ch5x5red", "ch5x5", "pool_proj"], p)) for p in stage]
        for stage in [[(16, 16, 32, 8, 8, 8), (32, 32, 48, 8, 16, 16)],
                      [(48, 24, 64, 8, 16, 16), (48, 32, 64, 12, 24, 24)]]],
        "dropout_ratio": 0.2, "output_size": 10},
    "ConvStack": {"input_dim": [1, 28, 28], "kernel_size": 3, "channels": [32 + 16 * i for i in range(10)],
                  "output_size": 10, "use_batchnorm": True},
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    q = sub.add_parser("logits")
    q.add_argument("file")
    q.add_argument("--n", type=int, default=2)
    q.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("golden")
    q.add_argument("dir", nargs="?", default=os.path.join(here, "..", "crates", "dl-models", "tests", "golden"))
    q.add_argument("--n", type=int, default=4)
    q.add_argument("--only", nargs="*", default=None, help="these kinds only (default: every one)")
    q = sub.add_parser("deskew")
    q.add_argument("file", nargs="?", default=os.path.join(here, "..", "crates", "dl-layers", "tests", "golden",
                                                           "deskew.safetensors"))
    q.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("bench")
    q.add_argument("--model", default="deep", choices=["deep", "vgg", "resnet", "googlenet", "convstack"])
    q.add_argument("--config", default=None, help="the model's configuration as dlfs's JSON")
    q.add_argument("--mnist", default=os.path.join(here, "..", "datasets", "mnist"))
    q.add_argument("--threads", type=int, default=2)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--warmup", type=int, default=10)
    q.add_argument("--iters", type=int, default=20)
    q.add_argument("--windows", type=int, default=7)
    q.add_argument("--channels-last", action="store_true")
    q.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(getattr(args, "threads", 2))
    {"logits": logits, "golden": golden, "deskew": deskew, "bench": bench}[args.mode](args)


if __name__ == "__main__":
    main()
