"""No tensor on the wrong device, and the device option changes nothing on the CPU.

1. Every public function of the package that takes a model runs with a CPU model while the default device is `meta`:
   a tensor it creates without `device=` lands on `meta`, and mixing it with the model's weights raises (or leaves a
   `meta` result, which is caught below). This is how such a function fails on a CUDA model.
2. The same functions get token inputs that refuse to meet any other tensor before `.to(device)` was called on them:
   the rule is that every function that takes a model moves its token inputs to the model's device itself.
3. `device='cpu'` trains and resumes bit for bit like the default, and the CLI passes `--device` through.

The functions are found by signature (a parameter named `model`), so a new one without an argument builder below fails
`test_every_model_function_is_covered`.
"""
import importlib, inspect, json, pkgutil
from pathlib import Path
import numpy as np
import pytest, torch
import induction_nb
from induction_nb.model import ModelConfig, Transformer
from induction_nb.data import CorpusSpec, make_corpus

MODULES = [m.name for m in pkgutil.iter_modules(induction_nb.__path__) if not m.name.startswith('_') and m.name != 'cli']

def model_functions() -> dict[str, callable]:
    "`{'module.name': fn}`: every public function of the package with a parameter named `model`."
    out = {}
    for name in MODULES:
        try: mod = importlib.import_module(f'induction_nb.{name}')
        except ModuleNotFoundError: continue          # an optional extra (the site chapter) that is not installed
        for n in getattr(mod, '__all__', []):
            f = getattr(mod, n)
            if inspect.isfunction(f) and f.__module__ == mod.__name__ and 'model' in inspect.signature(f).parameters:
                out[f'{name}.{n}'] = f
    return out

# ------------------------------------------------------------------------------------------------- inputs
class Unmoved(torch.Tensor):
    "Tokens that may meet another tensor only after `.to(device)` (or `torch.as_tensor(..., device=)`) was called on them."
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.to, torch.as_tensor) and ('device' in kwargs or any(
                isinstance(a, (torch.device, str, torch.Tensor)) for a in args[1:])):
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(torch.Tensor)
        flat = torch.utils._pytree.tree_leaves((args, kwargs))
        if any(isinstance(a, torch.Tensor) and not isinstance(a, Unmoved) for a in flat):
            raise AssertionError(f"{getattr(func, '__name__', func)}: a token input met another tensor before it was moved "
                                 "to the model's device (call .to(model.device) on inputs first)")
        return super().__torch_function__(func, types, args, kwargs)

def tokens(n, p, seed=0, vocab=64):
    return torch.randint(1, vocab, (n, p), generator=torch.Generator().manual_seed(seed))

N_CTX = 32

def models():
    torch.manual_seed(0)
    base = dict(n_layers=2, d_model=16, n_heads=2, n_ctx=N_CTX, d_vocab=256)
    return {'sf': Transformer(ModelConfig(positional='shortformer', **base)).eval(),
            'std': Transformer(ModelConfig(**base)).eval(),
            'mlp': Transformer(ModelConfig(attn_only=False, **base)).eval(),
            'smear': Transformer(ModelConfig(smeared_key=True, **base)).eval()}

def inputs(wrap):
    "Token inputs (CPU tensors, or `Unmoved` ones) and the other arguments, built before any default device is set."
    from induction_nb.sweep import measure_inputs
    from induction_nb.examples import make_prompt
    from induction_nb.circuits import repeated_windows, corrupt_first_copy
    w = lambda t: t.as_subclass(Unmoved) if wrap else t
    corpus = make_corpus(CorpusSpec(kind='synthetic', d_vocab=64))
    mi = measure_inputs(corpus, N_CTX, n_icl=8, n_prev=4, n_probe=2, block=5, n_boot=20, chunk=4)
    mi = {k: w(v) if torch.is_tensor(v) else v for k, v in mi.items()}
    clean = repeated_windows(corpus, 8, 3)
    corrupt, q, t = corrupt_first_copy(clean, np.arange(1, 64))
    prompt = make_prompt('demo', 'exact repeat', 'def f(x): 1; def f(x): 2', [('def f(x)', 'def f(x)')])
    return dict(win=w(tokens(6, N_CTX + 1)), x=w(tokens(6, N_CTX)), probe=w(tokens(2, 21)), mi=mi, corpus=corpus,
                clean=w(clean), corrupt=w(corrupt), q=q, t=t, prompt=prompt, pool=np.arange(1, 40))

