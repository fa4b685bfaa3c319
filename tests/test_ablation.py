"""Argument 3 from the command line (nbs/07_arg3_ablation.ipynb): `induction_nb ablation` trains the synthetic stand-in
of the 2-layer zoo model, ablates every head at every snapshot and finds that its induction heads carry most of what
its repeated tokens gain from context (about a minute on 2 CPU cores)."""
import pytest
from induction_nb.cli import main
from induction_nb.ablation import Ablation, final_removed


pytestmark = pytest.mark.usefixtures('synthetic')     # the zoo's synthetic stand-ins, one thread (conftest.py)


def test_ablation_command(tmp_path, capsys):
    assert main(['ablation', '--out', str(tmp_path), '--models', 'attn-2L', '--draws', '3', '--threads', '1']) == 0
    out = capsys.readouterr().out
    assert 'attn-2L s0' in out and 'ICL removed by them' in out
    two = Ablation.load(tmp_path/'ablation'/'test-stdlib-2l-s0')
    assert two.info['induction'] and two.heads.step.nunique() == len(two.sets['steps'])
    frac, lo, hi = final_removed(two)
    assert lo > 0.5, f"the induction heads remove only {frac:.0%} [{lo:.0%}, {hi:.0%}] of the synthetic model's ICL"
    assert final_removed(two, 'others')[0] < frac


def test_a_lone_one_layer_model_is_refused_before_training(tmp_path, capsys):
    assert main(['ablation', '--out', str(tmp_path), '--models', 'attn-1L']) == 1
    assert 'add one to --models' in capsys.readouterr().err
    assert not any(tmp_path.iterdir())                       # nothing trained
