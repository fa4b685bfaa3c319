"""Nothing lost, round two (issue 21): `site --out`, non-run folders, late argument errors, SIGTERM, extending a run,
byte-identical snapshots, permissions, caches, machine paths. One test (or more) per item of the issue, numbered as there.

Runs are tiny (a synthetic model of 20-50 steps, one torch thread); CLI cases marked "real CLI" run
`python -m induction_nb.cli` in a subprocess in a temporary folder.
"""
import contextlib, errno, filecmp, io, json, os, re, shutil, signal, subprocess, sys, time, warnings
from pathlib import Path
import numpy as np
import pytest, torch
import induction_nb.train as T
from induction_nb.train import preset, train, load_run, load_tensors, read_safetensors_header, TrainConfig

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
CFG = preset('synthetic-2l', model=dict(n_ctx=32), train=dict(steps=20, checkpoint_every=10, val_windows=8,
                                                              snapshots_log=3, snapshots_lin=4))
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONHASHSEED': '0', 'PYTHONPATH': str(ROOT)}

def _train(cfg, d, **kw): return train(cfg, d, progress=False, n_threads=1, **kw)
def _rows(d): return [json.loads(l) for l in (Path(d)/'metrics.jsonl').read_text().splitlines()]
def _keyrows(d, key): return [(r['step'], r[key]) for r in _rows(d) if key in r]
def _state_step(d): return load_tensors(Path(d)/'state.safetensors')[1]['step']
def _same_weights(a, b): return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
def _tree(d): return {str(p.relative_to(d)): p.read_bytes() for p in sorted(Path(d).rglob('*')) if p.is_file()}

def _main(argv):
    "`(exit status, stderr, stdout)` of the CLI, in this process."
    from induction_nb.cli import main
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out): rc = main([str(a) for a in argv])
    return rc, err.getvalue(), out.getvalue()

def _cli(*argv, cwd=None, timeout=300):
    "The real CLI in a subprocess: `CompletedProcess`."
    return subprocess.run([sys.executable, '-m', 'induction_nb.cli', *map(str, argv)], env=ENV, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)

def _one_line(err, start='error: '):
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith(start) and 'Traceback' not in err, err
    return lines[0]

@pytest.fixture(scope='module')
def ref(tmp_path_factory):
    d = tmp_path_factory.mktemp('ref')/'run'
    _train(CFG, d)
    return d

def _copy(src, tmp_path, name='copy'):
    d = tmp_path/name; shutil.copytree(src, d); (d/'.lock').unlink(missing_ok=True); return d

# ---------------------------------------------------------------- 1. `site --out` never wipes a folder it did not write
@pytest.mark.skipif(any(__import__('importlib').util.find_spec(m) is None for m in ('mkdocs', 'material')),
                    reason="mkdocs-material is not installed")
def test_site_out_writes_only_into_new_empty_or_its_own_folder(ref, tmp_path):
    "Real CLI for the refusal; all from outside the repository (item 4: --nbs from anywhere)."
    runs = tmp_path/'runs'; runs.mkdir(); shutil.copytree(ref, runs/'run'); (runs/'notes.txt').write_text('mine')
    before = _tree(runs)
    r = _cli('site', '--nbs', ROOT/'nbs', '--only', 'index', '--out', runs, cwd=tmp_path)
    assert r.returncode == 1 and 'not empty' in _one_line(r.stderr) and str(runs) in r.stderr
    assert _tree(runs) == before                                       # nothing deleted, nothing written
    site = tmp_path/'site'; site.mkdir()                               # an empty folder: built, and marked as ours
    here = Path.cwd(); os.chdir(tmp_path)                              # (in this process, to save a second start)
    try: rc, err, _ = _main(['site', '--nbs', ROOT/'nbs', '--only', 'index', '--out', 'site'])
    finally: os.chdir(here)
    assert rc == 0, err
    assert (site/'index.html').exists() and (site/'.induction_nb-site').exists()
    from induction_nb.site import build_site
    (site/'index.html').unlink()
    build_site(site, nbs=ROOT/'nbs', only=['index'], quiet=True)      # its own folder: rebuilt
    assert (site/'index.html').exists()

