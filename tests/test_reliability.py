"""Nothing lost, nothing misreported (issue 11): kills at chosen writes, damaged files, bad input, two writers.

Every run here is tiny (a 20-step synthetic model, one torch thread), so each test takes seconds.
"""
import contextlib, io, json, math, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest, torch
import induction_nb.train as T
from induction_nb.train import preset, train, load_run, load_tensors, CorruptFileError, RunConfig, TrainConfig

torch.set_num_threads(1)
CFG = preset('synthetic-2l', model=dict(n_ctx=32), train=dict(steps=20, checkpoint_every=10, val_windows=8,
                                                              snapshots_log=3, snapshots_lin=4))
TEXT_CFG = preset('stdlib-1l', model=dict(n_ctx=16, d_model=32), train=dict(steps=20, checkpoint_every=10, val_windows=4,
                                                                             batch_size=4, snapshots_log=2, snapshots_lin=2))
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONHASHSEED': '0', 'PYTHONPATH': str(Path(T.__file__).parent.parent)}

def _train(cfg, d, **kw): return train(cfg, d, progress=False, n_threads=1, **kw)
def _rows(d): return [json.loads(l) for l in (Path(d)/'metrics.jsonl').read_text().splitlines()]
def _keyrows(d, key): return [(r['step'], r[key]) for r in _rows(d) if key in r]
def _state_step(d): return load_tensors(Path(d)/'state.safetensors')[1]['step']
def _same_weights(a, b): return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()

@pytest.fixture(scope='module')
def ref(tmp_path_factory):
    "An uninterrupted run of CFG: what every repaired or resumed run must equal."
    d = tmp_path_factory.mktemp('ref')/'run'
    _train(CFG, d)
    return d

def _copy(src, tmp_path, name='copy'):
    d = tmp_path/name; shutil.copytree(src, d); (d/'.lock').unlink(missing_ok=True); return d

def _main(argv):
    "`(exit status, stderr)` of the CLI."
    from induction_nb.cli import main
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out): rc = main([str(a) for a in argv])
    return rc, err.getvalue(), out.getvalue()

def _one_line_error(err):
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in err, err
    return lines[0]

