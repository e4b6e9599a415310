"""`llm_nb train` end to end for each recipe beyond pretraining: SFT on chats, LoRA on a local base model then
`evaluate` and `merge-lora`, and pretraining with the samplers switched on."""
import json, math, random
from pathlib import Path
import pytest, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from llm_nb.config import load_config
from llm_nb.cli import train
from llm_nb.tokenisation import load_tokenizer
from llm_nb.config import TokenizerConfig
from llm_nb.testing import tiny_gpt2
from helpers import tiny_overrides, run_cli, tiny_corpus

def chats(path, n=48):
    rng = random.Random(0)
    rows = [dict(messages=[dict(role='user', content=f'What is {a} plus {b}?'), dict(role='assistant', content=f'{a} plus {b} is {a + b}.')])
            for a, b in ((rng.randint(0, 50), rng.randint(0, 50)) for _ in range(n))]
    Path(path).write_text(json.dumps(rows)); return path

@pytest.fixture(scope='module')
def base(tmp_path_factory):
    "A tiny random GPT-2 with GPT-2's BPE, saved as a local HF folder: the 'pretrained' model LoRA adapts."
    d = tmp_path_factory.mktemp('base')
    tok = load_tokenizer(TokenizerConfig(name_or_path='gpt2'))
    tiny_gpt2(len(tok), n_embd=64, n_positions=128, dropout=0.1, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id).save_pretrained(d)
    tok.save_pretrained(d)
    return d

def common(out, data, steps=8, **kw):
    return tiny_overrides(out, data, steps=steps, **{'training.eval_steps': steps, 'training.save_steps': 4, 'logging.report_to': '[none]',
                          'training.per_device_train_batch_size': 8, 'training.per_device_eval_batch_size': 8, **kw})

def test_sft_masks_prompts_and_saves_a_chat_tokenizer(tmp_path):
    learn = train(load_config(None, common(tmp_path/'out', chats(tmp_path/'chats.json'), **{'training_type': 'sft', 'model.max_length': 64})))
    batch = next(iter(learn.train_dl))
    assert (batch['labels'] == -100).any() and (batch['labels'] != -100).any(), 'prompt tokens masked, answers trained'
    tok = AutoTokenizer.from_pretrained(tmp_path/'out'/'final')
    assert tok.chat_template and '<|im_end|>' in tok.get_vocab()
    AutoModelForCausalLM.from_pretrained(tmp_path/'out'/'final')
    hist = json.loads((tmp_path/'out'/'loss_history.json').read_text())
    assert 'eval_loss' in hist[-1]

def test_lora_then_evaluate_and_merge(tmp_path, base):
    out = tmp_path/'out'
    learn = train(load_config(None, common(out, chats(tmp_path/'chats.json'), steps=6, **{
        'training_type': 'lora', 'model.name_or_path': base, 'tokenizer.name_or_path': base, 'model.max_length': 64,
        'lora.r': 4, 'lora.lora_alpha': 8, 'training.learning_rate': 1e-2})))
    assert (out/'final'/'adapter_config.json').exists() and not (out/'final'/'model.safetensors').exists()
    assert (out/'checkpoints'/'step-4'/'adapter.safetensors').exists() and not (out/'checkpoints'/'step-4'/'model.safetensors').exists()
    r = run_cli('evaluate', '--model_path', out/'final', '--data', tiny_corpus(tmp_path/'docs', n=1), '--batch_size', '4')
    assert r.returncode == 0, r.stderr[-2000:]
    assert set(json.loads(r.stdout.strip().splitlines()[-1])) == {'loss', 'perplexity', 'token_accuracy', 'bpb'}
    r = run_cli('merge-lora', '--adapter', out/'final', '--output', tmp_path/'merged')
    assert r.returncode == 0, r.stderr[-2000:]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path/'merged')
    from peft import AutoPeftModelForCausalLM
    adapted = AutoPeftModelForCausalLM.from_pretrained(out/'final').eval()
    x = torch.randint(0, 50000, (1, 12))
    torch.testing.assert_close(merged.eval()(x).logits, adapted(input_ids=x).logits, atol=1e-4, rtol=1e-4)
    moved = (adapted(input_ids=x).logits[..., :50257] - AutoModelForCausalLM.from_pretrained(base)(x).logits).abs().max()
    assert moved > 1e-3, 'the adapter changed the model'

