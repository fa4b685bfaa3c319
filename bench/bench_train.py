"""Training throughput: induction_nb's Transformer vs TransformerLens' HookedTransformer vs a plain PyTorch model.

    .venv/bin/python bench/bench_train.py                  # ctx256-2l shape, 2 threads, 5 interleaved rounds
    .venv/bin/python bench/bench_train.py --threads 1 --repeats 7 --steps 30

All three are 2-layer attention-only transformers with the `ctx256-2l` shape (d_model 128, 4 heads of 32, context
256, vocab 256, batch 16), pre-LayerNorm + final LayerNorm, untied unembedding, init N(0, 0.02), trained with the
same loop: cross-entropy, backward, grad-norm clip 1.0, AdamW(lr 2e-3, betas (0.9, 0.98), weight decay 0.05 on
>=2-D weights). Batches are pre-generated random tokens, so data loading is not timed (our `train()` samples real
text on top of this: ~1 ms/step).

* ours  -- `induction_nb.model.Transformer` (SDPA fast path; hooks inactive).
* tl    -- `transformer_lens.HookedTransformer` (3.x, attn_only=True, normalization_type='LN'). TL's LayerNorm and
           attention have biases (ours have none), a negligible amount of extra work.
* plain -- a nanoGPT-style model written below: nn.Linear qkv projection + F.scaled_dot_product_attention.

Each measurement is a fresh subprocess (so peak RSS is clean and one model's allocations do not slow the next),
doing `--warmup` untimed steps and then `--steps` timed ones; its speed is taken from the median step time
(robust to the odd step that loses the CPU to another process). Rounds interleave the implementations in rotating
order to cancel drift in machine load; the report gives the median tokens/s over rounds, the ratios of medians,
the peak RSS of each process (total, and above the RSS right after imports), and the CPU time per step (with one
thread, `batch*ctx / CPU time` estimates the speed on an otherwise idle core, whatever the load).

TransformerLens is optional (`pip install "transformer-lens>=3.9,<4"`, the `tl` extra): without it the other two
still run. Timings on a shared machine swing with load; only numbers from the same run are comparable.
"""
from __future__ import annotations
import argparse, datetime, importlib.util, json, os, platform, resource, statistics, subprocess, sys, time

SHAPE = dict(n_layers=2, d_model=128, n_heads=4, d_head=32, n_ctx=256, d_vocab=256, batch=16)
OPT = dict(lr=2e-3, betas=(0.9, 0.98), weight_decay=0.05)
IMPLS = ('ours', 'tl', 'plain')

# ---------------------------------------------------------------------------------------------------- the models
def build(impl: str):
    import torch, torch.nn as nn, torch.nn.functional as F
    torch.manual_seed(0)
    s = SHAPE
    if impl == 'ours':
        from induction_nb.model import ModelConfig, Transformer
        return Transformer(ModelConfig(n_layers=s['n_layers'], d_model=s['d_model'], n_heads=s['n_heads'],
                                       n_ctx=s['n_ctx'], d_vocab=s['d_vocab']))
    if impl == 'tl':
        from transformer_lens import HookedTransformer, HookedTransformerConfig
        cfg = HookedTransformerConfig(n_layers=s['n_layers'], d_model=s['d_model'], n_heads=s['n_heads'],
                                      d_head=s['d_head'], n_ctx=s['n_ctx'], d_vocab=s['d_vocab'], attn_only=True,
                                      normalization_type='LN', positional_embedding_type='standard',
                                      initializer_range=0.02, device='cpu', seed=0)
        return HookedTransformer(cfg)
    if impl == 'plain':
        class Block(nn.Module):
            def __init__(self, d, h):
                super().__init__()
                self.ln, self.qkv, self.proj, self.h = nn.LayerNorm(d, bias=False), nn.Linear(d, 3*d, bias=False), nn.Linear(d, d, bias=False), h
            def forward(self, x):
                B, T, C = x.shape
                q, k, v = self.qkv(self.ln(x)).split(C, dim=2)
                q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                return x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        class Plain(nn.Module):
            def __init__(self):
                super().__init__()
                d = s['d_model']
                self.wte, self.wpe = nn.Embedding(s['d_vocab'], d), nn.Embedding(s['n_ctx'], d)
                self.blocks = nn.ModuleList(Block(d, s['n_heads']) for _ in range(s['n_layers']))
                self.ln_f, self.head = nn.LayerNorm(d, bias=False), nn.Linear(d, s['d_vocab'], bias=False)
                for p in self.parameters():
                    if p.dim() >= 2: nn.init.normal_(p, std=0.02)
            def forward(self, idx):
                x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
                for b in self.blocks: x = b(x)
                return self.head(self.ln_f(x))
        return Plain()
    raise ValueError(impl)

