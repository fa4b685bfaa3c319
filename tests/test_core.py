"""The shared config reader (`from_dict`), the safetensors header reader, and `load_snapshot` (a snapshot is a model)."""
import json, shutil
from pathlib import Path
import pytest, torch
from induction_nb.data import CorpusSpec, from_dict
from induction_nb.model import ModelConfig, Transformer
from induction_nb.train import (preset, train, load_run, save_tensors, load_tensors, load_snapshot, read_safetensors_header,
                                CorruptFileError, RunConfig, TrainConfig)

TINY = ModelConfig(n_layers=1, d_model=16, n_heads=2, n_ctx=16, d_vocab=32)
RUN = preset('synthetic-1l', model=dict(d_model=16, n_heads=2, n_ctx=16, d_vocab=32), corpus=dict(d_vocab=32),
             train=dict(steps=6, log_every=2, checkpoint_every=2, warmup_steps=1, val_windows=2, snapshots_log=2, snapshots_lin=2))

# ---------------------------------------------------------------- one from_dict for every config
@pytest.mark.parametrize('cls', [ModelConfig, TrainConfig, CorpusSpec])
def test_from_dict_names_unknown_and_known_fields(cls):
    with pytest.raises(ValueError) as e: cls.from_dict({'bogus': 1, 'also_bogus': 2})
    msg = str(e.value)
    assert f"Unknown {cls.__name__} field(s) ['also_bogus', 'bogus']" in msg
    assert "known fields: [" in msg and all(repr(f) in msg for f in cls.__dataclass_fields__)

@pytest.mark.parametrize('cls', [ModelConfig, TrainConfig, CorpusSpec])
def test_from_dict_fills_defaults_and_round_trips(cls):
    assert cls.from_dict({}) == cls() == from_dict(cls, {})
    assert cls.from_dict(json.loads(json.dumps(cls().to_dict() if hasattr(cls, 'to_dict') else vars(cls())))) == cls()

def test_from_dict_refuses_a_non_object():
    with pytest.raises(ValueError, match="A TrainConfig must be a JSON object, got list"): TrainConfig.from_dict([1])

def test_run_config_reports_the_section_field():
    with pytest.raises(ValueError, match=r"Unknown TrainConfig field\(s\) \['stepz'\]"): RunConfig.from_dict({'train': {'stepz': 1}})
    with pytest.raises(ValueError, match="Unknown RunConfig section"): RunConfig.from_dict({'trian': {}})

# ---------------------------------------------------------------- the safetensors header
def test_header_round_trip_without_the_tensors(tmp_path):
    p = tmp_path/'x.safetensors'
    save_tensors(p, {'w': torch.arange(6.).reshape(2, 3)}, meta={'step': 7})
    raw = p.read_bytes()
    p.write_bytes(raw[:-4])                                     # tensors cut short: the header is still readable
    h = read_safetensors_header(p)
    assert h['w']['shape'] == [2, 3] and json.loads(h['__metadata__']['meta']) == {'step': 7}
    with pytest.raises(CorruptFileError, match="x.safetensors is truncated"): load_tensors(p)

@pytest.mark.parametrize('data, why', [(b'', 'too short'), (b'\x05\x00', 'too short'),
                                       (b'\xff' * 8 + b'{}', 'header length says'), (b'\x04' + bytes(7) + b'{{{{', 'not valid JSON'),
                                       (b'\x02' + bytes(7) + b'[]', 'not a JSON object'), (b'\x02' + bytes(7) + b'\xff\xfe', 'not valid JSON')])
def test_bad_header_is_corrupt_file_error_naming_the_file(tmp_path, data, why):
    p = tmp_path/'bad.safetensors'
    p.write_bytes(data)
    with pytest.raises(CorruptFileError, match=f"bad.safetensors is truncated or not a safetensors file.*{why}"):
        read_safetensors_header(p)
    with pytest.raises(CorruptFileError, match=why): load_tensors(p)

def test_header_of_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors does not exist"): read_safetensors_header(tmp_path/'nope.safetensors')

# ---------------------------------------------------------------- load_snapshot
def _logits(model, seed=0):
    x = torch.randint(1, model.cfg.d_vocab, (2, model.cfg.n_ctx), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad(): return model(x)

@pytest.mark.parametrize('config', ['model', 'run'])
def test_load_snapshot_round_trip(tmp_path, config):
    torch.manual_seed(0)
    m = Transformer(TINY).eval()
    cfg = TINY.to_dict() if config == 'model' else RunConfig(TINY, corpus=CorpusSpec('synthetic', d_vocab=32)).to_dict()
    save_tensors(tmp_path/'s.safetensors', m.state_dict(), meta={'step': 3, 'config': cfg})
    back = load_snapshot(tmp_path/'s.safetensors')
    assert back.cfg == TINY and not back.training
    assert torch.equal(_logits(back), _logits(m))

def test_load_snapshot_without_config_says_what_to_do(tmp_path):
    save_tensors(tmp_path/'bare.safetensors', Transformer(TINY).state_dict(), meta={'step': 3})
    with pytest.raises(ValueError, match=r"bare.safetensors stores no model config.*meta=\{'config': model.cfg.to_dict\(\)\}"):
        load_snapshot(tmp_path/'bare.safetensors')

def test_load_snapshot_unreadable_config(tmp_path):
    save_tensors(tmp_path/'new.safetensors', Transformer(TINY).state_dict(), meta={'config': {'model': {**TINY.to_dict(), 'rope': 1}}})
    with pytest.raises(ValueError, match=r"new.safetensors: the model config stored in it cannot be read.*\['rope'\]"):
        load_snapshot(tmp_path/'new.safetensors')

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    return train(RUN, tmp_path_factory.mktemp('runs')/'tiny', progress=False, n_threads=1)

def test_run_load_is_load_snapshot(tiny_run):
    for step in tiny_run.steps:
        a, b = tiny_run.load(step), load_snapshot(tiny_run.snapshot_path(step))
        assert a.cfg == b.cfg == RUN.model and not a.training
        assert torch.equal(_logits(a), _logits(b))

def test_run_load_refuses_a_snapshot_of_another_model(tiny_run, tmp_path):
    d = tmp_path/'run'
    shutil.copytree(tiny_run.path, d, ignore=shutil.ignore_patterns('.lock'))
    step = tiny_run.steps[1]
    other = RUN.replace(model=dict(d_model=32))
    save_tensors(d/'snapshots'/f'step_{step:06d}.safetensors', Transformer(other.model).state_dict(),
                 meta={'step': step, 'config': other.to_dict()})
    run = load_run(d)
    with pytest.raises(ValueError, match=r"step_0+\d+\.safetensors holds a model whose config differs from the run's.*"
                                         r"config\.json.*d_model=32 in the snapshot, 16 in config\.json"):
        run.load(step)
    run.load(tiny_run.steps[0])                                  # the other snapshots are still fine
