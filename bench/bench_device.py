"""Throughput of one optimizer step on a device: induction_nb's Transformer vs a plain PyTorch model of the same shape,
in fp32, bf16 autocast and compiled, plus the device checks. Writes JSON.

    python bench/bench_device.py                                   # the CPU: small shapes, 1 thread
    python bench/bench_device.py --device cuda                     # a GPU: the default and the paper-width shapes
    python bench/bench_device.py --out nbs/results/device/bench_cpu.json

A step is forward, cross-entropy, backward, grad-norm clip and AdamW on pre-generated random windows (data loading is
not timed). `plain` is a nanoGPT-style model of the same shape: one fused qkv projection, `scaled_dot_product_attention`,
Shortformer positions (queries and keys read LN(resid + pos), values LN(resid)), pre-LayerNorm without biases.
For each (shape, batch, precision, compile) both implementations run in interleaved rounds (`--repeats`; one round when
compiled, where compiling dominates the wall time), each round
`--warmup` untimed steps then `--steps` timed ones; the report gives the median step time over every timed step.
On CUDA it also records the peak GPU memory of each configuration.

The device checks build a small model on the CPU and a copy on the device, run the measures on both (inputs made on
the CPU, as the sweep makes them) and record the largest absolute difference per measure: on the CPU they are 0 by
construction; on a GPU they say how far the device's numbers are from the CPU's.
"""
from __future__ import annotations
import argparse, datetime, json, os, platform, statistics, sys, time
from pathlib import Path
import torch, torch.nn as nn, torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from induction_nb.model import ModelConfig, Transformer
from induction_nb.train import resolve_device, describe_device

# name: (n_layers, d_model, n_heads, n_ctx, batches)
SHAPES_CPU = {'default (2L, d128, ctx 512)': (2, 128, 4, 512, (16,)),
              'paper width, short (2L, d768, ctx 128)': (2, 768, 12, 128, (2,))}
SHAPES_GPU = {'default (2L, d128, ctx 512)': (2, 128, 4, 512, (16, 512)),
              'paper width (2L, d768, ctx 1024)': (2, 768, 12, 1024, (32,)),
              'paper width, long (2L, d768, ctx 8192)': (2, 768, 12, 8192, (8,))}

class PlainBlock(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.ln, self.qkv, self.proj, self.h = nn.LayerNorm(d, bias=False), nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False), h
    def forward(self, x, pos):
        B, T, C = x.shape
        w = self.qkv.weight                                                   # [3C, C]
        q, k = F.linear(self.ln(x + pos), w[:2 * C]).split(C, dim=2)          # Shortformer: q, k read LN(resid + pos)
        v = F.linear(self.ln(x), w[2 * C:])
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.proj(y.transpose(1, 2).reshape(B, T, C))

class Plain(nn.Module):
    def __init__(self, n_layers, d, h, n_ctx, vocab=256):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.zeros(n_ctx, d))
        self.blocks = nn.ModuleList(PlainBlock(d, h) for _ in range(n_layers))
        self.ln, self.unembed = nn.LayerNorm(d, bias=False), nn.Linear(d, vocab, bias=False)
        for p in self.parameters():
            if p.dim() >= 2: nn.init.normal_(p, std=0.02)
    def forward(self, tokens):
        x, pos = self.emb(tokens), self.pos[:tokens.shape[1]]
        for b in self.blocks: x = b(x, pos)
        return self.unembed(self.ln(x))

def build(impl, shape, device):
    n_layers, d, h, n_ctx, _ = shape
    torch.manual_seed(0)
    m = (Transformer(ModelConfig(n_layers=n_layers, d_model=d, n_heads=h, n_ctx=n_ctx, d_vocab=256, positional='shortformer'))
         if impl == 'ours' else Plain(n_layers, d, h, n_ctx))
    return m.to(device)

def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)

