"""End-to-end check of the paper's central contrast on the synthetic task (about a minute on 2 CPU cores):
a 2-layer attention-only model forms an induction head (in layer 1), a 1-layer model cannot, and ablating that
head (argument 3) takes the model's use of repeated tokens with it."""
import pytest
import torch
from induction_nb.train import train, preset
from induction_nb.model import per_token_loss
from induction_nb.scores import prefix_matching_scores, probe_windows, token_pool, previous_token_scores, classify_heads
from induction_nb.ablation import ablate


@pytest.fixture(autouse=True)
def one_thread():
    "One torch thread: on a shared 2-core machine two spinning OpenMP threads can make training 10x slower."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _prefix(name, tmp_path):
    run = train(preset(name), tmp_path/name, progress=False)
    probe = probe_windows(token_pool(run.corpus()), n_seqs=10, block=25, n_repeats=4, seed=0)
    return run, prefix_matching_scores(run.load(), probe)


def test_two_layers_form_an_induction_head(tmp_path):
    run, scores = _prefix('synthetic-2l', tmp_path)
    assert scores.shape == (2, 4)
    assert scores[1].max() > 0.3, f"no induction head in layer 1: {scores}"
    # the circuit's other half: a previous-token head in layer 0
    windows = run.corpus().batch('val', run.config.model.n_ctx, 16, seed=0)
    assert previous_token_scores(run.load(), windows)[0].max() > 0.4
    # argument 3: ablating the induction heads costs the repeated tokens a lot; ablating a head that is neither an
    # induction nor a previous-token head ('other' by classify_heads) barely moves them
    model, probe = run.load(), probe_windows(token_pool(run.corpus()), n_seqs=10, block=25, n_repeats=4, seed=1)
    kinds = classify_heads(scores, previous_token_scores(model, windows))
    induction = [(r.layer, r.head) for r in kinds.itertuples() if r.kind == 'induction']
    others = [(r.layer, r.head) for r in kinds.itertuples() if r.kind == 'other']
    assert induction and others, kinds
    repeated = lambda heads: per_token_loss(model, probe, ablate(model, probe[:, :-1], heads))[:, 25:].mean().item()  # copies 2-4
    clean = repeated([])
    d_ind = repeated(induction) - clean
    d_other = {h: repeated([h]) - clean for h in others}
    assert d_ind > 1.0 and all(abs(d) < 0.2 * d_ind for d in d_other.values()), f"clean {clean:.3f}; induction {induction}: +{d_ind:.3f}; others: {d_other}"


def test_one_layer_cannot(tmp_path):
    _, scores = _prefix('synthetic-1l', tmp_path)
    assert scores.shape == (1, 4)
    assert scores.max() < 0.1, f"a 1-layer model should not prefix-match: {scores}"
