"""Resume after `kill -9` reproduces an uninterrupted run exactly; damaged snapshots and clashing configs are refused.

Both runs are subprocesses with one torch thread each, so they do the same float operations in the same order.
"""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from induction_nb.train import preset, train, load_run, load_tensors, CorruptFileError, RunConfig

CFG = preset('synthetic-2l', model=dict(n_ctx=32), train=dict(steps=400, checkpoint_every=50, val_windows=16))
SCRIPT = """
import json, sys
from induction_nb.train import train, RunConfig
train(RunConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], n_threads=1, progress=False)
"""

def _cmd(run_dir): return [sys.executable, '-c', SCRIPT, json.dumps(CFG.to_dict()), str(run_dir)]
def _env(): return {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONHASHSEED': '0'}

def _rows(run_dir, key):
    return [(r['step'], r[key]) for r in map(json.loads, (Path(run_dir)/'metrics.jsonl').read_text().splitlines()) if key in r]

def _state_step(run_dir):
    try: return load_tensors(Path(run_dir)/'state.safetensors')[1]['step']
    except (FileNotFoundError, CorruptFileError): return -1

def test_kill9_then_resume_matches_uninterrupted(tmp_path):
    ref_dir, cut_dir = tmp_path/'ref', tmp_path/'cut'
    ref = subprocess.Popen(_cmd(ref_dir), env=_env())          # runs alongside the interrupted one
    cut = subprocess.Popen(_cmd(cut_dir), env=_env())
    try:
        deadline = time.time() + 120
        while _state_step(cut_dir) < 100:
            assert cut.poll() is None, f"training exited early (rc={cut.returncode})"
            assert time.time() < deadline, "no checkpoint at step >= 100 within 120 s"
            time.sleep(0.05)
        os.kill(cut.pid, signal.SIGKILL); cut.wait()
    finally:
        if cut.poll() is None: cut.kill()
    killed_at = _state_step(cut_dir)
    assert 100 <= killed_at < CFG.train.steps, killed_at     # really mid-run
    assert not load_run(cut_dir).done
    with open(cut_dir/'metrics.jsonl', 'a') as f:               # rows past the checkpoint + a torn last line, as a
        f.write(json.dumps({'step': 10**6, 'train_loss': 0.0}) + '\n{"step": 10000')   # crash mid-write leaves them
    subprocess.run(_cmd(cut_dir), env=_env(), check=True, timeout=300)   # the same command resumes
    assert ref.wait(timeout=300) == 0
    for key in ('train_loss', 'val_loss'):
        a, b = _rows(ref_dir, key), _rows(cut_dir, key)
        assert [s for s, _ in a] == [s for s, _ in b]          # no gaps, no duplicates
        assert a == b, f"{key} differs after resume from step {killed_at}"
    r, c = load_run(ref_dir), load_run(cut_dir)
    assert r.steps == c.steps and r.done and c.done
    for step in (killed_at, r.steps[-1]):
        sr, sc = r.load(step).state_dict(), c.load(step).state_dict()
        assert all(torch.equal(sr[k], sc[k]) for k in sr), step
    assert not list(cut_dir.rglob('*.tmp'))                     # the kill left no half-written file behind

@pytest.fixture(scope='module')
def small_run(tmp_path_factory):
    d = tmp_path_factory.mktemp('small')/'run'
    cfg = CFG.replace(train=dict(steps=20, checkpoint_every=10, snapshots_log=3, snapshots_lin=2))
    train(cfg, d, progress=False, n_threads=1)
    return cfg, d

@pytest.mark.parametrize('damage', ['truncate', 'flip_data', 'flip_header'])
def test_damaged_snapshot_names_the_file(small_run, tmp_path, damage):
    cfg, d = small_run
    import shutil; d2 = tmp_path/'copy'; shutil.copytree(d, d2)
    run = load_run(d2); step = run.steps[-1]
    path = d2/'snapshots'/f'step_{step:06d}.safetensors'
    raw = bytearray(path.read_bytes())
    if damage == 'truncate': raw = raw[:len(raw)//2]
    elif damage == 'flip_data': raw[-100] ^= 0xFF
    else: raw[20] ^= 0x01                                     # inside the JSON header
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match=str(path).replace('\\', '\\\\')): run.load(step)
    run.load(run.steps[0])                                      # the other snapshots are still fine

def test_different_config_in_same_dir_is_refused(small_run):
    cfg, d = small_run
    before = (d/'metrics.jsonl').read_bytes()
    with pytest.raises(FileExistsError, match=r"different config.*train.lr"):
        train(cfg.replace(train=dict(lr=5e-4)), d, progress=False, n_threads=1)
    assert (d/'metrics.jsonl').read_bytes() == before            # nothing was touched
    stamps = lambda: {p.name: p.stat().st_mtime_ns for p in [*d.glob('*'), *(d/'snapshots').glob('*')]}
    files = stamps(); train(cfg, d, progress=False, n_threads=1)                 # finished: a no-op, nothing rewritten
    assert stamps() == files and (d/'metrics.jsonl').read_bytes() == before

def test_resume_removes_half_written_temp_files(small_run, tmp_path):
    "A kill in the middle of `atomic_write` leaves `<name>.<random>.tmp`; the next `train()` into the directory clears it."
    cfg, d = small_run
    import shutil; d2 = tmp_path/'copy'; shutil.copytree(d, d2)
    left = [d2/'state.safetensors.k1x.tmp', d2/'snapshots'/'step_000015.safetensors.q9z.tmp']
    for p in left: p.write_bytes(b'half a file')
    snaps = sorted(p.name for p in (d2/'snapshots').glob('*.safetensors'))
    train(cfg, d2, progress=False, n_threads=1)
    assert not any(p.exists() for p in left)
    assert sorted(p.name for p in (d2/'snapshots').glob('*.safetensors')) == snaps    # the real files are untouched
