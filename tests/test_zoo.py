"""The zoo (nbs/05_arg1_cooccurrence.ipynb): `train_zoo` reuses finished runs and resumes interrupted ones, and the
smeared key lets a 1-layer model do what a plain 1-layer model cannot (synthetic stand-ins, about a minute)."""
import pytest
from induction_nb.train import train, load_run, preset
from induction_nb.scores import prefix_matching_scores, probe_windows, token_pool
from induction_nb import zoo


pytestmark = pytest.mark.usefixtures('synthetic')     # the zoo's synthetic stand-ins, one thread (conftest.py)


def test_train_zoo_resumes_then_reuses(tmp_path, capsys):
    (name, (dirname, cfg)), = zoo.zoo_runs('attn-1L').items()
    def stop(step, loss):
        if step == 300: raise KeyboardInterrupt("stopped by the test")
    with pytest.raises(KeyboardInterrupt): train(cfg, tmp_path/dirname, progress=False, on_step=stop)
    assert zoo.run_status(tmp_path/dirname, cfg).startswith('interrupted at step')
    runs = zoo.train_zoo(tmp_path, 'attn-1L')
    assert runs[name].steps[-1] == cfg.train.steps
    assert 'resumed, trained' in capsys.readouterr().out
    snaps = (tmp_path/dirname/'snapshots').stat().st_mtime_ns
    zoo.train_zoo(tmp_path, 'attn-1L')
    assert 'reused (finished)' in capsys.readouterr().out
    assert (tmp_path/dirname/'snapshots').stat().st_mtime_ns == snaps        # nothing retrained


def _best_prefix(name, tmp_path):
    run = train(preset(name), tmp_path/name, progress=False)
    probe = probe_windows(token_pool(run.corpus()), n_seqs=10, block=25, n_repeats=4, seed=0)
    return float(prefix_matching_scores(run.load(), probe).max())


def test_smeared_key_gives_one_layer_an_induction_head(tmp_path):
    "The repeated-segment task needs an induction head: the smeared 1-layer model forms one, the plain one cannot."
    smeared, plain = _best_prefix('synthetic-1l-smeared', tmp_path), _best_prefix('synthetic-1l', tmp_path)
    assert smeared > 0.3 and plain < 0.1, (smeared, plain)
