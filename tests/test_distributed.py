"""`llm_nb train` under `accelerate launch` with two CPU processes (gloo): the same loss curve as one process with
the same global batch, one writer (rank 0), a resume that continues the curve, and rank 0's generation metrics on every rank."""
import json, os, subprocess
from pathlib import Path
import pytest, torch
from llm_nb.distributed import launch_command
from helpers import tiny_corpus, tiny_overrides, run_cli

STEPS = 12
def launch(n_proc, *args, **env_kw):
    cmd, env = launch_command(n_proc, *args, cpu=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**env, **env_kw})

def overrides(out, data, batch, **kw):
    "Every run also scores generations (`pairs.jsonl` beside the data) and keeps the best model by `eval_bleu`."
    return tiny_overrides(out, data, steps=STEPS, **{'training.per_device_train_batch_size': batch, 'training.logging_steps': 1,
                          'training.eval_steps': 6, 'training.save_steps': 6, 'training.mixed_precision': 'no',
                          'logging.report_to': '[jsonl]', 'evaluation.generation_file': Path(data).parent/'pairs.jsonl',
                          'evaluation.generation_max_new_tokens': 8, 'training.metric_for_best_model': 'eval_bleu', **kw})

def history(out): return json.loads((Path(out)/'loss_history.json').read_text())
def curve(out, key='loss'): return {r['step']: r[key] for r in history(out) if key in r}

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('ddp')
    data = tiny_corpus(tmp/'docs', n=4)
    (tmp/'pairs.jsonl').write_text('{"prompt": "The state of the", "reference": "Union is strong"}\n'
                                   '{"prompt": "My fellow", "reference": "Americans, we meet tonight"}\n')
    single = run_cli('train', *overrides(tmp/'single', data, 8), env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert single.returncode == 0, single.stderr[-3000:]
    # a cache of its own: both ranks find no tokenizer and no token store, and must make each once, without deadlock
    ddp = launch(2, 'train', *overrides(tmp/'ddp', data, 4), LLM_NB_CACHE=str(tmp/'ddp-cache'))
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-3000:]
    return tmp, data, ddp

def test_two_ranks_prepare_the_data_once(runs):
    tmp, _, ddp = runs
    made = {kind: [p.name for p in (tmp/'ddp-cache'/kind).iterdir() if p.is_dir()] for kind in ('stores', 'tokenizers')}
    assert [len(v) for v in made.values()] == [1, 1], made                    # one store and one tokenizer, shared by the ranks
    assert not any(n.endswith('.partial') for v in made.values() for n in v)  # both complete

def test_two_ranks_match_one_process_with_the_same_global_batch(runs):
    tmp, _, ddp = runs
    one, two = curve(tmp/'single'), curve(tmp/'ddp')
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    for s in one: assert abs(one[s] - two[s]) < 2e-3, (s, one[s], two[s])
    e1, e2 = curve(tmp/'single', 'eval_loss'), curve(tmp/'ddp', 'eval_loss')
    assert sorted(e1) == sorted(e2) == [6, 12]
    for s in e1: assert abs(e1[s] - e2[s]) < 2e-3, (s, e1[s], e2[s])

def test_only_rank_zero_writes(runs):
    tmp, _, _ = runs
    out = tmp/'ddp'
    lines = (out/'metrics.jsonl').read_text().splitlines()
    assert len(lines) == len(history(out)), 'every record written once, by one rank'
    assert sorted(p.name for p in (out/'checkpoints').iterdir()) == ['step-12', 'step-6']
    assert (out/'final'/'model.safetensors').exists()

def test_every_rank_gets_rank_zeros_generation_metrics(runs):
    """Only rank 0 generates; rank 1 gets its `eval_bleu` by broadcast. Without it, rank 1's BestModelCB (metric_for_best_model=eval_bleu)
    would warn that the metric is missing, or (before the warning) raise KeyError while rank 0 trains on."""
    tmp, _, ddp = runs
    assert sorted(curve(tmp/'ddp', 'eval_bleu')) == [6, 12]
    assert 'eval_bleu is missing' not in ddp.stderr and 'GenerationEvalCB' not in ddp.stderr, ddp.stderr[-3000:]
    assert (tmp/'ddp'/'best'/'model.safetensors').exists()

def test_resume_under_ddp_continues_the_curve(runs):
    tmp, data, _ = runs
    r = launch(2, 'train', *overrides(tmp/'resumed', data, 4, **{'training.resume_from': tmp/'ddp'/'checkpoints'/'step-6'}))
    assert r.returncode == 0, r.stderr[-3000:]
    full, resumed = curve(tmp/'ddp'), curve(tmp/'resumed')
    for s in range(7, STEPS + 1): assert abs(full[s] - resumed[s]) < 1e-5, (s, full[s], resumed[s])