def test_site_outside_a_project_is_one_line(tmp_path, monkeypatch):
    "Item 4: no settings.ini around the current folder and no --nbs: one line, no configparser traceback."
    pytest.importorskip('mkdocs')
    monkeypatch.chdir(tmp_path)
    rc, err, _ = _main(['site', '--only', 'index', '--out', tmp_path/'s'])
    assert rc == 1 and 'not inside an nbdev project' in _one_line(err)
    rc, err, _ = _main(['site', '--nbs', tmp_path/'nowhere', '--out', tmp_path/'s'])
    assert rc == 1 and 'nowhere' in _one_line(err) and not (tmp_path/'s').exists()

# ---------------------------------------------------------------- 2. a folder that is not a run is never trained into
def test_train_refuses_a_folder_that_is_not_a_run(tmp_path):
    "Real CLI: a user's own metrics.jsonl and snapshots/ in a folder without config.json are left alone."
    d = tmp_path/'mine'; (d/'snapshots').mkdir(parents=True)
    (d/'metrics.jsonl').write_text('{"my": "numbers"}\n'); (d/'snapshots'/'step_000000.safetensors').write_bytes(b'my weights')
    (d/'notes.txt').write_text('notes')
    before = _tree(d)
    r = _cli('train', '--preset', 'synthetic-2l', '--out', d, '--steps', 20, '--threads', 1, '--no-progress', cwd=tmp_path)
    line = _one_line(r.stderr)
    assert r.returncode == 1 and 'not a run directory' in line and 'metrics.jsonl' in line and 'new or empty folder' in line
    assert _tree(d) == before and not (d/'.lock').exists()

def test_train_accepts_an_empty_folder_or_one_holding_only_what_a_run_writes(tmp_path):
    (tmp_path/'empty').mkdir()
    assert _train(CFG, tmp_path/'empty').done
    d = tmp_path/'started'; (d/'snapshots').mkdir(parents=True)     # a run killed before it wrote config.json
    (d/'.lock').write_text('123\n'); (d/'config.json.abc123.tmp').write_text('{')
    assert _train(CFG, d).done and not list(d.glob('*.tmp'))

# ---------------------------------------------------------------- 3. every argument checked before any work
@pytest.mark.parametrize('argv,opt', [(['ablation', '--draws', '0'], '--draws'), (['ablation', '--draws', '-5'], '--draws'),
                                      (['ablation', '--threads', '0'], '--threads'), (['zoo', '--threads', '-1'], '--threads'),
                                      (['phase-change', '--seeds', '-1'], '--seeds'), (['phase-change', '--seeds-1l', '0', '-2'], '--seeds-1l'),
                                      (['train', '--preset', 'synthetic-2l', '--batch-size', '0'], '--batch-size')])
def test_bad_numbers_are_refused_before_any_work(tmp_path, argv, opt):
    rc, err, _ = _main([*argv, '--out', tmp_path/'out'])
    assert rc == 1 and opt in _one_line(err) and not (tmp_path/'out').exists()

def test_every_integer_option_has_a_range():
    "A new command's integer option must be given a range in the CLI's table, or it is never checked."
    import argparse
    from induction_nb.cli import build_parser, POSITIVE, NON_NEGATIVE
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    ints = {(name, a.dest) for name, p in sub.choices.items() for a in p._actions if a.type is int}
    assert ints and not [x for x in ints if x[1] not in POSITIVE | NON_NEGATIVE], ints

# ---------------------------------------------------------------- 5. a cache file of the wrong shape
def test_wrong_shaped_cache_is_named_and_recomputed(ref, tmp_path):
    from induction_nb.sweep import sweep
    d = _copy(ref, tmp_path)
    kw = dict(measures=['previous_token', 'icl'], steps=[CFG.train.steps], progress=False, n_prev=4, n_icl=8, n_boot=10)
    a = sweep(load_run(d), **kw)
    f, = (d/'measures').rglob('step_*.npz')
    rec = dict(np.load(f)); rec['head/previous_token'] = rec['head/previous_token'].ravel()      # loads, but [8] not [2, 4]
    np.savez(f, **rec)
    with pytest.warns(UserWarning, match=f"measures-cache file {f} is damaged.*head/previous_token has shape"):
        b = sweep(load_run(d), **kw)
    assert a.equals(b) and b.attrs['computed'] == 1

