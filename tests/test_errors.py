"Bad input gets a clear error that names the key, file or line at fault; nothing saved is lost."
import json
from pathlib import Path
import pytest, torch
from llm_nb.cli import main, train
from llm_nb.config import load_config
from llm_nb.loop import Learner, TrainMetricsCB, NaNGuardCB
from llm_nb.tasks import LMTask
from llm_nb.checkpoint import CheckpointCB
from helpers import tiny_corpus, tiny_overrides

def exit_message(argv) -> str:
    with pytest.raises(SystemExit) as e: main(argv)
    return str(e.value.code)

@pytest.fixture(scope='module')
def docs(tmp_path_factory): return tiny_corpus(tmp_path_factory.mktemp('docs'), n=4)

def test_unknown_key():
    assert 'unknown config key model.num_layer;' in exit_message(['train', 'model.num_layer=2'])

def test_wrong_type():
    assert 'training.per_device_train_batch_size: expected int' in exit_message(['train', 'training.per_device_train_batch_size=big'])

def test_bad_choice():
    assert "training.lr_scheduler_type: 'cosin' is not one of" in exit_message(['train', 'training.lr_scheduler_type=cosin'])

def test_config_file_errors(tmp_path):
    assert 'config file not found' in exit_message(['train', '--config', str(tmp_path/'nope.yaml')])
    bad = tmp_path/'bad.yaml'; bad.write_text('training: [1, 2\n')
    assert f'{bad}, line 2: cannot parse YAML' in exit_message(['train', '--config', str(bad)])
    j = tmp_path/'c.json'; j.write_text(json.dumps({'training': {'max_steps': '5x'}}))
    assert 'training.max_steps: expected int' in exit_message(['train', '--config', str(j)])

@pytest.mark.parametrize('override,message', [
    ('model.max_length=0', 'model.max_length=0: must be >= 2'), ('training.learning_rate=-1', 'training.learning_rate=-1.0: must be >= 0'),
    ('data.validation_split=1.5', 'data.validation_split=1.5: must be in [0, 1)'), ('model.num_heads=0', 'model.num_heads=0: must be > 0'),
    ('training.gradient_accumulation_steps=0', 'training.gradient_accumulation_steps=0: must be > 0'),
    ('tokenizer.vocab_size=1', 'tokenizer.vocab_size=1: must be >= 258'),
    ('training.metric_for_best_model=bleu', "training.metric_for_best_model='bleu': not a metric this run evaluates")])
def test_bad_values_refused_before_any_work(tmp_path, override, message):
    "A bad value stops the run before data is read or anything is written: the data file does not even exist."
    out = tmp_path/'run'
    err = exit_message(['train', f'output_dir={out}', f'data.train_file={tmp_path}/not_there.jsonl', override])
    assert message in err and 'not_there' not in err
    assert not out.exists()

def test_config_file_error_names_line(tmp_path):
    bad = tmp_path/'bad.yaml'; bad.write_text('training:\n  max_steps: 5\n  learning_rate: [1e-3\nmodel:\n  d_model: 64\n')
    assert f'{bad}, line 4: cannot parse YAML' in exit_message(['train', '--config', str(bad)])
    j = tmp_path/'nan.json'; j.write_text('{"training": {"max_grad_norm": NaN}}')
    assert 'training.max_grad_norm=nan: must be a finite number' in exit_message(['train', '--config', str(j)])

def test_missing_data_file(tmp_path):
    assert f'data file not found: {tmp_path}/none.jsonl' in exit_message(['train', f'data.train_file={tmp_path}/none.jsonl'])

def test_malformed_jsonl_names_line(tmp_path):
    f = tmp_path/'d.jsonl'
    f.write_text('{"text": "a"}\n{"text": "b"}\n\n{"text": "c"\n')
    assert f'{f}, line 4: malformed JSON' in exit_message(['train', f'data.train_file={f}'])

def test_missing_text_field(tmp_path):
    f = tmp_path/'d.jsonl'
    f.write_text('{"text": "a"}\n{"body": "b"}\n')
    assert f"{f}, record 2: missing text field 'text'" in exit_message(['train', f'data.train_file={f}'])

def test_empty_dataset(tmp_path):
    f = tmp_path/'d.jsonl'; f.write_text('\n')
    assert 'no documents (empty dataset)' in exit_message(['train', f'data.train_file={f}'])
    f = tmp_path/'e.txt'; f.write_text('   \n\n  \n')
    assert f'{f}: no documents (empty dataset)' in exit_message(['train', f'data.train_file={f}'])
    f = tmp_path/'e.jsonl'; f.write_text('{"text": " "}\n{"text": ""}\n')
    assert f'{f}: every document is empty' in exit_message(['train', f'data.train_file={f}'])

def test_too_little_data(tmp_path):
    f = tmp_path/'d.jsonl'; f.write_text('{"text": "a few words"}\n{"text": "and a few more"}\n')
    assert 'not enough for one block' in exit_message(['train', f'data.train_file={f}', 'data.validation_split=0'])

