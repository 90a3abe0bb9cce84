"""Per-keyword DET of the first stage alone and of the cascade, on the same axes (detection-quality
issue, RESEARCH.md round 3), from the JSON of `verifier cascade` (`--json`) on the validation set.

  python -m kws_train.detplot runs/cascade-val2.json --t1 0.98 --out ../RESEARCH-det-tc-resnet8.png

Each panel: one keyword; x = that keyword's false alarms per hour of all validation audio (log),
y = its miss rate. First stage: the shipped decoder at one threshold swept over the grid. Cascade:
candidates at `--t1`, the verifier threshold swept. The marker is the manifest's operating point
(`--point t1,v`). Needs matplotlib (training venv only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import KEYWORDS


def curve(points: list[dict], kw: str) -> tuple[list[float], list[float]]:
    pts = sorted(((p["keywords"][kw]["fa_per_h"], 1 - p["keywords"][kw]["recall"]) for p in points))
    return [max(x, 0.05) for x, _ in pts], [y for _, y in pts]


def main(argv: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cascade_json", type=Path)
    p.add_argument("--t1", type=float, required=True)
    p.add_argument("--point", type=lambda s: tuple(float(x) for x in s.split(",")), help="t1,v of the manifest")
    p.add_argument("--title", default="")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    d = json.loads(a.cascade_json.read_text())
    first = [q for q in d["first_stage"]]
    casc = [q for q in d["cascade"] if abs(q["t1"] - a.t1) < 1e-9 and not q["relabel"]]
    if not casc:
        raise SystemExit(f"no cascade points at t1 {a.t1}")
    fig, axes = plt.subplots(2, 5, figsize=(16, 6.5), sharex=True, sharey=True)
    for ax, kw in zip(axes.flat, KEYWORDS):
        ax.plot(*curve(first, kw), "o-", ms=3, label="first stage alone (threshold swept)")
        ax.plot(*curve(casc, kw), "s-", ms=3, label=f"cascade, t1 {a.t1} (verifier threshold swept)")
        if a.point:
            pt = [q for q in d["cascade"] if abs(q["t1"] - a.point[0]) < 1e-9 and abs(q["v"] - a.point[1]) < 1e-9
                  and not q["relabel"]]
            if pt:
                ax.plot(*curve(pt, kw), "k*", ms=12, label=f"shipped (t1 {a.point[0]}, v {a.point[1]})")
        ax.set_xscale("log")
        ax.set_title(kw)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("miss rate")
    for ax in axes[1]:
        ax.set_xlabel("false alarms / h (0 drawn at 0.05)")
    axes.flat[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(a.title or f"{a.cascade_json.name}: {d['hours']:.2f} h, {d['files']} streams")
    fig.tight_layout()
    fig.savefig(a.out, dpi=80)


if __name__ == "__main__":
    main()