# ---------------------------------------------------------------- 6. SIGTERM, Ctrl-C during imports, a second Ctrl-C
def _start(out, steps=100_000):
    return subprocess.Popen([sys.executable, '-m', 'induction_nb.cli', 'train', '--preset', 'synthetic-2l', '--out', str(out),
                             '--steps', str(steps), '--threads', '1', '--no-progress'], env=ENV, stderr=subprocess.PIPE, text=True)

def _wait_for_training(p, out):
    deadline = time.time() + 120
    while not (out/'metrics.jsonl').exists() or '"train_loss"' not in (out/'metrics.jsonl').read_text():
        assert p.poll() is None and time.time() < deadline, p.poll()     # the first train-loss row (step 10)
        time.sleep(0.05)

def test_sigterm_saves_the_current_step_in_one_line_and_exits_143(tmp_path):
    "Real CLI, a real SIGTERM: the state is saved at the current step (not the step-100 checkpoint) and resumes."
    out = tmp_path/'run'
    p = _start(out)
    try:
        _wait_for_training(p, out)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 143, err
    line, step = _one_line(err, 'terminated: '), _state_step(out)
    assert f"saved at step {step}" in line and 10 <= step < 100, (step, line)
    class Stop(Exception): pass
    def stop(s, loss):
        if s == step + 2: raise Stop()
    with contextlib.redirect_stderr(io.StringIO()) as e, pytest.raises(Stop):    # the same run continues from there
        _train(load_run(out).config, out, on_step=stop)
    assert f"resuming from step {step}" in e.getvalue()

@pytest.mark.parametrize('sig,word', [(signal.SIGINT, 'interrupted'), (signal.SIGTERM, 'terminated')])
def test_signal_during_imports_is_one_line(tmp_path, sig, word):
    "Real CLI: importing torch takes seconds; Ctrl-C or SIGTERM then ends quietly (status 130 or 143, one line)."
    p = _start(tmp_path/'run')
    time.sleep(0.5)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, (p.returncode, err)
    assert _one_line(err, word)        # (on a machine that imports faster, training had begun: the same one line)

def test_second_ctrl_c_while_exiting_is_quiet(tmp_path):
    "Real CLI: Ctrl-C, and again as soon as the first one's message is out: one line, status 130."
    out = tmp_path/'run'
    p = _start(out)
    try:
        _wait_for_training(p, out)
        p.send_signal(signal.SIGINT)
        first = p.stderr.readline()
        p.send_signal(signal.SIGINT)
        rest = p.stderr.read(); p.wait(timeout=60)
    finally:
        if p.poll() is None: p.kill()
    err = first + rest
    assert p.returncode == 130, (p.returncode, err)
    assert 'saved at step' in _one_line(err, 'interrupted: ')

# ---------------------------------------------------------------- 7. extending a finished run
SHORT, LONG = CFG.replace(train=dict(steps=25)), CFG.replace(train=dict(steps=50))

@pytest.fixture(scope='module')
def straight(tmp_path_factory):
    "LONG trained in one go: what the extended run must equal wherever both have a snapshot."
    d = tmp_path_factory.mktemp('straight')/'run'
    _train(LONG, d)
    return d