# `{function: [(model kind, args builder(inputs) -> (args, kwargs)), ...]}`; each call runs with the model first
ICL = dict(early=2, late=28, band=1)
CALLS = {
    'model.per_token_loss': [('sf', lambda i: ((i['win'],), {})), ('sf', lambda i: ((i['win'],), dict(chunk=4)))],
    'scores.loss_by_position': [('sf', lambda i: ((i['win'],), dict(chunk=4)))],
    'scores.attention_patterns': [('sf', lambda i: ((i['x'],), {}))],
    'scores.head_scores': [('sf', lambda i: ((i['x'],), dict(chunk=4)))],
    'scores.prefix_matching_scores': [('sf', lambda i: ((i['probe'],), {})), ('std', lambda i: ((), dict(block=5, n_seqs=2)))],
    'scores.previous_token_scores': [('std', lambda i: ((i['x'],), dict(chunk=4)))],
    'scores.copying_scores': [('sf', lambda i: ((), dict(block=5, n_samples=2))), ('sf', lambda i: ((i['pool'],), dict(block=5)))],
    'scores.ov_eigen_copying': [('sf', lambda i: ((), {})), ('mlp', lambda i: ((i['pool'],), {}))],
    'scores.composition_scores': [('sf', lambda i: ((k,), {})) for k in 'QKV'],
    'ablation.z_means': [('sf', lambda i: ((i['x'],), dict(chunk=4)))],
    'ablation.ablate': [('sf', lambda i, k=k: ((i['x'], [(1, 0)], k), {})) for k in ('zero', 'pattern', 'mean')],
    'ablation.head_ablation_losses': [('sf', lambda i: ((i['win'], ('zero', 'pattern', 'mean')), dict(chunk=4)))],
    'ablation.set_ablation_icl': [('sf', lambda i: ((i['win'], [[(1, 0)], [(0, 1)]]), dict(chunk=4, **ICL)))],
    'circuits.ov_eigenvalues': [('sf', lambda i: ((1, 0, i['pool']), {})), ('sf', lambda i: ((0, 1), {}))],
    'circuits.qk_token_circuit': [('sf', lambda i: ((1, 0, i['pool']), {}))],
    'circuits.qk_trace': [('sf', lambda i: ((1, 1, i['pool']), {}))],
    'circuits.weighted_qk': [('sf', lambda i: ((1, 0, np.full((2, 2), 0.5), i['pool']), {}))],
    'circuits.path_patch': [('sf', lambda i: ((i['clean'], i['corrupt'], (1, 0), [(0, 0)], 'qkv'), {}))],
    'circuits.path_patching': [('sf', lambda i: ((i['clean'], i['corrupt'], i['q'], i['t'], (1, 0), [(0, 0), (0, 1)]), {}))],
    'examples.run_prompt': [('sf', lambda i: ((i['prompt'], [(1, 0)]), {}))],
    'smeared.smear_sigma': [('smear', lambda i: ((), {})), ('sf', lambda i: ((), {}))],
    'sweep.measure_snapshot': [('sf', lambda i: ((i['mi'],), {})), ('smear', lambda i: ((i['mi'], ['icl', 'smear_sigma']), {}))],
    'train.val_loss': [('sf', lambda i: ((i['corpus'], N_CTX, 4), dict(chunk=2)))],
    'interop.to_hooked_transformer': [('std', lambda i: ((), {}))],
}

# functions the meta check does not apply to, and why
META_EXEMPT = {'interop.to_hooked_transformer': "builds a TransformerLens model, whose own constructor makes tensors on the "
                                                "default device before moving them to the config's (the model's) device"}

def _skip(name):
    if name == 'interop.to_hooked_transformer':
        from induction_nb.interop import tl_available
        if not tl_available(): return "TransformerLens is not installed"

def _on_meta(x) -> bool:
    if torch.is_tensor(x): return x.device.type == 'meta'
    if isinstance(x, dict): return any(_on_meta(v) for v in x.values())
    if isinstance(x, (list, tuple)): return any(_on_meta(v) for v in x)
    return False

def test_every_model_function_is_covered():
    found = set(model_functions())
    assert found - set(CALLS) == set(), f"functions that take a model but have no entry in CALLS: {sorted(found - set(CALLS))}"
    assert set(CALLS) - found == set(), f"CALLS names functions that do not exist (any more): {sorted(set(CALLS) - found)}"

@pytest.mark.parametrize('name', sorted(CALLS))
def test_no_tensor_created_off_the_model_device(name):
    "A CPU model, the default device `meta`: a tensor made without `device=` breaks the call or leaves a `meta` result."
    if _skip(name) or name in META_EXEMPT: pytest.skip(_skip(name) or META_EXEMPT[name])
    fn, ms, inp = model_functions()[name], models(), inputs(wrap=False)
    for kind, build in CALLS[name]:
        args, kw = build(inp)
        torch.set_default_device('meta')
        try: out = fn(ms[kind], *args, **kw)
        finally: torch.set_default_device(None)
        assert not _on_meta(out), f"{name} returned a tensor on the default device (meta), not the model's"

@pytest.mark.parametrize('name', sorted(CALLS))
def test_inputs_are_moved_to_the_model_device(name):
    "Token inputs are used only after `.to(model.device)`."
    if _skip(name): pytest.skip(_skip(name))
    fn, ms, inp = model_functions()[name], models(), inputs(wrap=True)
    for kind, build in CALLS[name]:
        args, kw = build(inp)
        fn(ms[kind], *args, **kw)

def test_unmoved_catches_a_function_that_does_not_move():
    "The check itself can fail: a forward pass on tokens that were never moved raises."
    m, x = models()['sf'], tokens(2, 8).as_subclass(Unmoved)
    with pytest.raises(AssertionError, match='before it was moved'): m(x)
    m(x.to(m.device))                                  # moved: fine

