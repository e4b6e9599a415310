"End-to-end: a tiny pretraining run, its output folder, reloading with transformers, and the CLI."
import json, math
from pathlib import Path
import pytest, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from llm_nb.config import load_config, Config
from llm_nb.cli import train
from helpers import tiny_corpus, tiny_overrides, run_cli

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('run')
    data = tiny_corpus(tmp/'docs')
    learn = train(load_config(None, tiny_overrides(tmp/'out', data)))
    return tmp/'out', learn

def test_loss_falls_and_outputs_exist(tiny_run):
    out, learn = tiny_run
    hist = json.loads((out/'loss_history.json').read_text())
    losses = [r['loss'] for r in hist if 'loss' in r]
    assert learn.state.step == 40 and len(losses) == 8
    assert losses[-1] < losses[0] - 0.5, losses
    evals = [r for r in hist if 'eval_loss' in r]
    assert [r['step'] for r in evals] == [20, 40]
    assert evals[-1]['eval_perplexity'] < 1024 / 2          # an untrained model scores about the vocabulary size
    assert math.isclose(evals[-1]['eval_perplexity'], math.exp(evals[-1]['eval_loss']), rel_tol=1e-6)
    for key in ('step', 'epoch', 'loss', 'learning_rate', 'grad_norm', 'grad_clip_ratio', 'tokens_per_sec',
                'samples_per_sec', 'peak_memory_mb'):
        assert key in hist[0], key
    for f in ('final/config.json', 'final/model.safetensors', 'final/tokenizer.json', 'final/generation_config.json',
              'best/model.safetensors', 'plots/loss.png', 'training_config.json', 'checkpoints/step-40/manifest.json'):
        assert (out/f).exists(), f
    assert list((out/'tensorboard').glob('events.out.tfevents.*'))
    saved = load_config(out/'training_config.json')
    assert saved.training.max_steps == 40 and saved.model.num_layers == 2

def test_final_reloads_with_transformers(tiny_run):
    out, learn = tiny_run
    model = AutoModelForCausalLM.from_pretrained(out/'final')
    tok = AutoTokenizer.from_pretrained(out/'final')
    ids = tok("The state of the Union is", return_tensors='pt')
    trained = learn.raw_model.state_dict()
    for k, v in model.state_dict().items(): assert torch.equal(v, trained[k]), k
    learn.raw_model.eval()   # the trained model's forward runs under the run's autocast (bf16 where native): compare likewise
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=learn.acc.mixed_precision == 'bf16'):
        torch.testing.assert_close(model(**ids).logits.float(), learn.raw_model(**ids).logits.float())
    gen = model.generate(**ids, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] == ids['input_ids'].shape[1] + 10
    assert tok.decode(gen[0]).startswith("The state of the Union is")

def test_evaluate_cli_last_line_is_json(tiny_run):
    out, learn = tiny_run
    r = run_cli('evaluate', '--model_path', out/'final')
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(res) == {'loss', 'perplexity', 'token_accuracy', 'bpb'}   # interface.md's three, and bits per byte beside them
    # the same validation split as training, so the same loss and bits per byte as the final evaluation
    assert res['loss'] == pytest.approx(learn.history[-1]['eval_loss'], abs=2e-3)
    assert res['bpb'] == pytest.approx(learn.history[-1]['eval_bpb'], abs=2e-3)
    assert 0 < res['token_accuracy'] < 1

def test_generate_cli(tiny_run):
    out, _ = tiny_run
    r = run_cli('generate', '--model_path', out/'final', '--prompt', 'Fellow citizens', '--max_new_tokens', '8', '--temperature', '0')
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith('Fellow citizens') and len(r.stdout.strip()) > len('Fellow citizens')

def test_default_train_command(tmp_path):
    "`llm_nb train` with nothing but a step limit: the default model on the default corpus."
    r = run_cli('train', f'output_dir={tmp_path}', 'training.max_steps=2', 'training.per_device_eval_batch_size=64')
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((tmp_path/'training_config.json').read_text())
    assert cfg['model'] == {**cfg['model'], 'd_model': 384, 'num_layers': 6, 'max_length': 256} and cfg['data']['train_file'] is None
    hist = json.loads((tmp_path/'loss_history.json').read_text())
    assert hist[-1]['step'] == 2 and 'eval_loss' in hist[-1]
    assert 'GPT2LMHeadModel: 13.' in r.stdout and 'GFLOPs/token' in r.stdout
    assert (tmp_path/'final'/'model.safetensors').exists()

def test_time_budget_stops_checkpoints_and_exports(tmp_path, capsys):
    data = tiny_corpus(tmp_path/'docs', n=4)
    # a constant rate: the budget itself ends the run (a WSD decay planned for the budget may end it a step early: test_budget.py)
    learn = train(load_config(None, tiny_overrides(tmp_path/'out', data, steps=100000, **{'training.max_training_hours': 0.0005,
                                                       'training.eval_steps': 100000, 'training.lr_scheduler_type': 'constant_with_warmup'})))
    assert learn.stop_reason == 'time-limit' and 0 < learn.state.step < 100000
    assert 1.8 <= learn.state.elapsed < 30
    assert 'Time budget of 0.00h reached' in capsys.readouterr().out
    state = json.loads((tmp_path/'out'/'checkpoints'/'time-limit'/'trainer_state.json').read_text())['state']
    assert state['step'] == learn.state.step
    assert (tmp_path/'out'/'final'/'model.safetensors').exists()
    assert 'eval_loss' in learn.history[-1]   # evaluated at the end, as any run

def test_compiled_run_matches_eager_and_exports_plain_names(tmp_path):
    "`training.compile=true`: the same losses as eager (to kernel rounding), and `final/` has the plain parameter names."
    data = tiny_corpus(tmp_path/'docs', n=4)
    kw = {'training.logging_steps': 1, 'training.eval_steps': 1000, 'training.mixed_precision': 'no', 'logging.report_to': '[none]'}
    eager = train(load_config(None, tiny_overrides(tmp_path/'eager', data, steps=4, **kw)))
    comp = train(load_config(None, tiny_overrides(tmp_path/'comp', data, steps=4, **{'training.compile': True, **kw})))
    le, lc = [r['loss'] for r in eager.history if 'loss' in r], [r['loss'] for r in comp.history if 'loss' in r]
    assert len(le) == len(lc) == 4 and all(abs(a - b) < 1e-3 for a, b in zip(le, lc)), (le, lc)
    m = AutoModelForCausalLM.from_pretrained(tmp_path/'comp'/'final')
    assert set(m.state_dict()) == set(eager.raw_model.state_dict())
