"""Run every notebook's examples and tests, as `nbdev_test` does (slow cells are skipped)."""
import os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_notebooks():
    "`nbdev_test` over nbs/: each notebook in its own worker, one torch thread each (2 cores, no oversubscription)."
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'HF_DATASETS_OFFLINE': '1', 'MPLBACKEND': 'Agg'}
    nbdev_test = Path(sys.executable).with_name('nbdev_test')
    r = subprocess.run([str(nbdev_test), '--n_workers', '2', '--timing'], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    print(r.stdout[-5000:], r.stderr[-20000:])
    assert r.returncode == 0, f"nbdev_test failed:\n{r.stderr[-20000:]}"
