"""The GPU checks of one session, as one prepared script: what a lent GPU can show that the 2-core CPU cannot.

    python bench/gpu_checks.py --out OUT --budget 520          # on a machine with a CUDA GPU
    python bench/gpu_checks.py --out /tmp/gq --quick --device cpu   # a smoke test of this script (tiny runs, CPU)

Stages (each writes into OUT as soon as it is done; at `--budget` seconds unfinished jobs are stopped and what is done is
packed into OUT/results.tar.gz):
1. alone: the main job's code (`phase_change`: 2-layer + 1-layer control, fp32), timed from a fresh process;
   then `bench/bench_device.py` on every shape without compiling.
2. in parallel on the one GPU (their times are under contention and say so): the main job in bf16 (fp32 vs bf16 curves);
   the width ladder of argument 6 (2 layers, d_head 32: d_model 32, 64, 256; the 128 run is the main job's) in fp32; the
   paper-width presets paper-1l/2l/3l in bf16; paper-2l with the default recipe (lr 2e-3, batch 16: does it train?);
   a check of the nccl backend (one GPU: world size 1). Each run: train, `run_tables`, the ablation of argument 3 and the
   composition scores of its last snapshot; the ladder's last snapshots come back too.
3. alone, only if stage 2 ended early: the compiled configurations of the benchmark on the default shape.

Every run reads the same bytes as the CPU runs: `GPU_STDLIB` points at a copy of the Python 3.11 standard library's
source (the corpus is the interpreter's stdlib, and the GPU machine's Python is another version), checked by checksum.
"""
import argparse, json, os, shutil, subprocess, sys, tarfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def patch_corpus():
    "Make the default corpus the stdlib copy at $GPU_STDLIB (same bytes as the CPU machine's, by checksum)."
    root = os.environ.get('GPU_STDLIB')
    if not root: return None
    import induction_nb.data as D
    files = D.stdlib_files(root)
    D._STDLIB_CACHE[('None', 20)] = D.TextCorpus.from_documents(
        [f.read_bytes() for f in files], name='stdlib', val_every=20,
        meta={'python': os.environ.get('GPU_STDLIB_PYTHON', '3.11.7'), 'n_files': len(files)})
    return D._STDLIB_CACHE[('None', 20)].sha256


def job_configs(quick: bool) -> dict:
    "{job name: (run dir name, RunConfig, precision)} of the runs of stage 2: `induction_nb.scale.scale_runs()`, by label."
    from induction_nb.scale import scale_runs
    small = lambda c: c.replace(train=dict(steps=30, snapshots_log=4, snapshots_lin=3, warmup_steps=5, checkpoint_every=10,
                                           val_windows=4), model=dict(n_ctx=64, d_model=min(64, c.model.d_model),
                                                                      n_heads=min(2, c.model.n_heads)))
    return {label: (d, small(c) if quick else c, p) for label, (d, c, p) in scale_runs().items()}


def quick_ladder(name: str, a) -> bool: return a.quick and not name.startswith('d768')