def _text_dir(tmp_path, n_files=6, size=400):
    d = tmp_path/'corpus'; d.mkdir()
    for i in range(n_files): (d/f'doc{i}.txt').write_text(''.join(f"line {i} {j} of the text\n" for j in range(size // 20)))
    return d

# ---------------------------------------------------------------- 1. --overwrite deletes only a run
def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path):
    proj = tmp_path/'project'; (proj/'src').mkdir(parents=True)
    (proj/'config.json').write_text('{"name": "my project"}'); (proj/'src'/'main.py').write_text('print(1)\n')
    with pytest.raises(CorruptFileError, match=r"not an induction_nb run's config"):
        _train(CFG, proj, overwrite=True)
    assert (proj/'src'/'main.py').read_text() == 'print(1)\n' and json.loads((proj/'config.json').read_text())['name']
    assert not (proj/'snapshots').exists()

def test_overwrite_removes_only_what_training_wrote(ref, tmp_path):
    d = _copy(ref, tmp_path)
    (d/'notes.txt').write_text('mine'); (d/'snapshots'/'README').write_text('also mine')
    _train(CFG.replace(train=dict(lr=5e-4)), d, overwrite=True)
    assert (d/'notes.txt').read_text() == 'mine' and (d/'snapshots'/'README').read_text() == 'also mine'
    assert load_run(d).config.train.lr == 5e-4 and load_run(d).done

def test_text_paths_are_stored_resolved(tmp_path, monkeypatch):
    corpus = _text_dir(tmp_path)
    monkeypatch.chdir(tmp_path)
    rel = TEXT_CFG.replace(corpus=dict(kind='text', paths=('corpus',)))
    _train(rel, tmp_path/'run')
    assert load_run(tmp_path/'run').config.corpus.paths == (str(corpus.resolve()),)
    absolute = TEXT_CFG.replace(corpus=dict(kind='text', paths=(str(corpus.resolve()) + '/',)))
    assert _train(absolute, tmp_path/'run').done           # the same run, not "a different config"

# ---------------------------------------------------------------- 2. killed between the final snapshot and its val row
KILL_AT_WRITE = """
import json, os, signal, sys
import induction_nb.train as T
cfg, target = T.RunConfig.from_dict(json.loads(sys.argv[1])), sys.argv[3]
save = T.save_tensors
def save_then_die(path, *a, **k):
    save(path, *a, **k)
    if os.path.basename(str(path)) == target: os.kill(os.getpid(), signal.SIGKILL)
T.save_tensors = save_then_die
T.train(cfg, sys.argv[2], n_threads=1, progress=False)
"""

def _kill_at_write(cfg, d, target):
    r = subprocess.run([sys.executable, '-c', KILL_AT_WRITE, json.dumps(cfg.to_dict()), str(d), target], env=ENV, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.returncode       # it really died at that write

def test_kill_after_final_snapshot_before_its_val_row(ref, tmp_path):
    d = tmp_path/'run'
    _kill_at_write(CFG, d, f'step_{CFG.train.steps:06d}.safetensors')
    assert _state_step(d) == CFG.train.steps and CFG.train.steps not in [s for s, _ in _keyrows(d, 'val_loss')]
    _train(CFG, d)                                          # the rerun repairs the log
    assert _keyrows(d, 'val_loss') == _keyrows(ref, 'val_loss') and _keyrows(d, 'train_loss') == _keyrows(ref, 'train_loss')

def test_cli_reports_the_final_steps_val_loss(ref, tmp_path, monkeypatch):
    "The CLI's 'final validation loss' is the last step's, recomputed if its row was lost, never an earlier step's."
    import induction_nb.cli as cli
    d = _copy(ref, tmp_path)
    rows = _rows(d); final = [r for r in rows if r['step'] == CFG.train.steps and 'val_loss' in r][0]
    (d/'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows if r is not final))
    monkeypatch.setattr(cli, '_config_from_args', lambda args: CFG)
    rc, err, out = _main(['train', '--preset', 'synthetic-2l', '--out', d, '--no-progress', '--threads', 1])
    assert rc == 0, err
    assert f"final validation loss {final['val_loss']:.4f}" in out, out

# ---------------------------------------------------------------- 3. divergence
@pytest.mark.parametrize('field,value', [('lr', math.inf), ('lr', math.nan), ('weight_decay', math.inf), ('grad_clip', math.nan)])
def test_non_finite_hyperparameters_are_refused(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}: must be a finite number"): TrainConfig(**{field: value})

def test_cli_lr_inf_is_one_line(tmp_path):
    rc, err, _ = _main(['train', '--preset', 'synthetic-2l', '--out', tmp_path/'x', '--lr', 'inf', '--no-progress'])
    assert rc == 1 and 'lr' in _one_line_error(err) and not (tmp_path/'x').exists()

def test_divergence_stops_with_an_error(tmp_path):
    cfg = CFG.replace(train=dict(lr=1e30, warmup_steps=0))
    with pytest.raises(T.TrainingDiverged, match="diverged"): _train(cfg, tmp_path/'run')
    assert not load_run(tmp_path/'run').done

def test_divergence_keeps_the_last_good_state(tmp_path, monkeypatch):
    "Weights turned to NaN during step 15 (fault injection): the error names the state file, which still holds step 10."
    step = T._step
    def poisoned(model, *a):
        if a[4] == 14:
            with torch.no_grad(): next(model.parameters()).fill_(math.nan)
        return step(model, *a)
    monkeypatch.setattr(T, '_step', poisoned)
    with pytest.raises(T.TrainingDiverged, match=r"state.safetensors keeps the last good state \(step 10\)"):
        _train(CFG, tmp_path/'run')
    tensors, meta = load_tensors(tmp_path/'run'/'state.safetensors')
    assert meta['step'] == 10 and all(bool(torch.isfinite(t).all()) for t in tensors.values())

# ---------------------------------------------------------------- 4. corpus checked on resume
class Crash(Exception): pass
def _crash_at(n):
    def f(step, loss):
        if step == n: raise Crash()
    return f

def test_edited_corpus_is_refused_on_resume(tmp_path):
    corpus = _text_dir(tmp_path)
    cfg = TEXT_CFG.replace(corpus=dict(kind='text', paths=(str(corpus),)))
    with pytest.raises(Crash): _train(cfg, tmp_path/'run', on_step=_crash_at(15))
    (corpus/'doc0.txt').write_text('edited between the crash and the rerun\n' * 20)
    with pytest.raises(T.CorpusChangedError, match=r"not the data it was trained on.*sha256.*allow_corpus_change"):
        _train(cfg, tmp_path/'run')
    assert _state_step(tmp_path/'run') == 10                 # untouched
    with pytest.warns(UserWarning, match="differs from the one it was trained on"): load_run(tmp_path/'run').corpus()
    run = _train(cfg, tmp_path/'run', allow_corpus_change=True)     # the explicit override
    assert run.done and len(run.info['corpus_history']) == 1 and run.info['corpus_description'] != run.info['corpus_history'][0]

def test_cli_edited_corpus_is_one_line(tmp_path, monkeypatch):
    corpus = _text_dir(tmp_path)
    import induction_nb.cli as cli
    cfg = TEXT_CFG.replace(corpus=dict(kind='text', paths=(str(corpus),)))
    with pytest.raises(Crash): _train(cfg, tmp_path/'run', on_step=_crash_at(15))
    (corpus/'doc1.txt').write_text('changed\n' * 30)
    monkeypatch.setattr(cli, '_config_from_args', lambda args: cfg)
    rc, err, _ = _main(['train', '--preset', 'stdlib-1l', '--text', corpus, '--out', tmp_path/'run', '--no-progress'])
    assert rc == 1 and '--allow-corpus-change' in _one_line_error(err)

# ---------------------------------------------------------------- 5. damaged metrics.jsonl
def test_damaged_metrics_line_is_named_and_rebuilt(ref, tmp_path):
    d = _copy(ref, tmp_path)
    lines = (d/'metrics.jsonl').read_text().splitlines(True)
    assert 'val_loss' in json.loads(lines[2]) and 'train_loss' in json.loads(lines[4])
    lines[2], lines[4] = '{"step": 1\x00garbage\n', 'not json\n'      # a validation row and a train row destroyed
    (d/'metrics.jsonl').write_text(''.join(lines))
    with pytest.raises(CorruptFileError, match=r"metrics.jsonl is damaged: line\(s\) \[3, 5\]"): load_run(d).metrics()
    _train(CFG, d)                                               # rebuilds it: the lost row is recomputed
    assert _keyrows(d, 'train_loss') == _keyrows(ref, 'train_loss') and _keyrows(d, 'val_loss') == _keyrows(ref, 'val_loss')
    load_run(d).metrics()

def test_torn_last_line_is_not_an_error(ref, tmp_path):
    d = _copy(ref, tmp_path)
    with open(d/'metrics.jsonl', 'a') as f: f.write('{"step": 30, "train_lo')
    assert len(load_run(d).metrics()) == len(_rows(ref))

# ---------------------------------------------------------------- 6. a deleted snapshot is rewritten
def test_deleted_middle_snapshot_is_rewritten(ref, tmp_path):
    d = _copy(ref, tmp_path)
    run = load_run(d); mid = run.steps[len(run.steps) // 2]
    assert 0 < mid < CFG.train.steps
    path = run.snapshot_path(mid); raw = bytearray(path.read_bytes()); raw[-50] ^= 0xFF; path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="re-run the training command"): run.load(mid)
    path.unlink()                                                # as the error says
    _train(CFG, d)
    assert load_run(d).steps == load_run(ref).steps
    assert _same_weights(load_run(d).load(mid).state_dict(), load_run(ref).load(mid).state_dict())
    assert _keyrows(d, 'val_loss') == _keyrows(ref, 'val_loss')

def test_deleted_final_snapshot_is_rewritten_from_the_state(ref, tmp_path):
    d = _copy(ref, tmp_path)
    load_run(d).snapshot_path(CFG.train.steps).unlink()
    _train(CFG, d)
    assert _same_weights(load_run(d).latest().state_dict(), load_run(ref).latest().state_dict())
    assert _keyrows(d, 'val_loss') == _keyrows(ref, 'val_loss')

# ---------------------------------------------------------------- 7. the CLI: one line, naming the file or argument
def _cli_train(out, *extra, preset='synthetic-2l'):
    return _main(['train', '--preset', preset, '--out', out, '--steps', 20, '--no-progress', '--threads', 1, *extra])

def test_cli_binary_text_file(tmp_path):
    d = _text_dir(tmp_path); (d/'blob.bin').write_bytes(bytes(range(256)) * 8)
    rc, err, _ = _cli_train(tmp_path/'run', '--text', d, preset='stdlib-1l')
    assert rc == 1 and 'blob.bin is not UTF-8 text' in _one_line_error(err)

def test_cli_offline_hf_dataset(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'induction_nb.cli', 'train', '--preset', 'stdlib-1l', '--hf-dataset',
                        'no-such-user/no-such-dataset', '--out', str(tmp_path/'run'), '--no-progress'],
                       env={**ENV, 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1'}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and 'no-such-user/no-such-dataset' in _one_line_error(r.stderr)

def test_cli_unwritable_out(tmp_path):
    rc, err, _ = _cli_train('/sys/induction_nb_test_run')
    assert rc == 1 and '/sys/induction_nb_test_run' in _one_line_error(err)

def test_cli_out_is_a_file_or_under_one(tmp_path):
    (tmp_path/'f').write_text('x')
    for out in (tmp_path/'f', tmp_path/'f'/'run'):
        rc, err, _ = _cli_train(out)
        assert rc == 1 and str(tmp_path/'f') in _one_line_error(err)
    assert (tmp_path/'f').read_text() == 'x'

def test_cli_corrupt_state(ref, tmp_path, monkeypatch):
    import induction_nb.cli as cli
    monkeypatch.setattr(cli, '_config_from_args', lambda args: CFG)
    d = _copy(ref, tmp_path); (d/'state.safetensors').write_bytes(b'\x00' * 100)
    rc, err, _ = _cli_train(d)
    assert rc == 1 and 'state.safetensors' in _one_line_error(err)

@pytest.mark.parametrize('text', ['[1, 2]', '{"config": 3}', '"run"', '{not json'])
def test_cli_config_json_not_an_object(tmp_path, text):
    (tmp_path/'run').mkdir(); (tmp_path/'run'/'config.json').write_text(text)
    rc, err, _ = _cli_train(tmp_path/'run')
    assert rc == 1 and 'config.json' in _one_line_error(err)
    with pytest.raises(CorruptFileError, match='config.json'): load_run(tmp_path/'run')

@pytest.mark.parametrize('n', [-1, 0])
def test_cli_threads_must_be_positive(tmp_path, n):
    rc, err, _ = _main(['train', '--preset', 'synthetic-2l', '--out', tmp_path/'run', '--threads', n, '--no-progress'])
    assert rc == 1 and '--threads' in _one_line_error(err) and not (tmp_path/'run').exists()

def test_damaged_measures_cache_is_named_and_recomputed(ref, tmp_path):
    from induction_nb.sweep import sweep
    d = _copy(ref, tmp_path)
    a = sweep(load_run(d), measures=['previous_token'], steps=[CFG.train.steps], progress=False, n_prev=4)
    f, = (d/'measures').rglob('step_*.npz')
    f.write_bytes(f.read_bytes()[:40])
    with pytest.warns(UserWarning, match=f"measures-cache file {f} is damaged"):
        b = sweep(load_run(d), measures=['previous_token'], steps=[CFG.train.steps], progress=False, n_prev=4)
    assert a.equals(b) and b.attrs['computed'] == 1

# ---------------------------------------------------------------- 8. Ctrl-C
def test_ctrl_c_saves_the_current_step_and_resumes_exactly(ref, tmp_path, capfd):
    def ctrl_c_after_13(step, loss):
        if step == 13: os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="saved at step 13"): _train(CFG, tmp_path/'run', on_step=ctrl_c_after_13)
    assert _state_step(tmp_path/'run') == 13                  # not the step-10 checkpoint: nothing lost
    capfd.readouterr()
    run = _train(CFG, tmp_path/'run')
    assert 'resuming from step 13' in capfd.readouterr().err
    assert _keyrows(run.path, 'train_loss') == _keyrows(ref, 'train_loss') and _keyrows(run.path, 'val_loss') == _keyrows(ref, 'val_loss')
    assert _same_weights(run.latest().state_dict(), load_run(ref).latest().state_dict())

def test_cli_ctrl_c_is_one_line(tmp_path):
    out = tmp_path/'run'
    p = subprocess.Popen([sys.executable, '-m', 'induction_nb.cli', 'train', '--preset', 'synthetic-2l', '--out', str(out),
                          '--steps', '100000', '--threads', '1', '--no-progress'], env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out/'metrics.jsonl').exists() or '"train_loss"' not in (out/'metrics.jsonl').read_text():
            assert p.poll() is None and time.time() < deadline      # wait for the first train-loss row (step 10)
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 130, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith('interrupted:') and 'Traceback' not in err, err
    step = _state_step(out)
    assert f"saved at step {step}" in lines[0] and step >= 10, (step, lines)    # the current step, not a checkpoint's (100)

# ---------------------------------------------------------------- 9. two writers
HOLD = """
import json, sys, time
from induction_nb.train import train, RunConfig
train(RunConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], n_threads=1, progress=False,
      on_step=lambda step, loss: time.sleep(0.05))
"""

def test_second_writer_is_refused_and_a_dead_ones_lock_does_not_block(ref, tmp_path):
    cfg = CFG.replace(train=dict(steps=10_000, checkpoint_every=1000))
    d = tmp_path/'run'
    p = subprocess.Popen([sys.executable, '-c', HOLD, json.dumps(cfg.to_dict()), str(d)], env=ENV)
    try:
        deadline = time.time() + 120
        while not (d/'metrics.jsonl').exists():
            assert p.poll() is None and time.time() < deadline
            time.sleep(0.05)
        before = (d/'metrics.jsonl').read_bytes()
        with pytest.raises(T.RunLockedError, match=f"process {p.pid} is training into it"):
            _train(cfg, d, on_step=_crash_at(1))                   # (without a lock it would write, then stop at step 1)
        assert (d/'metrics.jsonl').read_bytes().startswith(before)   # the second process wrote nothing
    finally:
        p.kill(); p.wait()                                         # kill -9: its lock file stays behind
    assert (d/'.lock').read_text().strip() == str(p.pid)
    with pytest.raises(Crash): _train(cfg, d, on_step=_crash_at(3))   # ... and does not block the next run

# ---------------------------------------------------------------- 10. runs from another version
def test_missing_field_takes_its_default(ref, tmp_path):
    d = _copy(ref, tmp_path)
    info = json.loads((d/'config.json').read_text()); del info['config']['model']['positional']
    (d/'config.json').write_text(json.dumps(info))                 # as written before `positional` existed
    assert load_run(d).config.model.positional == 'standard'
    assert _train(CFG, d).done                                     # the same run: no "different config"

def test_unknown_field_is_named(ref, tmp_path):
    d = _copy(ref, tmp_path)
    info = json.loads((d/'config.json').read_text()); info['config']['model']['rotary_base'] = 10000
    info['versions']['induction_nb'] = '9.9.9'
    (d/'config.json').write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"config.json cannot be read by induction_nb .* written by induction_nb 9.9.9.*rotary_base"):
        _train(CFG, d)
    with pytest.raises(ValueError, match="rotary_base"): load_run(d)

def test_config_records_versions(ref):
    v = load_run(ref).info['versions']
    assert set(v) >= {'induction_nb', 'torch', 'python'}

# ---------------------------------------------------------------- 12. a context longer than the corpus
def test_context_longer_than_corpus_is_refused_before_creating_the_run(tmp_path):
    corpus = tmp_path/'tiny'; corpus.mkdir()
    for i in range(3): (corpus/f'{i}.txt').write_text('a short document\n' * 3)
    cfg = TEXT_CFG.replace(model=dict(n_ctx=512), corpus=dict(kind='text', paths=(str(corpus),)))
    with pytest.raises(ValueError, match="fewer than n_ctx=512"): _train(cfg, tmp_path/'run')
    assert not (tmp_path/'run').exists()

# ---------------------------------------------------------------- 11. the probe token pool on a small corpus
def test_small_corpus_token_pool_error_says_which_min_count():
    import re
    from induction_nb.data import TextCorpus
    from induction_nb.sweep import measure_inputs
    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(b'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:()', dtype=np.uint8)
    p = 1 / np.arange(1, len(alphabet) + 1) ** 1.3; p /= p.sum()                  # Zipf-like: few frequent bytes
    docs = [rng.choice(alphabet, 13_650, p=p).tobytes() for _ in range(20)]        # ~273 KB, like the corpus
    corpus = TextCorpus.from_documents(docs)
    with pytest.raises(ValueError, match=r"min_count=1000 .* Lower min_count: min_count=\d+") as e:
        measure_inputs(corpus, 32, n_icl=4)
    k = int(re.search(r"Lower min_count: min_count=(\d+)", str(e.value)).group(1))
    assert 1 <= k < 1000 and len(measure_inputs(corpus, 32, n_icl=4, min_count=k)['pool']) >= 25     # the advice works