def test_time_budget_under_ddp_stops_every_rank_at_the_same_step(runs):
    "The ranks share rank 0's clock and every rank sees the same number of batches per epoch, so none waits forever for the others."
    tmp, data, _ = runs
    out = tmp/'budget'
    r = launch(2, 'train', *overrides(out, data, 4, **{'training.max_steps': 100000, 'training.max_training_hours': 0.002,
                                                        'training.eval_steps': 100000, 'training.save_steps': 100000}))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    last = history(out)[-1]
    assert 10 < last['step'] < 100000 and (out/'checkpoints'/'time-limit').exists() and (out/'final'/'model.safetensors').exists()
    assert any(p.name.startswith('epoch-') for p in (out/'checkpoints').iterdir()), 'the run crossed epoch boundaries'

# ---------------------------------------------------------------- FSDP2 (training.fsdp=true)
def fsdp_overrides(out, data, batch, **kw):
    "The DDP runs' settings without generation (rank 0 generates alone, which a sharded model cannot)."
    return tiny_overrides(out, data, steps=STEPS, **{'training.per_device_train_batch_size': batch, 'training.logging_steps': 1,
                          'training.eval_steps': 6, 'training.save_steps': 6, 'training.mixed_precision': 'no',
                          'logging.report_to': '[jsonl]', **kw})

@pytest.fixture(scope='module')
def fsdp(runs):
    tmp, data, _ = runs
    sharded = launch(2, 'train', *fsdp_overrides(tmp/'fsdp', data, 4, **{'training.fsdp': 'true'}))
    assert sharded.returncode == 0, sharded.stdout[-2000:] + sharded.stderr[-3000:]
    ck = tmp/'fsdp'/'checkpoints'/'step-6'
    again = launch(2, 'train', *fsdp_overrides(tmp/'fsdp-resumed', data, 4, **{'training.fsdp': 'true', 'training.resume_from': ck}))
    assert again.returncode == 0, again.stderr[-3000:]
    one = run_cli('train', *fsdp_overrides(tmp/'fsdp-on-one', data, 8, **{'training.resume_from': ck}), env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert one.returncode == 0, one.stderr[-3000:]
    return tmp

def test_fsdp_two_ranks_match_one_process(fsdp):
    one, two = curve(fsdp/'single'), curve(fsdp/'fsdp')
    assert sorted(two) == list(range(1, STEPS + 1))
    for s in one: assert abs(one[s] - two[s]) < 2e-3, (s, one[s], two[s])
    ev1, ev2 = curve(fsdp/'single', 'eval_loss'), curve(fsdp/'fsdp', 'eval_loss')
    assert sorted(ev2) == [6, 12] and all(abs(ev1[s] - ev2[s]) < 2e-3 for s in ev2)   # every validation block, once

def test_fsdp_checkpoint_resumes_exactly_on_the_same_ranks_and_on_one_process(fsdp):
    full, resumed, one = curve(fsdp/'fsdp'), curve(fsdp/'fsdp-resumed'), curve(fsdp/'fsdp-on-one')
    assert [resumed[s] for s in range(7, STEPS + 1)] == [full[s] for s in range(7, STEPS + 1)]   # bit for bit
    for s in range(7, STEPS + 1): assert abs(one[s] - full[s]) < 2e-3, (s, one[s], full[s])     # gathered: any number of ranks

def test_fsdp_final_is_the_gathered_model(fsdp):
    from transformers import AutoModelForCausalLM
    from safetensors.torch import load_file
    model = AutoModelForCausalLM.from_pretrained(fsdp/'fsdp'/'final')
    gathered = load_file(fsdp/'fsdp'/'checkpoints'/'step-12'/'model.safetensors')
    sd = model.state_dict()
    assert gathered and all(torch.equal(sd[k], v) for k, v in gathered.items())
    assert json.loads((fsdp/'fsdp'/'final'/'config.json').read_text())['architectures'] == ['GPT2LMHeadModel']
    assert json.loads((fsdp/'fsdp'/'checkpoints'/'step-12'/'trainer_state.json').read_text())['sharded'] is True

def test_fsdp_refusals(tmp_path):
    from llm_nb.cli import main
    with pytest.raises(SystemExit) as e: main(['train', f'output_dir={tmp_path}/one', 'training.fsdp=true'])
    assert 'training.fsdp=true in one process: there is nothing to shard over' in str(e.value.code)
    assert not (tmp_path/'one').exists()
    with pytest.raises(SystemExit) as e: main(['train', f'output_dir={tmp_path}/ema', 'training.fsdp=true', 'training.use_ema=true'])
    assert 'training.fsdp=true with training.use_ema: not supported under FSDP yet' in str(e.value.code)