def run_job(name: str, a):
    "One stage-2 run in this process: train, tables, ablation, composition; each piece saved as soon as it exists."
    sha = patch_corpus()
    import numpy as np, torch
    from induction_nb.train import train
    from induction_nb.experiment import run_tables
    from induction_nb.scores import composition_scores
    runs, res = Path(a.runs), Path(a.stage)/'results'
    dirname, cfg, precision = job_configs(a.quick)[name]
    log = {'job': name, 'run': dirname, 'precision': precision, 'device': a.device, 'corpus_sha256': sha,
           'config': cfg.to_dict()}
    done = lambda: (res/dirname).mkdir(parents=True, exist_ok=True) or (res/dirname/'job.json').write_text(json.dumps(log, indent=1))
    t0 = time.perf_counter()
    run = train(cfg, runs/dirname, progress=False, device=a.device, precision=precision)
    log['train_s'] = round(time.perf_counter() - t0, 1); done()
    t1 = time.perf_counter()
    kw = dict(n_icl=16, n_icl_final=32) if a.quick else {}
    t = run_tables(run, name, progress=False, device=a.device, **kw)
    log['tables_s'] = round(time.perf_counter() - t1, 1)
    t.info['timings'] = dict(train_s=log['train_s'], measure_s=log['tables_s'], where=a.where, precision=precision)
    t.save(res/dirname/'tables'); done()
    model = run.load(run.steps[-1], device=a.device)
    if cfg.model.n_layers >= 2:
        np.savez_compressed(res/dirname/'composition.npz', **{k: composition_scores(model, k).cpu().numpy() for k in 'QKV'})
    if cfg.model.n_ctx == 512 or quick_ladder(name, a):
        (res.parent/'snaps').mkdir(exist_ok=True)
        shutil.copy(run.snapshot_path(run.steps[-1]), res.parent/'snaps'/f'{dirname}.safetensors')
    if cfg.model.n_layers >= 2 and 'recipe' not in name:
        from induction_nb.ablation import compute_ablation
        from induction_nb.zoo import head_window
        w = t.window() or head_window(t)
        log['window'] = None if w is None else [w.start, w.end]
        if w is not None:
            t2 = time.perf_counter()
            compute_ablation(run, t, w, n_draws=20, n_final=64 if a.quick else 1024, progress=False,
                             device=a.device).save(res/dirname/'ablation')
            log['ablation_s'] = round(time.perf_counter() - t2, 1)
        done()
        if name in ('d256 2L', 'd768 2L'):
            from induction_nb.circuits import find_circuit, mechanism_results, save_mechanism
            t3 = time.perf_counter()
            try:
                c = find_circuit(t)
                save_mechanism(mechanism_results(run, t, c['induction'][0], device=a.device), res/dirname/'mechanism')
                log['mechanism'] = dict(receiver=c['induction'][0], previous=c['previous'], s=round(time.perf_counter() - t3, 1))
            except Exception as e: log['mechanism'] = f"{type(e).__name__}: {e}"
    log['total_s'] = round(time.perf_counter() - t0, 1); done()
    print(json.dumps({k: v for k, v in log.items() if k != 'config'}), flush=True)


def run_main(precision: str, a):
    "The main job's code (what `induction_nb phase-change` runs), in this process."
    t0 = time.perf_counter()
    sha = patch_corpus()
    from induction_nb.phase import phase_change, report
    tables, summary = phase_change(Path(a.runs)/f'main-{precision}', device=a.device, precision=precision, progress=False)
    dest = Path(a.stage)/'results'/f'main-{precision}'
    shutil.copytree(Path(a.runs)/f'main-{precision}'/'tables', dest/'tables', dirs_exist_ok=True)
    shutil.copytree(Path(a.runs)/f'main-{precision}'/'figures', dest/'figures', dirs_exist_ok=True)
    shutil.copy(Path(a.runs)/f'main-{precision}'/'summary.csv', dest/'summary.csv')
    info = dict(precision=precision, device=a.device, corpus_sha256=sha, seconds=round(time.perf_counter() - t0, 1),
                timings={t.name: t.info['timings'] for t in tables})
    (dest/'job.json').write_text(json.dumps(info, indent=1))
    print(report(tables, summary), flush=True)
    print(json.dumps(info), flush=True)


