"""Fingerprint of a recipe's first training batches and first loss, to check that a code change leaves
a recipe's random stream alone: run it on the old and the new checkout and compare the sha256.

  python batch_fingerprint.py --config configs/tc-resnet8.toml --data data [--batches 5] [--root OLD_CHECKOUT/models/training]
"""
import argparse
import hashlib
import json
import sys
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--config", type=Path, required=True)
p.add_argument("--data", type=Path, default=Path("data"))
p.add_argument("--batches", type=int, default=5)
p.add_argument("--root", default=str(Path(__file__).resolve().parent), help="the models/training dir whose kws_train to use")
a = p.parse_args()
sys.path.insert(0, a.root)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kws_train import CLASSES  # noqa: E402
from kws_train import train as T  # noqa: E402
from kws_train.data import load_background, load_clips  # noqa: E402
from kws_train.frontend import TorchFrontend  # noqa: E402
from kws_train.model import TCResNet  # noqa: E402
from kws_train.recipe import load_recipe  # noqa: E402

r = load_recipe(a.config)
torch.manual_seed(r.seed)
rng, gen = np.random.default_rng(r.seed), torch.Generator().manual_seed(r.seed)
engines = sorted(set(r.engines) | {q.stem for q in (a.data / "shards").glob("*.jsonl")})
clips, bg = load_clips(a.data, engines), load_background(a.data)
train = T.split_train(clips, r, rng)
kw = {"negatives": T.split_negatives(a.data, r)} if hasattr(T, "split_negatives") else {}
if hasattr(T, "add_converted"):
    train = T.add_converted(train, a.data, r)
sampler = T.BatchSampler(train, bg, r, rng, **kw)
fe, net = TorchFrontend(), TCResNet(r.arch, num_classes=len(CLASSES), dropout=r.dropout, cmn=r.cmn)
h, sums = hashlib.sha256(), []
for b in range(a.batches):
    x, y = sampler()
    h.update(x.tobytes())
    h.update(y.tobytes())
    sums.append([float(x.astype(np.float64).sum()), int(y.sum())])
    if b == 0:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        with torch.no_grad():
            feats = fe.mfcc_from_logmel(T.spec_augment(fe.logmel(xt), r, gen))
            logits = net(feats)
        per = torch.sum(-F.one_hot(yt, len(CLASSES)).float() * F.log_softmax(logits, dim=1), dim=1)
        loss = T.weighted_loss(per, T.example_weights(logits, yt, r, 0)) if hasattr(T, "weighted_loss") else per.mean()
        first_loss = float(loss)
print(json.dumps({"config": str(a.config), "batch_sums": sums, "first_loss": first_loss, "sha256": h.hexdigest()}))
