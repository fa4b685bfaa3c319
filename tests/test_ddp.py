"""`train()` under `torchrun --nproc_per_node 2` (gloo, CPU) matches one process with the same global batch.

Tolerances: DDP averages the two ranks' gradients (and the logged loss is the mean of the two ranks' means),
which sums floats in a different order than one process does, so results agree to rounding, not bitwise:
train loss within 1e-5 relative, validation loss within 1e-4 relative, final weights within 1e-4 absolute
(weights are ~0.02 in size; training moves them by ~1e-2).
"""
import json, os, re, socket, subprocess, sys, warnings
from pathlib import Path
import pytest
from induction_nb.train import preset, load_run

CFG = preset('synthetic-2l', model=dict(n_ctx=32), train=dict(steps=40, checkpoint_every=20, val_windows=16,
                                                               snapshots_log=3, snapshots_lin=3))
SCRIPT = """
import faulthandler, json, sys
faulthandler.enable()       # a rank killed by a signal prints where Python was
import torch
if hasattr(torch._C, '_set_print_stack_traces_on_fatal_signal'): torch._C._set_print_stack_traces_on_fatal_signal(True)
from induction_nb.train import train, RunConfig
train(RunConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], n_threads=1, progress=False)
# train() has written everything and destroyed the process group; what follows is interpreter teardown, which this
# test is not about (a gloo abort seen once in CI may live there), so the rank leaves at once
print('rank finished', flush=True); sys.stderr.flush()
import os; os._exit(0)
"""
# one host: gloo talks over loopback whatever the machine's hostname resolves to
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'GLOO_SOCKET_IFNAME': 'lo'}

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _torchrun(script, cfg, run_dir, nproc=2, timeout=180):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc_per_node', str(nproc),
           '--master_addr', '127.0.0.1', '--master_port', str(_free_port()),
           str(script), json.dumps(cfg.to_dict()), str(run_dir)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)

def _killed_by_signal(r) -> bool:
    "Did a rank die from a signal of its own (torchrun: `exitcode : -N`), not from a Python exception or torchrun's SIGTERM?"
    return r.returncode != 0 and re.search(r'exitcode\s*:\s*-(?!15\b)\d+', r.stderr) is not None

def _rows(run_dir, key):
    return [(r['step'], r[key]) for r in map(json.loads, (Path(run_dir)/'metrics.jsonl').read_text().splitlines()) if key in r]

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "The same config trained by 2 DDP ranks and by one process."
    tmp = tmp_path_factory.mktemp('ddp'); script = tmp/'train_script.py'; script.write_text(SCRIPT)
    r = _torchrun(script, CFG, tmp/'ddp')
    if _killed_by_signal(r):
        # Seen once in CI (never here, in 40+ launches): a rank aborted inside gloo ("terminate called without an
        # active exception"). Relaunch once -- the run resumes from its checkpoint -- and say so; twice fails.
        warnings.warn(f"DDP rank killed by a signal; relaunching once. First launch printed:\n{r.stdout[-2000:]}{r.stderr[:6000]}")
        r = _torchrun(script, CFG, tmp/'ddp')
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[:8000]
    subprocess.run([sys.executable, str(script), json.dumps(CFG.to_dict()), str(tmp/'one')], check=True, timeout=180, env=ENV)
    return script, tmp/'ddp', tmp/'one'

def test_ddp_matches_single_process(runs):
    _, ddp_dir, one_dir = runs
    for key, rtol in (('train_loss', 1e-5), ('val_loss', 1e-4)):
        a, b = _rows(ddp_dir, key), _rows(one_dir, key)
        assert [s for s, _ in a] == [s for s, _ in b] and len(a) > 2
        for (s, x), (_, y) in zip(a, b): assert abs(x - y) <= rtol * abs(y), (key, s, x, y)
    d, o = load_run(ddp_dir), load_run(one_dir)
    assert d.done and d.steps == o.steps
    sd, so, s0 = d.latest().state_dict(), o.latest().state_dict(), d.load(0).state_dict()
    worst = max((sd[k] - so[k]).abs().max().item() for k in sd)
    moved = max((so[k] - s0[k]).abs().max().item() for k in so)
    print(f"max |w_ddp - w_single| = {worst:.2e}; training moved weights by up to {moved:.2e}")
    assert worst < 1e-4 and moved > 1e-3, (worst, moved)

def test_ddp_refused_config_fails_every_rank(runs):
    "A config clash found by rank 0 reaches rank 1 too: the launch fails at once instead of hanging."
    script, ddp_dir, _ = runs
    r = _torchrun(script, CFG.replace(train=dict(lr=5e-4)), ddp_dir, timeout=120)
    assert r.returncode != 0 and 'different config' in r.stderr + r.stdout