def time_steps(impl, shape, batch, precision, compiled, device, warmup, steps):
    "Step times (s) of `steps` timed steps after `warmup`, and the peak GPU memory (bytes, CUDA only)."
    model = build(impl, shape, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.05)
    fwd = torch.compile(model) if compiled else model
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (warmup + steps, batch, shape[3] + 1), generator=g).to(device)
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        sync(device); t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == 'bf16'):
            logits = fwd(x[i, :, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[i, :, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync(device)
        if i >= warmup: times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == 'cuda' else None
    return times, peak

def device_checks(device) -> list[dict]:
    "Largest |device − CPU| of each measure on a small trained-from-init model, inputs made on the CPU."
    from induction_nb import scores
    from induction_nb.model import per_token_loss
    from induction_nb.sweep import measure_inputs, measure_snapshot
    from induction_nb.data import CorpusSpec, make_corpus
    import numpy as np
    torch.manual_seed(0)
    cpu = Transformer(ModelConfig(n_layers=2, d_model=64, n_heads=4, n_ctx=128, d_vocab=128, positional='shortformer')).eval()
    dev = Transformer(cpu.cfg).to(device).eval()
    dev.load_state_dict(cpu.state_dict())
    corpus = make_corpus(CorpusSpec(kind='synthetic', d_vocab=128))
    inputs = measure_inputs(corpus, 128, n_icl=32, n_boot=50)
    w = inputs['icl']
    fns = {'logits': lambda m: m(w[:, :-1]),
           'per_token_loss': lambda m: per_token_loss(m, w, chunk=8),
           'prefix_matching_scores (CPU probe)': lambda m: scores.prefix_matching_scores(m, inputs['probe']),
           'previous_token_scores': lambda m: scores.previous_token_scores(m, inputs['prev']),
           'copying_scores': lambda m: scores.copying_scores(m, inputs['pool']),
           'ov_eigen_copying': lambda m: scores.ov_eigen_copying(m),
           'composition_scores K': lambda m: scores.composition_scores(m, 'K')}
    rows = []
    with torch.no_grad():
        for name, f in fns.items():
            try:
                a, b = f(cpu), f(dev)
                rows.append(dict(check=name, ok=True, device=str(b.device), max_abs_diff=float((a - b.cpu()).abs().nan_to_num().max())))
            except Exception as e: rows.append(dict(check=name, ok=False, error=f"{type(e).__name__}: {e}"[:300]))
        try:
            a, b = measure_snapshot(cpu, inputs), measure_snapshot(dev, inputs)
            diff = max(float(np.nanmax(np.abs(np.asarray(a[k], dtype=float) - np.asarray(b[k], dtype=float)))) for k in a)
            rows.append(dict(check='measure_snapshot (every registered measure)', ok=True, device=str(device), max_abs_diff=diff))
        except Exception as e: rows.append(dict(check='measure_snapshot (every registered measure)', ok=False, error=f"{type(e).__name__}: {e}"[:300]))
    return rows

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='auto')
    p.add_argument('--threads', type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--repeats', type=int, default=3, help="interleaved rounds of ours/plain")
    p.add_argument('--no-compile', action='store_true', help="skip the compiled configurations")
    p.add_argument('--shapes', nargs='+', default=None, metavar='TEXT',
                   help="only the shapes whose name contains one of these (e.g. 'default'); default: all")
    p.add_argument('--compile-shapes', nargs='+', default=None, metavar='TEXT',
                   help="compile only these shapes (name contains one of them; compiling takes ~half a minute each on a GPU); "
                        "default: all that run")
    p.add_argument('--batches', nargs='+', type=int, default=None, help="only these batch sizes (default: each shape's)")
    p.add_argument('--no-checks', action='store_true', help="skip the device checks")
    p.add_argument('--out', default=None, help="JSON file to write (default: print only)")
    a = p.parse_args(argv)
    pick = lambda name, keys: keys is None or any(k in name for k in keys)
    torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    print(f"device: {describe_device(device)}", flush=True)
    shapes = SHAPES_GPU if device.type == 'cuda' else SHAPES_CPU
    configs = [('fp32', False), ('bf16', False)] + ([] if a.no_compile else [('fp32', True), ('bf16', True)])
    rows = []
    for sname, shape in shapes.items():
        if not pick(sname, a.shapes): continue
        for batch in shape[4]:
            if a.batches and batch not in a.batches: continue
            for precision, compiled in configs:
                if compiled and not pick(sname, a.compile_shapes): continue
                times, peaks, errors = {'ours': [], 'plain': []}, {}, {}
                for r in range(1 if compiled else a.repeats):           # compiling takes a while: one round
                    for impl in (('ours', 'plain') if r % 2 == 0 else ('plain', 'ours')):
                        if impl in errors: continue
                        try:
                            t, peak = time_steps(impl, shape, batch, precision, compiled, device, a.warmup, a.steps)
                            times[impl] += t; peaks[impl] = peak
                        except Exception as e: errors[impl] = f"{type(e).__name__}: {e}"[:200]
                tok = batch * shape[3]
                row = dict(shape=sname, batch=batch, precision=precision, compiled=compiled)
                for impl in ('ours', 'plain'):
                    if times[impl]:
                        ms = statistics.median(times[impl]) * 1e3
                        row |= {f'{impl}_ms_per_step': ms, f'{impl}_tok_per_s': tok / ms * 1e3}
                        if peaks.get(impl) is not None: row[f'{impl}_peak_gpu_mb'] = peaks[impl] / 2**20
                    else: row[f'{impl}_error'] = errors.get(impl)
                rows.append(row)
                print(json.dumps(row), flush=True)
    checks = [] if a.no_checks else device_checks(device)
    for c in checks: print(json.dumps(c), flush=True)
    out = dict(date=datetime.date.today().isoformat(), device=describe_device(device), torch=torch.__version__,
               machine=f"{platform.machine()} {_cpu_name()}, {os.cpu_count()} cores" if device.type != 'cuda' else torch.cuda.get_device_name(device),
               threads=a.threads, steps=a.steps, warmup=a.warmup, repeats=a.repeats,
               load_average=os.getloadavg()[0] if hasattr(os, 'getloadavg') else None, rows=rows, checks=checks)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1))
        print(f"wrote {a.out}")
    return out

def _cpu_name() -> str:
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or 'CPU'

if __name__ == '__main__': main()
