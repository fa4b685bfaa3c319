"""Speed of the per-head ablation sweep (issue: a full sweep of a 2-layer run, all heads x all snapshots x both
ablation kinds, in <= 5 minutes on 2 cores).

    python bench/bench_ablation.py                          # the stdlib-2l preset's model, 2 threads
    python bench/bench_ablation.py --preset stdlib-3l --threads 1
    python bench/bench_ablation.py --run runs/stdlib-2l-s0  # also time the real sweep() of every snapshot, cache off
    python bench/bench_ablation.py --json nbs/results/ablation/bench.json   # what the ablation chapter's Speed section reads

Per snapshot, side by side on the same windows (the chapter's `ABLATION_PARAMS`: 64 windows): the naive way
(`ablate`: one full forward pass per head and kind) and `head_ablation_losses` (each head's run starts at its layer
from the cached residual stream; a last-layer head's pattern-preserving ablation is its zero ablation), and the
clean ICL pass every snapshot needs anyway. The weights are random (the time does not depend on them); the full
sweep's time is the per-snapshot time x the preset's number of snapshots.
"""
import argparse, itertools, json, os, platform, time
from pathlib import Path

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument('--preset', default='stdlib-2l')
ap.add_argument('--threads', type=int, default=2)
ap.add_argument('--repeats', type=int, default=3, help="snapshots timed (the median is reported)")
ap.add_argument('--run', default=None, help="a run directory whose full sweep to time as well (no cache)")
ap.add_argument('--json', default=None, help="also write the numbers to this JSON file")
args = ap.parse_args()

import statistics, torch
from induction_nb.train import preset, load_run
from induction_nb.model import Transformer, per_token_loss
from induction_nb.sweep import MEASURE_PARAMS, sweep
from induction_nb.ablation import ABLATION_PARAMS, ABLATION_KINDS, ablate, head_ablation_losses

torch.set_num_threads(args.threads)
cfg = preset(args.preset)
model = Transformer(cfg.model).eval()
L, H, chunk = cfg.model.n_layers, cfg.model.n_heads, MEASURE_PARAMS['chunk']
windows = torch.randint(0, 256, (ABLATION_PARAMS['n_icl'], cfg.model.n_ctx + 1), generator=torch.Generator().manual_seed(0))
n_snap = len(cfg.train.snapshot_steps())

def timed(f) -> float:
    ts = []
    for _ in range(args.repeats):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts)

@torch.no_grad()
def naive():
    for w in windows.split(chunk): per_token_loss(model, w, model(w[:, :-1]))          # the clean pass
    for l, h, kind in itertools.product(range(L), range(H), ABLATION_KINDS):
        for w in windows.split(chunk): per_token_loss(model, w, ablate(model, w[:, :-1], (l, h), kind))

clean = timed(lambda: per_token_loss(model, windows, chunk=chunk))
slow = timed(naive)
fast = timed(lambda: head_ablation_losses(model, windows, ABLATION_KINDS, chunk=chunk)) + clean
print(f"{args.preset}: {L} layers x {H} heads, {len(windows)} windows of {cfg.model.n_ctx} tokens, {args.threads} threads, "
      f"{n_snap} snapshots")
print(f"{'':<28}{'s/snapshot':>12}{'full sweep, min':>17}")
for name, s in (('naive (ablate per head)', slow), ('head_ablation_losses', fast)):
    print(f"{name:<28}{s:12.2f}{s * n_snap / 60:17.1f}")
print(f"speed-up: {slow / fast:.2f}x  (the ICL pass alone: {clean:.2f} s/snapshot)")
out = dict(preset=args.preset, layers=L, heads=H, windows=len(windows), n_ctx=cfg.model.n_ctx, threads=args.threads,
           snapshots=n_snap, naive_s=slow, fast_s=fast, icl_s=clean, cpus=os.cpu_count(), processor=platform.processor(),
           load_before=os.getloadavg()[0], torch=torch.__version__)
if args.run:
    run = load_run(args.run)
    t0 = time.perf_counter()
    sweep(run, ('icl', 'ablation'), cache_dir=False, progress=False, **ABLATION_PARAMS)
    s = time.perf_counter() - t0
    out.update(run=Path(args.run).name, run_snapshots=len(run.steps), run_sweep_s=s)
    print(f"sweep({args.run}, ('icl', 'ablation')): {len(run.steps)} snapshots in {s / 60:.1f} min ({s / len(run.steps):.2f} s/snapshot)")
if args.json:
    with open(args.json, 'w') as f: json.dump(out, f, indent=1)