def test_pretraining_with_samplers(tmp_path):
    docs = [f.read_text() for f in sorted(tiny_corpus(tmp_path/'docs', n=6).glob('*.txt'))]
    rows = [dict(text=t, domain='old' if i < 3 else 'new', quality=0.3 + 0.1 * i) for i, t in enumerate(docs)]
    (tmp_path/'d.jsonl').write_text('\n'.join(json.dumps(r) for r in rows))
    learn = train(load_config(None, common(tmp_path/'out', tmp_path/'d.jsonl', steps=10, **{
        'data.domain_field': 'domain', 'data.quality_field': 'quality', 'sampling.use_domain_stratified': True,
        'sampling.use_quality_weighting': True, 'sampling.use_dynamic_curriculum': True, 'sampling.dynamic_curriculum_warmup': 0,
        'training.logging_steps': 5, 'data.validation_split': 0.34})))
    hist = json.loads((tmp_path/'out'/'loss_history.json').read_text())
    last = {k: v for r in hist for k, v in r.items()}
    assert {'difficult_ratio', 'eval_old_loss', 'eval_new_loss'} <= set(last), sorted(last)
    b = next(iter(learn.train_dl))
    assert 'index' in b and 'domain' in b

def test_techniques_switched_on_from_the_command_line(tmp_path):
    data = tiny_corpus(tmp_path/'docs', n=4)
    learn = train(load_config(None, common(tmp_path/'out', data, steps=8, **{
        'training.use_ema': True, 'training.ema_warmup_epochs': 0, 'training.use_rdrop': True, 'model.dropout': 0.1,
        'training.label_smoothing': 0.1, 'training.use_llrd': True, 'training.early_stopping_patience': 5,
        'training.sample_prompts': '["Fellow citizens"]', 'training.sample_every_steps': 4, 'training.logging_steps': 4})))
    names = {type(c).__name__ for c in learn.cbs}
    assert {'EMACB', 'EarlyStoppingCB', 'SampleGenerationCB', 'NaNGuardCB'} <= names
    assert type(learn.task).__name__ == 'RDropTask' and len(learn.opt.param_groups) > 2   # R-Drop; one group per layer (LLRD)
    hist = json.loads((tmp_path/'out'/'loss_history.json').read_text())
    assert any('kl' in r and r['kl'] > 0 for r in hist)
    assert (tmp_path/'out'/'checkpoints'/'step-4'/'ema.safetensors').exists()
    assert len((tmp_path/'out'/'samples.jsonl').read_text().splitlines()) == 2

def test_lr_find_command(tmp_path):
    data = tiny_corpus(tmp_path/'docs', n=4)
    r = run_cli('lr-find', '--num_steps', '30', *common(tmp_path/'out', data))
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'Suggested learning rate' in r.stdout and (tmp_path/'out'/'plots'/'lr_find.png').stat().st_size > 1000
    assert not (tmp_path/'out'/'final').exists(), 'lr-find trains nothing'

def pairs(path, n=24):
    rng = random.Random(1)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        rows.append(dict(prompt=f'What is {a} plus {b}?', chosen=f'{a} plus {b} is {a + b}.', rejected=f'{a} plus {b} is {a + b + 7}.'))
    Path(path).write_text(json.dumps(rows)); return path

@pytest.mark.parametrize('how', ['frozen_copy', 'precomputed', 'lora'])
def test_dpo_from_the_command_line(tmp_path, base, how):
    kw = {'training_type': 'dpo', 'model.name_or_path': base, 'tokenizer.name_or_path': base, 'dpo.max_length': 64,
          'dpo.max_prompt_length': 32, 'training.logging_steps': 2, 'training.learning_rate': 1e-3, 'data.validation_split': 0.25,
          **({'dpo.precompute_ref_log_probs': True} if how == 'precomputed' else {}),
          **({'dpo.use_lora': True, 'lora.r': 4, 'training.learning_rate': 1e-2} if how == 'lora' else {})}
    learn = train(load_config(None, common(tmp_path/'out', pairs(tmp_path/'pairs.json'), steps=6, **kw)))
    hist = json.loads((tmp_path/'out'/'loss_history.json').read_text())
    last = {k: v for r in hist for k, v in r.items()}
    assert {'rewards/chosen', 'rewards/rejected', 'rewards/margins', 'rewards/accuracies', 'logps/chosen', 'logps/rejected', 'log_ratio_per_token',
            'eval_rewards/accuracies'} <= set(last), sorted(last)
    first_loss = next(r['loss'] for r in hist if 'loss' in r)
    assert abs(first_loss - math.log(2)) < 0.05, 'policy == reference at the start: the DPO loss is log 2'
    final = tmp_path/'out'/'final'
    assert (final/('adapter_config.json' if how == 'lora' else 'model.safetensors')).exists()