def test_meta_default_catches_a_tensor_made_without_device():
    "The check itself can fail: `torch.eye(d)` without `device=` under the meta default breaks a product with the weights."
    m = models()['sf']
    torch.set_default_device('meta')
    try:
        with pytest.raises(RuntimeError): (torch.eye(16) @ m.W_U).sum().item()
    finally: torch.set_default_device(None)

# ------------------------------------------------------------------------------------------------- device='cpu'
from induction_nb.train import preset, train, load_run, load_tensors

CFG = preset('synthetic-2l', model=dict(n_ctx=32, d_model=32), train=dict(steps=60, checkpoint_every=20, val_windows=8,
                                                                           snapshots_log=4, snapshots_lin=3))

def _files(run_dir):
    d = Path(run_dir)
    out = {'metrics': [{k: v for k, v in json.loads(l).items() if k != 'tok_per_s'} for l in (d/'metrics.jsonl').read_text().splitlines()]}
    for p in sorted([d/'state.safetensors', *(d/'snapshots').glob('*.safetensors')]):
        out[p.name] = {k: v.numpy().tobytes() for k, v in load_tensors(p)[0].items()}
    return out

def test_cpu_device_is_bit_identical_and_resumes(tmp_path):
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        train(CFG, tmp_path/'default', progress=False)
        class Stop(Exception): pass
        def stop_at_30(step, loss):
            if step == 30: raise Stop
        with pytest.raises(Stop): train(CFG, tmp_path/'cpu', progress=False, device='cpu', on_step=stop_at_30)
        assert load_tensors(tmp_path/'cpu'/'state.safetensors')[1]['step'] == 20
        run = train(CFG, tmp_path/'cpu', progress=False, device='cpu')          # resumes from step 20
    finally: torch.set_num_threads(n)
    a, b = _files(tmp_path/'default'), _files(tmp_path/'cpu')
    assert a.keys() == b.keys() and a['metrics'] == b['metrics']
    for k in a: assert a[k] == b[k], f"{k} differs between the default run and the device='cpu' run resumed at step 20"
    assert run.load(device='cpu').W_E.device.type == 'cpu'

def test_bf16_trains_on_cpu(tmp_path):
    "bf16 autocast runs on the CPU, keeps fp32 weights and losses, and is not bit-identical to fp32 (it is in use)."
    cfg = CFG.replace(train=dict(steps=20, checkpoint_every=20))
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        a = train(cfg, tmp_path/'fp32', progress=False)
        b = train(cfg, tmp_path/'bf16', progress=False, precision='bf16')
    finally: torch.set_num_threads(n)
    wa, wb = a.load().W_E, b.load().W_E
    assert wb.dtype == torch.float32 and not torch.equal(wa, wb) and torch.allclose(wa, wb, atol=2e-2)
    la, lb = (r.metrics().train_loss.dropna().to_numpy() for r in (a, b))
    assert np.all(np.isfinite(lb)) and np.allclose(la, lb, atol=0.05)

def test_bad_options_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match='precision'): train(CFG, tmp_path/'x', precision='fp16')
    with pytest.raises(ValueError, match='Unknown device'): train(CFG, tmp_path/'x', device='tpu')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='no CUDA GPU'): train(CFG, tmp_path/'x', device='cuda')
    assert not (tmp_path/'x').exists()                  # refused before anything was written

def test_cli_passes_device_through(monkeypatch, capsys):
    "Every command that trains or measures has --device (default auto), says which device first, and passes it on."
    from induction_nb import cli, phase
    seen = {}
    def fake_phase_change(out, **kw): seen.update(kw); raise SystemExit(0)
    monkeypatch.setattr(phase, 'phase_change', fake_phase_change)
    with pytest.raises(SystemExit): cli.main(['phase-change', '--device', 'cpu', '--out', 'unused'])
    assert seen['device'] == torch.device('cpu') and seen['precision'] == 'fp32' and seen['compile'] is False
    assert capsys.readouterr().out.splitlines()[0].startswith('device: cpu')
    p = cli.build_parser()
    for cmd, extra in (('train', ['--preset', 'synthetic-2l', '--out', 'x']), ('phase-change', []), ('zoo', []),
                       ('ablation', [])):
        a = p.parse_args([cmd, *extra])
        assert a.device == 'auto', cmd
    assert p.parse_args(['train', '--preset', 'synthetic-2l', '--out', 'x', '--precision', 'bf16', '--compile']).compile

def test_paper_width_setting(monkeypatch):
    "`phase-change --setting paper-width` trains paper-2l and paper-1l (their synthetic stand-ins under test)."
    from induction_nb.phase import phase_change_runs, SETTINGS
    monkeypatch.delenv('INDUCTION_NB_TEST', raising=False); monkeypatch.delenv('IN_TEST', raising=False)
    runs = phase_change_runs(setting='paper-width')
    assert [d for d, _ in runs.values()] == ['paper-2l-s0', 'paper-1l-s0']
    assert all(c.model.d_model == 768 and c.model.n_heads == 12 and c.model.n_ctx == 1024 for _, c in runs.values())
    assert 'paper-width' in SETTINGS