def test_extend_a_finished_run(tmp_path, straight):
    d = tmp_path/'run'
    _train(SHORT, d)                        # 25 steps: not a multiple of log_every, so the last losses wait in the state
    before = _tree(d/'snapshots')
    rows_before = _rows(d)
    with pytest.raises(T.ConfigMismatchError, match="holds a run of 25 steps and you asked for 50.*extend=True"):
        _train(LONG, d)
    assert _tree(d/'snapshots') == before
    run = _train(LONG, d, extend=True)
    # the first part is untouched, byte for byte: snapshots and metric rows
    assert {k: v for k, v in _tree(d/'snapshots').items() if k in before} == before
    assert _rows(d)[:len(rows_before)] == rows_before
    # new snapshots on the longer schedule's tail; the metadata says what was extended, when and from which step
    assert run.steps == sorted({*SHORT.train.snapshot_steps(), *(s for s in LONG.train.snapshot_steps() if s > 25)})
    assert run.config.train.steps == 50 and run.config.train.extended_from == (25,)
    ext, = run.info['extensions']
    assert (ext['from_steps'], ext['to_steps'], ext['at_step']) == (25, 50, 25) and re.match(r'\d{4}-\d\d-\d\dT', ext['time'])
    # the same weights and losses as the run trained to 50 steps at once (the learning rate does not depend on `steps`)
    ref = load_run(straight)
    common = sorted(set(run.steps) & set(ref.steps))
    assert 25 in common and 50 in common
    for s in common: assert _same_weights(run.load(s).state_dict(), ref.load(s).state_dict()), s
    assert _keyrows(d, 'train_loss') == _keyrows(straight, 'train_loss')
    val = dict(_keyrows(straight, 'val_loss'))
    assert all(val[s] == v for s, v in _keyrows(d, 'val_loss') if s in val)
    # asked for by its plain config (or the same --extend again), the extended run is finished: nothing changes
    after = _tree(d)
    assert _train(LONG, d).done and _train(LONG, d, extend=True).done and _tree(d) == after

def test_interrupted_extension_resumes_and_cli_extend(tmp_path, straight, monkeypatch):
    "`--steps 50` alone is refused with a pointer to --extend; an extension killed midway resumes like any run."
    import induction_nb.cli as cli
    monkeypatch.setattr(cli, '_config_from_args', lambda args: CFG.replace(train=dict(steps=args.steps)))
    class Crash(Exception): pass
    def crash(step, loss):
        if step == 37: raise Crash()
    d, argv = tmp_path/'run', ['train', '--preset', 'synthetic-2l', '--out', tmp_path/'run', '--threads', 1, '--no-progress']
    assert _main([*argv, '--steps', 25])[0] == 0
    rc, err, _ = _main([*argv, '--steps', 50])
    assert rc == 1 and '--extend' in _one_line(err) and '--overwrite' not in err
    with pytest.raises(Crash): _train(LONG, d, extend=True, on_step=crash)     # killed at step 37: the state holds 30
    rc, err, _ = _main([*argv, '--steps', 50, '--extend'])                      # the same command again: resumes at 30
    assert rc == 0 and 'resuming from step 30' in err, err
    run = load_run(d)
    assert run.done and len(run.info['extensions']) == 1 and run.info['extensions'][0]['at_step'] == 25
    assert _same_weights(run.latest().state_dict(), load_run(straight).latest().state_dict())
    assert _keyrows(d, 'train_loss') == _keyrows(straight, 'train_loss')

def test_extend_an_unfinished_run_then_again(tmp_path, straight):
    "An interrupted run can be extended too (it continues from its state), and an extended run extended again."
    class Crash(Exception): pass
    def crash(step, loss):
        if step == 15: raise Crash()
    d = tmp_path/'run'
    with pytest.raises(Crash): _train(SHORT, d, on_step=crash)           # the state holds step 10
    run = _train(LONG, d, extend=True)
    assert run.info['extensions'][0]['at_step'] == 10 and run.config.train.extended_from == (25,)
    assert run.steps == sorted({*SHORT.train.snapshot_steps(), *(s for s in LONG.train.snapshot_steps() if s > 25)})
    assert _same_weights(run.latest().state_dict(), load_run(straight).latest().state_dict())
    run = _train(CFG.replace(train=dict(steps=60)), d, extend=True)
    assert run.done and run.config.train.extended_from == (25, 50) and len(run.info['extensions']) == 2
    sched = lambda n: set(CFG.replace(train=dict(steps=n)).train.snapshot_steps())
    assert run.steps == sorted(sched(25) | {s for s in sched(50) if s > 25} | {s for s in sched(60) if s > 50})