def nccl_check(a):
    """What one GPU can say about DDP: NCCL refuses two ranks on one device, so the package's multi-process path cannot run
    here. Checked instead: (1) the nccl backend comes up (world size 1) and does the collectives `train` uses (all_reduce,
    broadcast_object_list); (2) `torchrun --nproc_per_node 1 … train --device cuda` trains (world size 1: no process group)."""
    import torch, torch.distributed as dist
    info = dict(nccl_available=bool(dist.is_nccl_available()))
    try:
        dist.init_process_group('nccl' if torch.cuda.is_available() else 'gloo', init_method='tcp://127.0.0.1:29534',
                                world_size=1, rank=0)
        x = torch.ones(4, device=a.device); dist.all_reduce(x)
        obj = [None, 'x']; dist.broadcast_object_list(obj, src=0)
        info |= dict(backend=dist.get_backend(), all_reduce_ok=bool((x == 1).all()), broadcast_ok=obj[1] == 'x')
        dist.destroy_process_group()
    except Exception as e: info['collectives_error'] = f"{type(e).__name__}: {e}"[:500]
    out = Path(a.runs)/'nccl'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '1', '--master_addr', '127.0.0.1',
           '--master_port', '29533', '-m', 'induction_nb.cli', 'train', '--preset', 'synthetic-2l', '--steps', '100',
           '--out', str(out), '--device', a.device, '--no-progress']
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    info |= dict(torchrun_cmd=' '.join(cmd[1:]), torchrun_rc=p.returncode, torchrun_tail=(p.stdout + p.stderr)[-2000:],
                 torchrun_finished=(out/'snapshots'/'step_000100.safetensors').exists())
    (Path(a.stage)/'results'/'nccl.json').write_text(json.dumps(info, indent=1))
    print(json.dumps({k: v for k, v in info.items() if k != 'torchrun_tail'}), flush=True)


def spawn(args: list, a, log_name: str, threads: int|None=None) -> subprocess.Popen:
    f = open(Path(a.stage)/'logs'/f'{log_name}.log', 'w')
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', **({'OMP_NUM_THREADS': str(threads)} if threads else {})}
    return subprocess.Popen([sys.executable, __file__, *args, *common_args(a)], stdout=f, stderr=subprocess.STDOUT, env=env)


def common_args(a) -> list:
    return ['--out', a.out, '--runs', a.runs, '--stage', a.stage, '--device', a.device, '--where', a.where] + \
           (['--quick'] if a.quick else [])


def wait(procs: dict, deadline: float, t_start: float):
    "Wait for `procs` ({name: Popen}) until `deadline` (perf_counter), then stop the rest; print one line per end."
    status = {}
    while procs:
        for n, p in list(procs.items()):
            if p.poll() is not None:
                status[n] = f"rc {p.returncode} at {time.perf_counter() - t_start:.0f} s"
                print(f"[{time.perf_counter() - t_start:5.0f} s] {n}: {status[n]}", flush=True)
                del procs[n]
        if time.perf_counter() > deadline:
            for n, p in procs.items():
                p.terminate(); status[n] = f"stopped at the budget ({time.perf_counter() - t_start:.0f} s)"
                print(f"[{time.perf_counter() - t_start:5.0f} s] {n}: {status[n]}", flush=True)
            time.sleep(5)
            for p in procs.values():
                if p.poll() is None: p.kill()
            break
        time.sleep(1)
    return status


def pack(a, status: dict):
    "Everything staged, as OUT/results.tar.gz (+ OUT/snaps.tar for the ladder's last snapshots)."
    stage, out = Path(a.stage), Path(a.out)
    (stage/'results'/'status.json').write_text(json.dumps(status, indent=1))
    with tarfile.open(out/'results.tar.gz.tmp', 'w:gz') as tf:
        for sub in ('results', 'logs'): tf.add(stage/sub, arcname=sub)
    os.replace(out/'results.tar.gz.tmp', out/'results.tar.gz')
    if (stage/'snaps').is_dir():
        with tarfile.open(out/'snaps.tar.tmp', 'w') as tf: tf.add(stage/'snaps', arcname='snaps')
        os.replace(out/'snaps.tar.tmp', out/'snaps.tar')
    for f in out.iterdir(): print(f"{f.name}: {f.stat().st_size / 2**20:.1f} MiB", flush=True)


