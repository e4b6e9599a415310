"""`llm_nb train` under `accelerate launch` with two CPU processes (gloo): the same loss curve as one process with
the same global batch, one writer (rank 0), a resume that continues the curve, and rank 0's generation metrics on every rank."""
import json, os, signal, subprocess, time
from pathlib import Path
import pytest, torch
from llm_nb.distributed import launch_command
from helpers import tiny_corpus, tiny_overrides, run_cli

STEPS = 12
REPO = Path(__file__).resolve().parents[1]
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

def _step_saved(out, name):
    return (Path(out)/'checkpoints'/name/'manifest.json').exists()   # renamed into place complete: its manifest is there

def launch_and_kill(out, args, when):
    "Launch `llm_nb train args` on 2 ranks and kill -9 the whole job (launcher and ranks) as soon as `when(out)` holds."
    cmd, env = launch_command(2, 'train', *args, cpu=True)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not when(out) and p.poll() is None and time.time() < deadline: time.sleep(0.05)
    assert p.poll() is None, f'the run ended before it could be killed: {p.stderr.read()[-2000:]}'
    os.killpg(p.pid, signal.SIGKILL); p.wait()
    assert not (Path(out)/'final').exists()

@pytest.fixture(scope='module')
def fsdp(runs):
    tmp, data, _ = runs
    on = {'training.fsdp': 'true'}
    # the accelerate config-file route; the killed run below takes the training.fsdp=true route and must match it bit for bit
    cmd, env = launch_command(2, 'train', *fsdp_overrides(tmp/'fsdp', data, 4), cpu=True)
    i = cmd.index('--multi_gpu')
    cmd[i:i + 1] = ['--config_file', str(REPO/'configs'/'accelerate'/'fsdp_cpu.yaml')]
    sharded = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert sharded.returncode == 0, sharded.stdout[-2000:] + sharded.stderr[-3000:]
    # the same run killed with SIGKILL once step 6 is saved, then continued from the newest complete checkpoint
    launch_and_kill(tmp/'fsdp-killed', fsdp_overrides(tmp/'fsdp-killed', data, 4, **on), lambda o: _step_saved(o, 'step-6'))
    again = launch(2, 'train', *fsdp_overrides(tmp/'fsdp-killed', data, 4, **on, **{'training.resume_from': 'latest'}))
    assert again.returncode == 0, again.stderr[-3000:]
    ck = tmp/'fsdp'/'checkpoints'/'step-6'
    one = run_cli('train', *fsdp_overrides(tmp/'fsdp-on-one', data, 8, **{'training.resume_from': ck}), env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert one.returncode == 0, one.stderr[-3000:]
    assert 'was written by 2 process(es) and continues on 1' in one.stdout + one.stderr   # said: not bit for bit
    # the single-process run's checkpoint (unsharded files) continued on 2 sharded ranks
    grown = launch(2, 'train', *fsdp_overrides(tmp/'fsdp-from-single', data, 4, **on, **{'training.resume_from': tmp/'single'/'checkpoints'/'step-6'}))
    assert grown.returncode == 0, grown.stderr[-3000:]
    return tmp

def test_fsdp_two_ranks_match_one_process(fsdp):
    one, two = curve(fsdp/'single'), curve(fsdp/'fsdp')
    assert sorted(two) == list(range(1, STEPS + 1))
    for s in one: assert abs(one[s] - two[s]) < 2e-3, (s, one[s], two[s])
    ev1, ev2 = curve(fsdp/'single', 'eval_loss'), curve(fsdp/'fsdp', 'eval_loss')
    assert sorted(ev2) == [6, 12] and all(abs(ev1[s] - ev2[s]) < 2e-3 for s in ev2)   # every validation block, once

def full_state(ck) -> dict:
    "A sharded checkpoint's state, consolidated by torch's own converter (not llm_nb's loader)."
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    dcp_to_torch_save(Path(ck)/'sharded', Path(ck).parent/f'{Path(ck).name}.pt')
    return torch.load(Path(ck).parent/f'{Path(ck).name}.pt', weights_only=True)

def test_fsdp_checkpoints_are_sharded_by_every_rank_and_verified(fsdp):
    ck = fsdp/'fsdp'/'checkpoints'/'step-12'
    files = sorted(p.name for p in (ck/'sharded').iterdir())
    assert files == ['.metadata', '__0_0.distcp', '__1_0.distcp'], files   # one file per rank, written in parallel
    assert not (ck/'model.safetensors').exists() and not (ck/'optimizer.pt').exists()
    assert {'sharded/.metadata', 'sharded/__0_0.distcp', 'sharded/__1_0.distcp'} <= set(json.loads((ck/'manifest.json').read_text()))
    assert json.loads((ck/'trainer_state.json').read_text())['sharded'] is True
    assert json.loads((fsdp/'fsdp'/'training_config.json').read_text())['training']['fsdp'] is True   # the config file's FSDP, recorded
    assert not [p.name for p in (fsdp/'fsdp'/'checkpoints').iterdir() if p.name.startswith('.')]   # no temporary folder left

def test_fsdp_kill9_resumes_exactly_and_continues_on_other_rank_counts(fsdp):
    from safetensors.torch import load_file
    full, resumed, one, grown, single = (curve(fsdp/n) for n in ('fsdp', 'fsdp-killed', 'fsdp-on-one', 'fsdp-from-single', 'single'))
    assert resumed == full                                                                        # bit for bit, every step
    a, b = load_file(fsdp/'fsdp'/'final'/'model.safetensors'), load_file(fsdp/'fsdp-killed'/'final'/'model.safetensors')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for s in range(7, STEPS + 1): assert abs(one[s] - full[s]) < 2e-3, (s, one[s], full[s])      # 2 sharded ranks → 1 process
    for s in range(7, STEPS + 1): assert abs(grown[s] - single[s]) < 2e-3, (s, grown[s], single[s])  # 1 process → 2 sharded ranks

def test_fsdp_final_is_the_gathered_model(fsdp):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(fsdp/'fsdp'/'final')
    saved = full_state(fsdp/'fsdp'/'checkpoints'/'step-12')['model']
    sd = model.state_dict()
    assert saved.keys() <= sd.keys() and all(torch.equal(sd[k], v) for k, v in saved.items())
    assert json.loads((fsdp/'fsdp'/'final'/'config.json').read_text())['architectures'] == ['GPT2LMHeadModel']

def test_fsdp_signal_stops_every_rank_after_the_same_step_and_saves_their_shards(runs):
    "SIGTERM to the whole job (a scheduler, or Ctrl-C's SIGINT): every rank gets it, and again from the launcher."
    from llm_nb.checkpoint import verify_folder
    tmp, data, _ = runs
    out = tmp/'fsdp-signal'
    cmd, env = launch_command(2, 'train', *fsdp_overrides(out, data, 4, **{'training.fsdp': 'true', 'training.max_steps': 400,
                              'training.save_steps': 1000, 'training.eval_steps': 1000}), cpu=True)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while p.poll() is None and time.time() < deadline and len(history(out) if (out/'loss_history.json').exists() else []) < 3: time.sleep(0.05)
    assert p.poll() is None, p.stderr.read()[-3000:]
    os.killpg(p.pid, signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode != 0 and not (out/'final').exists()
    ck = verify_folder(out/'checkpoints'/'interrupted')   # complete: both ranks wrote their shards
    assert sorted(f.name for f in (ck/'sharded').iterdir()) == ['.metadata', '__0_0.distcp', '__1_0.distcp']
    assert 3 <= json.loads((ck/'trainer_state.json').read_text())['state']['step'] < 400
    assert stdout.count('Received SIGTERM') == 1, stdout[-2000:]   # said once, by the main process

LORA_STEPS = 8
def lora_overrides(out, data, base, batch, **kw):
    return fsdp_overrides(out, data, batch, **{'training_type': 'lora', 'model.name_or_path': base, 'training.max_steps': LORA_STEPS,
                          'training.eval_steps': 4, 'training.save_steps': 4, 'model.gradient_checkpointing': 'true', **kw})

def sft_overrides(out, rows, base, batch, **kw):
    return fsdp_overrides(out, rows, batch, **{'training_type': 'sft', 'model.name_or_path': base, 'training.max_steps': 6,
                          'training.eval_steps': 3, 'training.save_steps': 3, 'data.validation_split': 0.25, **kw})

def dpo_overrides(out, pairs, base, batch, **kw):
    return fsdp_overrides(out, pairs, batch, **{'training_type': 'dpo', 'model.name_or_path': base, 'training.max_steps': 6,
                          'training.eval_steps': 3, 'training.save_steps': 3, 'data.validation_split': 0.25, **kw})

@pytest.fixture(scope='module')
def fsdp_finetunes(fsdp):
    """Full SFT and LoRA SFT (chat messages: new tokens, resized embeddings; LoRA with activation checkpointing) and DPO (full,
    against a frozen reference copy), each on 2 sharded ranks and on 1 process."""
    tmp, base = fsdp, fsdp/'fsdp'/'final'
    pairs = tmp/'pairs-dpo.jsonl'
    pairs.write_text(''.join(json.dumps(dict(prompt=f'Question {i}: the state of the', chosen=' Union is strong and growing.',
                                              rejected=' weather is unknown to me.')) + '\n' for i in range(16)))
    chats = tmp/'chats.jsonl'
    chats.write_text(''.join(json.dumps({'messages': [{'role': 'user', 'content': f'Say something about number {i}.'},
                                                     {'role': 'assistant', 'content': f'The number {i} is a fine number.'}]}) + '\n' for i in range(32)))
    one_proc = {**os.environ, 'OMP_NUM_THREADS': '1'}
    recipes = {'sft': lambda o, b, **k: sft_overrides(o, chats, base, b, **k), 'lora': lambda o, b, **k: lora_overrides(o, chats, base, b, **k),
            'dpo': lambda o, b, **k: dpo_overrides(o, pairs, base, b, **k)}
    for name, args in recipes.items():
        r = run_cli('train', *args(tmp/f'{name}-one', 8), env=one_proc)
        assert r.returncode == 0, r.stderr[-3000:]
        r = launch(2, 'train', *args(tmp/f'{name}-fsdp', 4, **{'training.fsdp': 'true'}))
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return tmp

@pytest.mark.parametrize('name', ['sft', 'lora', 'dpo'])
def test_fsdp_finetunes_match_one_process(fsdp_finetunes, name):
    one, two = curve(fsdp_finetunes/f'{name}-one'), curve(fsdp_finetunes/f'{name}-fsdp')
    assert sorted(two) == sorted(one) and len(two) >= 6
    for s in one: assert abs(one[s] - two[s]) < 2e-3, (s, one[s], two[s])

def test_fsdp_lora_saves_the_adapter_only(fsdp_finetunes):
    from safetensors.torch import load_file
    from llm_nb.lora import merge_lora
    tmp = fsdp_finetunes
    final, one = tmp/'lora-fsdp'/'final', tmp/'lora-one'/'final'
    assert (final/'adapter_model.safetensors').exists() and not (final/'model.safetensors').exists()
    adapter, ref = load_file(final/'adapter_model.safetensors'), load_file(one/'adapter_model.safetensors')
    assert adapter.keys() == ref.keys() and any('lora_' in k for k in adapter)   # the same files as one process (resized embeddings too)
    ck = full_state(tmp/'lora-fsdp'/'checkpoints'/f'step-{LORA_STEPS}')['model']
    assert ck and all('lora_' in k or 'trainable_tokens' in k for k in ck)   # the frozen base is not in the checkpoint
    mine = {k.replace('.default', ''): v for k, v in ck.items()}
    assert all(torch.equal(adapter[k], mine[k]) for k in adapter if k in mine)   # final/ = the sharded state at the last step
    frozen = [k for k in adapter if 'base_layer' in k]   # the resized token embeddings and head, frozen: equal bit for bit
    assert frozen and all(torch.equal(adapter[k], ref[k]) for k in frozen)   # (the trained tensors: the curve test above)
    merged = merge_lora(final)[0]                                            # the base plus the adapter, as users load them
    assert merged.get_input_embeddings().num_embeddings == adapter[frozen[0]].shape[0]

def test_fsdp_refusals(tmp_path, monkeypatch):
    from llm_nb.cli import main
    with pytest.raises(SystemExit) as e: main(['train', f'output_dir={tmp_path}/one', 'training.fsdp=true'])
    assert 'training.fsdp=true in one process: there is nothing to shard over' in str(e.value.code)
    assert not (tmp_path/'one').exists()
    with pytest.raises(SystemExit) as e: main(['train', f'output_dir={tmp_path}/ema', 'training.fsdp=true', 'training.use_ema=true'])
    assert 'training.fsdp=true with training.use_ema: not supported under FSDP' in str(e.value.code)
    # an accelerate FSDP config asking for what llm_nb cannot do: refused by the file's key, before any work
    monkeypatch.setenv('ACCELERATE_USE_FSDP', 'true'); monkeypatch.setenv('FSDP_VERSION', '2'); monkeypatch.setenv('FSDP_OFFLOAD_PARAMS', 'true')
    with pytest.raises(SystemExit) as e: main(['train', f'output_dir={tmp_path}/offload'])
    assert "accelerate's FSDP config: fsdp_offload_params: true" in str(e.value.code) and not (tmp_path/'offload').exists()