def test_extended_from_is_checked_and_unextended_configs_are_unchanged():
    assert 'extended_from' not in CFG.to_dict()['train']                   # every existing run's config.json still matches
    assert T.RunConfig.from_dict(LONG.replace(train=dict(extended_from=(25,))).to_dict()).train.extended_from == (25,)
    for bad in [(50,), (30, 25), (0,), (25, 25)]:
        with pytest.raises(ValueError, match="TrainConfig.extended_from"): TrainConfig(steps=50, extended_from=bad)

# ---------------------------------------------------------------- 8. commands without --overwrite do not suggest it
def test_zoo_different_config_does_not_suggest_overwrite(tmp_path, synthetic):
    from induction_nb.zoo import zoo_runs
    (dirname, cfg), = zoo_runs(['attn-1L']).values()
    _train(CFG, tmp_path/dirname)                                          # another config where the zoo's run goes
    rc, err, _ = _main(['zoo', '--models', 'attn-1L', '--out', tmp_path, '--threads', 1])
    line = _one_line(err)
    assert rc == 1 and 'different config' in line and '`induction_nb zoo` does not replace runs' in line
    assert '--overwrite' not in line

# ---------------------------------------------------------------- 9. a hand-edited config.json of this version
def test_edited_config_of_this_version_says_edited(ref, tmp_path):
    d = _copy(ref, tmp_path)
    info = json.loads((d/'config.json').read_text()); info['config']['train']['stepz'] = 3
    (d/'config.json').write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"stepz.*written by this version .* so it was edited since") as e: load_run(d)
    assert 'use the version that wrote it' not in str(e.value)

# ---------------------------------------------------------------- 10. a full disk names the file
def test_disk_full_names_the_file(tmp_path, monkeypatch):
    fsync = os.fsync
    def full(fd):
        if os.readlink(f'/proc/self/fd/{fd}').endswith('.tmp'): raise OSError(errno.ENOSPC, 'No space left on device')
        return fsync(fd)
    monkeypatch.setattr(os, 'fsync', full)
    rc, err, _ = _main(['train', '--preset', 'synthetic-2l', '--out', tmp_path/'run', '--steps', 20, '--threads', 1, '--no-progress'])
    line = _one_line(err)
    assert rc == 1 and str(tmp_path/'run'/'config.json') in line and 'No space left' in line and 'free some space' in line
    assert not list((tmp_path/'run').glob('*.tmp'))

# ---------------------------------------------------------------- 11. identical runs, identical bytes
SCRIPT = "import json, sys; from induction_nb.train import train, RunConfig; " \
         "train(RunConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], n_threads=1, progress=False)"

def test_identical_runs_write_identical_snapshots(tmp_path):
    "Two processes (different hash seeds, so a hash-ordered header would differ about half the time per file)."
    cfg = CFG.replace(train=dict(steps=10, snapshots_log=2, snapshots_lin=2))
    ps = [subprocess.Popen([sys.executable, '-c', SCRIPT, json.dumps(cfg.to_dict()), str(tmp_path/name)],
                           env={**ENV, 'PYTHONHASHSEED': seed}) for name, seed in (('a', '1'), ('b', '2'))]
    assert [p.wait(timeout=300) for p in ps] == [0, 0]
    files = sorted(p.name for p in (tmp_path/'a'/'snapshots').iterdir())
    assert files and files == sorted(p.name for p in (tmp_path/'b'/'snapshots').iterdir())
    for f in [*(f'snapshots/{n}' for n in files), 'state.safetensors']:
        assert filecmp.cmp(tmp_path/'a'/f, tmp_path/'b'/f, shallow=False), f
    raw = (tmp_path/'a'/'state.safetensors').read_bytes()
    n = int.from_bytes(raw[:8], 'little')
    head = raw[8:8 + n].rstrip(b' ')
    assert head == json.dumps(json.loads(head), sort_keys=True, separators=(',', ':')).encode()   # sorted, every time
    assert load_tensors(tmp_path/'a'/'state.safetensors')[1]['step'] == 10                          # and still readable