def test_explicit_corrupt_checkpoint_names_file(tmp_path, docs, capsys):
    out = tmp_path/'out'
    train(load_config(None, tiny_overrides(out, docs, steps=4, **{'training.save_steps': 2, 'training.eval_steps': 100})))
    ck = out/'checkpoints'/'step-4'/'model.safetensors'
    data = bytearray(ck.read_bytes()); data[-1] ^= 0xFF; ck.write_bytes(bytes(data))
    msg = exit_message(['train', *tiny_overrides(out, docs, steps=6), f'training.resume_from={ck.parent}'])
    assert f'{ck}: checksum mismatch' in msg
    # `latest` skips the corrupt one and resumes from step-2
    with pytest.warns(UserWarning, match='skipping invalid checkpoint'):
        learn = train(load_config(None, tiny_overrides(out, docs, steps=6, **{'training.resume_from': 'latest'})))
    assert learn.state.step == 6
    assert f"Resumed from {out/'checkpoints'/'step-2'} at step 2" in capsys.readouterr().out

def test_nan_loss_stops_before_saving(tmp_path):
    class NaNTask(LMTask):
        def loss(self, model, batch, n): return super().loss(model, batch, n) * float('nan')
    from llm_nb.model import build_model
    from llm_nb.config import ModelConfig
    m = build_model(ModelConfig(d_model=32, num_layers=1, num_heads=2, d_ff=64, max_length=16), vocab_size=64)
    dl = torch.utils.data.DataLoader([dict(input_ids=torch.arange(16), labels=torch.arange(16))] * 8, batch_size=4)
    learn = Learner(m, dl, task=NaNTask(), max_steps=4, cbs=[TrainMetricsCB(2), CheckpointCB(tmp_path, save_steps=2, handle_signals=False)])
    with pytest.raises(FloatingPointError, match='loss is nan at step 2'): learn.fit()
    assert not (tmp_path/'checkpoints').exists()
    # with the guard (as `llm_nb train` runs): the NaN update is skipped with a warning, the weights stay
    # untouched, and the second NaN step in a row aborts before step 2 could be checkpointed
    m = build_model(ModelConfig(d_model=32, num_layers=1, num_heads=2, d_ff=64, max_length=16), vocab_size=64)
    w0 = [p.detach().clone() for p in m.parameters()]
    learn = Learner(m, dl, task=NaNTask(), max_steps=4, cbs=[NaNGuardCB(max_bad=2), TrainMetricsCB(2),
                                                             CheckpointCB(tmp_path, save_steps=1, handle_signals=False)])
    with pytest.warns(UserWarning, match='loss is nan at step 1: skipping this update'):
        with pytest.raises(FloatingPointError, match='loss is nan at step 2: 2 bad steps in a row'): learn.fit()
    assert learn.state.step == 1 and learn.stop_reason == 'non-finite'
    assert all(torch.equal(p.detach(), q) for p, q in zip(m.parameters(), w0))
    assert sorted(p.name for p in (tmp_path/'checkpoints').iterdir()) == ['step-1']   # step 1 holds the untouched weights

def test_bad_generation_file_refused_before_any_work(tmp_path):
    g = tmp_path/'gen.jsonl'; g.write_text('{"prompt": "a", "reference": "b"}\n{"prompt": "c"}\n')
    out = tmp_path/'run'
    err = exit_message(['train', f'output_dir={out}', f'data.train_file={tmp_path}/not_there.jsonl', f'evaluation.generation_file={g}'])
    assert f"{g}, record 2: 'reference' is missing" in err
    assert not out.exists()

def test_a_refused_callback_leaves_the_folder_free_for_the_corrected_run(tmp_path, docs):
    "A refusal that needs the data (an EMA warm-up longer than a max_steps run) comes before anything is written into the folder."
    out = tmp_path/'run'
    base = tiny_overrides(out, docs, steps=3, **{'training.use_ema': 'true', 'logging.report_to': '[none]'})
    assert 'training.ema_warmup_epochs=1' in exit_message(['train', *base])
    assert not (out/'training_config.json').exists() and not (out/'checkpoints').exists()
    main(['train', *base, 'training.ema_warmup_epochs=0'])   # the corrected command, into the same folder
    assert (out/'final'/'model.safetensors').exists()

def test_contrastive_loss_gets_domain_labels_without_a_validation_split(tmp_path):
    "Domain labels reach the batches even when nothing else (sampler, per-domain evaluation) asks for them."
    f = tmp_path/'d.jsonl'
    f.write_text(''.join(json.dumps({'text': f'{w} ' * 200, 'domain': d}) + '\n' for w, d in [('def', 'code'), ('the', 'prose')] * 8))
    out = tmp_path/'run'
    learn = train(load_config(None, tiny_overrides(out, f, steps=2, **{'data.domain_field': 'domain', 'data.validation_split': 0,
                  'training.aux_contrastive_weight': 0.1, 'tokenizer.vocab_size': 300, 'logging.report_to': '[none]',
                  'training.per_device_train_batch_size': 4})))
    assert all('contrastive_loss' in r for r in learn.history if 'loss' in r)