# ---------------------------------------------------------------------------------------------------- one worker
def worker(impl: str, threads: int, warmup: int, steps: int) -> dict:
    import torch, torch.nn.functional as F
    torch.set_num_threads(threads)
    build_imports = {'ours': 'induction_nb.model', 'tl': 'transformer_lens', 'plain': 'torch'}
    __import__(build_imports[impl])
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build(impl).train()
    params = list(model.parameters())
    groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': OPT['weight_decay']},
              {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
    opt = torch.optim.AdamW(groups, lr=OPT['lr'], betas=OPT['betas'])
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(1, SHAPE['d_vocab'], (SHAPE['batch'], SHAPE['n_ctx'] + 1), generator=g) for _ in range(8)]
    def step(i):
        w = batches[i % len(batches)]
        logits = model(w[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()
    for i in range(warmup): step(i)
    times, c0 = [], time.process_time()
    for i in range(steps):
        t0 = time.perf_counter(); loss = step(i); times.append(time.perf_counter() - t0)
    cpu = (time.process_time() - c0) / steps     # CPU seconds per step, summed over this process's threads
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # the median step time: robust to the odd step that loses the CPU to another process
    dt = statistics.median(times)
    return {'impl': impl, 'tok_s': SHAPE['batch'] * SHAPE['n_ctx'] / dt, 'ms_step': 1000 * dt,
            'tok_s_mean': steps * SHAPE['batch'] * SHAPE['n_ctx'] / sum(times), 'cpu_ms_step': 1000 * cpu,
            'peak_rss_mb': rss1 / 1024, 'rss_above_imports_mb': (rss1 - rss0) / 1024, 'loss': loss,
            'n_params': sum(p.numel() for p in params)}

# ---------------------------------------------------------------------------------------------------- the driver
def _run_worker(impl, a) -> dict:
    env = {**os.environ, 'OMP_NUM_THREADS': str(a.threads), 'MKL_NUM_THREADS': str(a.threads)}
    r = subprocess.run([sys.executable, __file__, '--worker', impl, '--threads', str(a.threads), '--warmup', str(a.warmup),
                        '--steps', str(a.steps)], capture_output=True, text=True, env=env)
    if r.returncode: raise RuntimeError(f"{impl} worker failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])

def _cpu_name() -> str:
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or 'unknown CPU'

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--threads', type=int, default=2, help="torch threads per process (default 2)")
    p.add_argument('--repeats', type=int, default=5, help="interleaved rounds; the median is reported (default 5)")
    p.add_argument('--steps', type=int, default=20, help="timed steps per measurement (default 20)")
    p.add_argument('--warmup', type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument('--impls', default=','.join(IMPLS), help="comma-separated subset of ours,tl,plain")
    p.add_argument('--json', metavar='PATH', help="also write all measurements here")
    p.add_argument('--worker', choices=IMPLS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.threads, a.warmup, a.steps))); return

    impls = [i for i in a.impls.split(',') if i]
    if 'tl' in impls and importlib.util.find_spec('transformer_lens') is None:
        print("TransformerLens is not installed, so it is skipped; to include it:\n"
              "    pip install 'transformer-lens>=3.9,<4'    (or: pip install -e '.[tl]')\n")
        impls.remove('tl')
    import torch
    versions = f"torch {torch.__version__}"
    if 'tl' in impls:
        import importlib.metadata as md; versions += f", transformer-lens {md.version('transformer-lens')}"
    load0 = os.getloadavg()
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}  {_cpu_name()}, {os.cpu_count()} cores, {versions}")
    print(f"shape {SHAPE}, {a.threads} thread(s)/process, {a.warmup} warm-up + {a.steps} timed steps, "
          f"{a.repeats} interleaved rounds; load average at start {load0[0]:.2f}")
    res = {i: [] for i in impls}
    for r in range(a.repeats):
        order = impls[r % len(impls):] + impls[:r % len(impls)]          # rotate who goes first
        for impl in order:
            m = _run_worker(impl, a); res[impl].append(m)
        print(f"  round {r+1}: " + ', '.join(f"{i} {res[i][-1]['tok_s']:,.0f}" for i in impls) + " tok/s", flush=True)
    med = {i: statistics.median(m['tok_s'] for m in res[i]) for i in impls}
    print(f"\n{'impl':<7}{'median tok/s':>13}{'ms/step':>9}{'CPU ms/step':>12}{'min..max tok/s':>22}{'peak RSS MB':>13}{'above imports':>15}{'params':>9}")
    for i in impls:
        ts = [m['tok_s'] for m in res[i]]
        print(f"{i:<7}{med[i]:>13,.0f}{statistics.median(m['ms_step'] for m in res[i]):>9.1f}"
              f"{statistics.median(m['cpu_ms_step'] for m in res[i]):>12.1f}{f'{min(ts):,.0f}..{max(ts):,.0f}':>22}{max(m['peak_rss_mb'] for m in res[i]):>13.0f}"
              f"{max(m['rss_above_imports_mb'] for m in res[i]):>15.0f}{res[i][0]['n_params']:>9,}")
    if 'ours' in med:
        for other in ('tl', 'plain'):
            if other in med:
                # per-round ratios too: each round's processes ran back to back under similar load
                rr = [o['tok_s'] / t['tok_s'] for o, t in zip(res['ours'], res[other])]
                print(f"ours/{other}: {med['ours'] / med[other]:.2f}x (ratio of medians; per-round ratios "
                      f"{min(rr):.2f}..{max(rr):.2f}, median {statistics.median(rr):.2f})")
    load1 = os.getloadavg()
    print(f"load average at end {load1[0]:.2f}. With other processes on the machine, absolute tok/s are depressed; "
          "compare the side-by-side ratios.")
    if a.json:
        with open(a.json, 'w') as f: json.dump({'shape': SHAPE, 'threads': a.threads, 'results': res, 'median_tok_s': med,
                                                'loadavg': [load0, load1], 'versions': versions}, f, indent=1)

if __name__ == '__main__': main()
