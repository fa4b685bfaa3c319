"""Training speed of every zoo model, to size the zoo's step counts (issue: the runs the zoo adds must train in
<= 60 minutes on 2 cores).

    python bench/bench_zoo.py                 # 40 steps of each preset, 1 torch thread, one process at a time
    python bench/bench_zoo.py --steps 60 --threads 1

Each preset is trained for `--steps` steps (real data, the real `train()` loop) into a temporary folder; its speed is
the median `tok_per_s` the training loop logs (the first logged interval, which includes warm-up, is dropped). The
report gives ms/step and the minutes the preset's full step count takes at that speed, one process; the zoo runs two
such processes side by side on 2 cores, so its wall time is about half the sum (if the two cores are idle).
"""
import argparse, statistics, tempfile, time
from pathlib import Path

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument('--steps', type=int, default=40)
ap.add_argument('--threads', type=int, default=1)
ap.add_argument('--presets', nargs='*', default=None)
args = ap.parse_args()

import torch
from induction_nb.train import preset, train
from induction_nb.zoo import ZOO

torch.set_num_threads(args.threads)
names = args.presets or [p for p, _ in ZOO.values()]
total = 0.0
print(f"{'preset':<20}{'ms/step':>9}{'steps':>7}{'seeds':>6}{'min (1 proc)':>14}   ({args.steps} steps timed, {args.threads} thread)")
for name in names:
    full = preset(name)
    seeds = next(len(s) for p, s in ZOO.values() if p == name) if any(p == name for p, _ in ZOO.values()) else 1
    cfg = preset(name, train=dict(steps=args.steps, log_every=5, snapshots_log=2, snapshots_lin=2, val_windows=8,
                                  checkpoint_every=10**6))
    with tempfile.TemporaryDirectory() as d:
        run = train(cfg, Path(d)/'r', progress=False, n_threads=args.threads)
        tps = run.metrics().tok_per_s.dropna().tolist()[1:]
    ms = 1e3 * cfg.train.batch_size * cfg.model.n_ctx / statistics.median(tps)
    minutes = ms * full.train.steps * seeds / 6e4
    total += minutes
    print(f"{name:<20}{ms:9.0f}{full.train.steps:7d}{seeds:6d}{minutes:14.1f}", flush=True)
print(f"sum {total:.1f} min in one process; about {total / 2:.1f} min of wall time with two processes on 2 idle cores")