def orchestrate(a):
    t_start = time.perf_counter()
    deadline = t_start + a.budget
    stage = Path(a.stage)
    for sub in ('results', 'logs'): (stage/sub).mkdir(parents=True, exist_ok=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    status = {}
    env = dict(python=sys.version.split()[0])
    try:
        import torch
        env |= dict(torch=torch.__version__, cuda=torch.cuda.is_available(),
                    gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, cpus=os.cpu_count())
    except Exception as e: env['torch_error'] = repr(e)
    env['nvidia_smi'] = subprocess.run('nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader',
                                       shell=True, capture_output=True, text=True).stdout.strip()
    print(json.dumps(env), flush=True)
    (stage/'results'/'env.json').write_text(json.dumps(env, indent=1))
    # stage 1: alone
    t = time.perf_counter()
    status |= wait({'main-fp32': spawn(['main', 'fp32'], a, 'main-fp32')}, deadline - 60, t_start)
    status['main-fp32 wall_s'] = round(time.perf_counter() - t, 1)
    bench = ['--device', a.device, '--no-compile', '--steps', '3' if a.quick else '20', '--warmup', '1' if a.quick else '5',
             '--repeats', '1' if a.quick else '2', '--out', str(stage/'results'/'bench_nocompile.json')]
    bench += ['--shapes', 'default', '--batches', '16', '--no-checks'] if a.quick else ['--shapes', 'default', 'paper width (']
    f = open(stage/'logs'/'bench.log', 'w')
    p = subprocess.Popen([sys.executable, str(ROOT/'bench'/'bench_device.py'), *bench], stdout=f, stderr=subprocess.STDOUT)
    status |= wait({'bench': p}, min(deadline - 200, time.perf_counter() + 150), t_start)
    pack(a, status)
    # stage 2: in parallel
    th = max(1, (os.cpu_count() or 2) // 9)
    procs = {'main-bf16': spawn(['main', 'bf16'], a, 'main-bf16', th), 'nccl': spawn(['nccl'], a, 'nccl', th)}
    procs |= {n: spawn(['job', n], a, d, th) for n, (d, c, p) in job_configs(a.quick).items()}
    status |= wait(procs, deadline - 25, t_start)
    pack(a, status)
    # stage 3: compiled, alone, only if stage 2 ended early enough
    left = deadline - time.perf_counter() - 25
    if left > a.compile_s:
        f = open(stage/'logs'/'bench_compile.log', 'w')
        cb = ['--device', a.device, '--shapes', 'default', '--batches', '16', '--compile-shapes', 'default', '--no-checks',
              '--steps', '3' if a.quick else '20', '--warmup', '1' if a.quick else '5', '--repeats', '1',
              '--out', str(stage/'results'/'bench_compile.json')]
        p = subprocess.Popen([sys.executable, str(ROOT/'bench'/'bench_device.py'), *cb], stdout=f, stderr=subprocess.STDOUT)
        status |= wait({'bench-compile': p}, time.perf_counter() + left, t_start)
    status['total_s'] = round(time.perf_counter() - t_start, 1)
    pack(a, status)
    print(json.dumps(status), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('what', nargs='*', default=[], help="(internal) main PRECISION | job NAME | nccl")
    p.add_argument('--out', required=True, help="where the packed results go")
    p.add_argument('--runs', default='/tmp/gpu_runs', help="run directories (not packed)")
    p.add_argument('--stage', default='/tmp/gpu_stage', help="staging folder")
    p.add_argument('--device', default='cuda')
    p.add_argument('--where', default='one NVIDIA H200 (lent GPU machine)', help="recorded with each run's timings")
    p.add_argument('--budget', type=float, default=520, help="seconds until unfinished jobs are stopped and results packed")
    p.add_argument('--compile-s', type=float, default=100, help="the compiled benchmark runs only if this many seconds are left")
    p.add_argument('--quick', action='store_true', help="tiny runs: a smoke test of this script")
    a = p.parse_args(argv)
    if not a.what: return orchestrate(a)
    if a.what[0] == 'main': return run_main(a.what[1], a)
    if a.what[0] == 'job': return run_job(a.what[1], a)
    if a.what[0] == 'nccl': return nccl_check(a)
    raise SystemExit(f"unknown internal command {a.what}")


if __name__ == '__main__': main()