# ---------------------------------------------------------------- 12. run files respect the umask
@pytest.mark.parametrize('umask', [0o022, 0o077, 0o002])
def test_files_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try: _train(CFG.replace(train=dict(steps=10, snapshots_log=2, snapshots_lin=1)), tmp_path/'run')
    finally: os.umask(old)
    files = [p for p in (tmp_path/'run').rglob('*') if p.is_file() and p.name != '.lock']
    assert len(files) >= 4 and {p.stat().st_mode & 0o777 for p in files} == {0o666 & ~umask}, files

# ---------------------------------------------------------------- 13. stray temp files and stale caches
def test_stale_cache_temp_files_are_cleaned_and_overwrite_drops_the_cache(ref, tmp_path):
    from induction_nb.sweep import sweep
    d = _copy(ref, tmp_path)
    kw = dict(measures=['previous_token'], steps=[CFG.train.steps], progress=False, n_prev=4)
    sweep(load_run(d), **kw)
    folder, = (d/'measures').iterdir()
    old, new = folder/'step_000020-x.npz.abc.tmp', folder/'step_000020-x.npz.def.tmp'
    old.write_bytes(b'half'); new.write_bytes(b'half')
    os.utime(old, (time.time() - 3600,) * 2)                            # a sweep killed an hour ago
    sweep(load_run(d), **kw)
    assert not old.exists() and new.exists()                            # a live writer's file is left alone
    (d/'mine.txt').write_text('mine')
    run = _train(CFG.replace(train=dict(lr=5e-4)), d, overwrite=True)
    assert not (d/'measures').exists() and (d/'mine.txt').read_text() == 'mine' and run.done

# ---------------------------------------------------------------- 14. one line per cache warning
def test_cache_warning_is_one_line(ref, tmp_path):
    from induction_nb.sweep import sweep
    d = _copy(ref, tmp_path)
    kw = dict(measures=['previous_token'], steps=[CFG.train.steps], progress=False, n_prev=4)
    sweep(load_run(d), **kw)
    f, = (d/'measures').rglob('step_*.npz'); f.write_bytes(b'garbage')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        sweep(load_run(d), **kw)
    shown = [warnings.formatwarning(x.message, x.category, x.filename, x.lineno) for x in w]
    assert len(shown) == 1 and shown[0].count('\n') == 1 and str(f) in shown[0], shown

# ---------------------------------------------------------------- 15. no machine paths in result tables
def test_committed_tables_record_no_machine_path():
    files = sorted((ROOT/'nbs'/'results').rglob('*.json'))
    assert len(files) > 30
    bad = [str(p) for p in files if re.search(r'"(/work|/home|/root|/Users|/tmp)/', p.read_text())
           or '/' in str(json.loads(p.read_text()).get('run_dir', '') if isinstance(json.loads(p.read_text()), dict) else '')]
    assert not bad, bad

def test_saved_tables_name_the_run_relative_to_the_runs_folder(tmp_path, monkeypatch):
    from induction_nb.experiment import RunTables, load_or_compute_each
    src = next(p.parent for p in sorted((ROOT/'nbs'/'results'/'zoo').rglob('info.json')))
    t = RunTables.load(src)
    t.info['run_dir'] = str(tmp_path/'runs'/'somewhere'/'my-run')       # as computed in a session: the full path
    t.save(tmp_path/'saved')
    assert json.loads((tmp_path/'saved'/'info.json').read_text())['run_dir'] == 'my-run'
    back = RunTables.load(tmp_path/'saved')
    monkeypatch.setenv('INDUCTION_NB_RUNS', str(tmp_path/'runs'/'somewhere'))
    monkeypatch.setenv('INDUCTION_NB_RETRAIN', '1')
    _train(CFG, tmp_path/'runs'/'somewhere'/'my-run')
    got = load_or_compute_each(tmp_path/'res', [back], compute=lambda run, t: run.path, load=None, save=lambda r, p: None)
    assert got == {back.name: tmp_path/'runs'/'somewhere'/'my-run'}       # found under the runs folder
