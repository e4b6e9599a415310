"Each training technique proved by its numerical effect: closed forms, torch/HF references, or an equivalent run."
import dataclasses, json, math, re, time, warnings
from types import SimpleNamespace
import pytest, torch, torch.nn.functional as F
from torch import nn
from llm_nb.config import TrainingConfig
from llm_nb.loop import (Learner, TrainState, ClipGradCB, NaNGuardCB, TimeBudgetCB, budget_status, ProgressCB, EvalCB, make_scheduler, param_groups, warmup_for)
from llm_nb.tasks import LMTask
from llm_nb.callback import CancelFit, Callback
from llm_nb.losses import causal_lm_loss, n_targets
from llm_nb.techniques import (EMACB, RDropTask, EarlyStoppingCB, OffloadAdamW, SampleGenerationCB, CodeContrastiveCB,
                               llrd_param_groups, build_optimizer, supcon_loss,
                               technique_callbacks, technique_task)
from llm_nb.lr_find import lr_find
from llm_nb.model import enable_gradient_checkpointing
from llm_nb.testing import tiny_gpt2, tiny_llama, tiny_rows, tiny_dl

def flat(m): return torch.cat([p.detach().flatten() for p in m.parameters()])

# ---------------------------------------------------------------- EMA
def test_ema_eval_export_and_checkpoint_tensors(tmp_path):
    m = tiny_gpt2()
    ema = EMACB(decay=0.7, start_step=1)
    learn = Learner(m, tiny_dl(), tiny_dl(8, seed=1), opt=torch.optim.AdamW(m.parameters(), lr=1e-2), max_steps=5,
                    mixed_precision='no', cbs=[EvalCB(2), ema])
    learn.fit()
    for p, s in zip(m.parameters(), ema.shadow): assert torch.equal(p.detach(), s)   # export uses EMA weights
    raw = [r.clone() for r in ema.raw]
    assert any(not torch.equal(r, s) for r, s in zip(raw, ema.shadow))
    # evaluation at step 2 used the EMA weights of step 2 but training continued from the raw ones:
    # the raw weights are those of a run without EMA
    m2 = tiny_gpt2()
    Learner(m2, tiny_dl(), tiny_dl(8, seed=1), opt=torch.optim.AdamW(m2.parameters(), lr=1e-2), max_steps=5, mixed_precision='no',
            cbs=[EvalCB(2)]).fit()
    for r, p in zip(raw, m2.parameters()): torch.testing.assert_close(r, p.detach(), rtol=0, atol=1e-6)
    # shadow tensors round-trip through save_tensors / load_tensors
    ema.save_tensors(tmp_path)
    other = EMACB(0.7); other.load_tensors(tmp_path); other.before_validate(learn)   # swaps the loaded shadow in
    for a, b in zip(ema.shadow, other.shadow): assert torch.equal(a, b)
    for p, s in zip(m.parameters(), ema.shadow): assert torch.equal(p.detach(), s)
    other.after_validate(learn)
    json.dumps(ema.state_dict())
    empty = EMACB(0.7); empty.load_tensors(tmp_path/'none'); empty.before_fit(learn); assert empty.shadow is None

def test_ema_resumes_through_checkpoint(tmp_path):
    "4 steps, checkpoint, 3 more steps in a new Learner = 7 steps straight: same raw weights, same EMA weights."
    from llm_nb.checkpoint import save_checkpoint, load_checkpoint
    def make(steps):
        m = tiny_gpt2(); e = EMACB(0.8, start_step=1)
        same = torch.utils.data.DataLoader(tiny_rows(4) * 16, batch_size=4)   # every batch alike: the plain loader need not resume mid-epoch
        return Learner(m, same, opt=torch.optim.AdamW(m.parameters(), lr=1e-2), max_steps=steps, mixed_precision='no', cbs=[e]), e
    straight, e1 = make(7); straight.fit()
    first, _ = make(4); first.fit()   # after the fit the model holds the EMA weights;
    first.cbs[0].before_fit(first)     # a checkpoint holds the raw ones (as when saved during training)
    save_checkpoint(first, tmp_path/'ck')
    assert (tmp_path/'ck'/'ema.safetensors').exists()
    second, e2 = make(7); load_checkpoint(second, tmp_path/'ck'); second.fit()
    torch.testing.assert_close(flat(second.model), flat(straight.model), rtol=0, atol=1e-6)   # EMA weights (exported)
    torch.testing.assert_close(torch.cat([r.flatten() for r in e2.raw]), torch.cat([r.flatten() for r in e1.raw]), rtol=0, atol=1e-6)
    assert e2.n_updates == e1.n_updates == 6

def _fit(cbs, max_steps, accum=1):
    m = tiny_gpt2()
    learn = Learner(m, tiny_dl(), opt=torch.optim.SGD(m.parameters(), lr=0.0), max_steps=max_steps, grad_accum=accum, mixed_precision='no', cbs=cbs)
    return learn.fit()

class _StopAt:
    "Stops the fit after `n` steps as a time budget does."
    order = 0
    def __init__(self, n): self.n = n
    def after_step(self, learn):
        if learn.state.step == self.n: learn.stop_reason = 'time-limit'; raise CancelFit()

@pytest.mark.parametrize('accum,max_steps', [(1, 8), (2, 4)])
def test_ema_warmup_longer_than_the_run_is_refused_before_the_first_step(accum, max_steps):
    "4 batches an epoch; warmup 2 epochs: the first EMA update is the first step of epoch 2, so the run needs one step more."
    with pytest.raises(ValueError, match=rf'training.ema_warmup_epochs=2 epoch\(s\), but this run is {max_steps} steps = 2.00 epochs'):
        _fit([EMACB(warmup_epochs=2)], max_steps, accum)
    ema = EMACB(warmup_epochs=2)
    learn = _fit([ema], max_steps + 1, accum)
    assert ema.n_updates == 1 and learn.state.step == max_steps + 1
    with pytest.raises(ValueError, match='never starts: the run ends after 3 steps'): _fit([EMACB(start_step=3)], 3)

def test_ema_warns_when_the_run_stops_before_its_warmup():
    with pytest.warns(UserWarning, match=r'the run stopped \(time-limit\) at step 3, before the EMA warmup ended'):
        learn = _fit([EMACB(warmup_epochs=1), _StopAt(3)], 20)
    assert learn.cb(EMACB).shadow is None

def test_aux_loss_without_labels_is_refused_before_the_first_step():
    m, calls = tiny_gpt2(), []
    m.register_forward_hook(lambda *a: calls.append(1))
    learn = Learner(m, tiny_dl(), opt=torch.optim.SGD(m.parameters(), lr=0.1), max_steps=2, mixed_precision='no', cbs=[CodeContrastiveCB()])
    with pytest.raises(ValueError, match=r"needs batch key\(s\) \['domain'\] .*data.domain_field.*have \['input_ids', 'labels'\]"): learn.fit()
    assert learn.state.step == 0 and calls == []

# ---------------------------------------------------------------- R-Drop and label smoothing
def test_label_smoothing_matches_torch():
    logits, labels = torch.randn(3, 7, 13), torch.randint(0, 13, (3, 7))
    labels[0, 2:] = -100; labels[2, :4] = -100
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 13), labels[:, 1:].reshape(-1), ignore_index=-100, label_smoothing=0.2)
    torch.testing.assert_close(causal_lm_loss(logits, labels, label_smoothing=0.2), ref, rtol=1e-6, atol=1e-6)
    b = next(iter(tiny_dl())); m = tiny_gpt2()
    with torch.no_grad():
        torch.testing.assert_close(LMTask(0.2).loss(m, b, n_targets(b)), causal_lm_loss(m(input_ids=b['input_ids']).logits, b['labels'], label_smoothing=0.2))
    with pytest.raises(ValueError, match='training.label_smoothing'): LMTask(-0.1)

# ---------------------------------------------------------------- LLRD
def _lrs(model, base=2.0, f=0.5):
    gs = llrd_param_groups(model, base, f, 0.1)
    out = {n: g['lr'] for g in gs for n in g['names']}
    assert len(out) == sum(1 for p in model.parameters() if p.requires_grad)
    return out

def test_llrd_gpt2():
    lr = _lrs(tiny_gpt2(n_layer=3))   # L = 3 blocks + embeddings + head = 5
    assert lr['transformer.wte.weight'] == lr['transformer.wpe.weight'] == 2.0 * 0.5**4
    assert lr['transformer.h.0.mlp.c_proj.weight'] == 2.0 * 0.5**3
    assert lr['transformer.h.2.attn.c_attn.bias'] == 2.0 * 0.5
    assert lr['transformer.ln_f.bias'] == 2.0

def test_llrd_llama():
    lr = _lrs(tiny_llama())           # L = 4
    assert lr['model.embed_tokens.weight'] == 2.0 * 0.5**3
    assert lr['model.layers.0.self_attn.q_proj.weight'] == 2.0 * 0.5**2
    assert lr['model.layers.1.mlp.down_proj.weight'] == 2.0 * 0.5
    assert lr['model.norm.weight'] == lr['lm_head.weight'] == 2.0

def test_llrd_peft_lora():
    from peft import LoraConfig, get_peft_model
    pm = get_peft_model(tiny_gpt2(n_layer=3), LoraConfig(r=4, target_modules=['c_attn'], fan_in_fan_out=True))
    lr = _lrs(pm)
    assert set(lr) == {n for n, p in pm.named_parameters() if p.requires_grad} and len(lr) == 6
    for n, v in lr.items():
        k = int(re.search(r'\.h\.(\d+)\.', n).group(1))
        assert v == 2.0 * 0.5 ** (3 - k), (n, v)   # block k has depth k+1 of L=5
    o = build_optimizer(pm, TrainingConfig(use_llrd=True, learning_rate=2.0, llrd_factor=0.5))
    assert sorted({g['lr'] for g in o.param_groups}) == [0.25, 0.5, 1.0]   # no trainable head under LoRA

def test_llrd_keeps_weight_decay_split_and_scheduler_ratios():
    m = tiny_gpt2()
    o = build_optimizer(m, TrainingConfig(use_llrd=True, learning_rate=1.0, llrd_factor=0.5, weight_decay=0.1))
    for g in o.param_groups:
        for p in g['params']: assert g['weight_decay'] == (0.1 if p.ndim >= 2 and p is not m.transformer.wte.weight and p is not m.transformer.wpe.weight else 0.0)
    s = make_scheduler(o, TrainingConfig(warmup_steps=2), 10)
    for _ in range(5): o.step(); s.step()
    top = max(g['lr'] for g in o.param_groups)
    assert sorted({round(g['lr'] / top, 9) for g in o.param_groups}) == [0.125, 0.25, 0.5, 1.0]

# ---------------------------------------------------------------- schedulers
# Each schedule's learning-rate factor after the warmup, written out from its definition (peak 1e-3, warmup W=10 of T=100
# steps, p = the fraction of the post-warmup steps done): the reference for every step of make_scheduler's schedule.
PEAK, W, T = 1e-3, 10, 100
def _p(s): return (s - W) / (T - W)
def _wsd(start, min_ratio, shape):  # flat at the peak, then `shape` of the decay fraction q down to min_ratio
    return lambda s: 1.0 if s < start else min_ratio + (1 - min_ratio) * shape(min(1.0, (s - start) / (T - start)))
_LIN, _COS, _SQRT = (lambda q: 1 - q), (lambda q: 0.5 * (1 + math.cos(math.pi * q))), (lambda q: 1 - math.sqrt(q))
SCHEDULES = {  # id: (lr_scheduler_type, lr_scheduler_kwargs, factor after the warmup)
    'linear': ('linear', {}, lambda s: (T - s) / (T - W)),
    'cosine-0.5': ('cosine', dict(num_cycles=0.5), lambda s: 0.5 * (1 + math.cos(math.pi * _p(s)))),
    'cosine-2': ('cosine', dict(num_cycles=2), lambda s: 0.5 * (1 + math.cos(4 * math.pi * _p(s)))),
    'restarts-3': ('cosine_with_restarts', dict(num_cycles=3), lambda s: 0.5 * (1 + math.cos(math.pi * ((3 * _p(s)) % 1)))),
    'polynomial-2': ('polynomial', dict(power=2, lr_end=1e-5), lambda s: ((PEAK - 1e-5) * (1 - _p(s))**2 + 1e-5) / PEAK),
    'constant': ('constant', {}, lambda s: 1.0),
    'constant_with_warmup': ('constant_with_warmup', {}, lambda s: 1.0),
    'min_lr-default': ('cosine_with_min_lr', {}, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * _p(s)))),
    'min_lr-absolute': ('cosine_with_min_lr', dict(min_lr=2e-4, num_cycles=0.25), lambda s: 0.2 + 0.8 * 0.5 * (1 + math.cos(0.5 * math.pi * _p(s)))),
    'wsd-default': ('warmup_stable_decay', {}, _wsd(80, 0.0, _SQRT)),
    'wsd-linear': ('warmup_stable_decay', dict(decay_type='linear', decay_ratio=0.3, min_lr_ratio=0.1), _wsd(70, 0.1, _LIN)),
    'wsd-cosine': ('warmup_stable_decay', dict(decay_type='cosine', decay_ratio=0.3, min_lr_ratio=0.1), _wsd(70, 0.1, _COS)),
    'wsd-1-sqrt': ('warmup_stable_decay', dict(decay_type='1-sqrt', decay_ratio=0.3, min_lr_ratio=0.1), _wsd(70, 0.1, _SQRT)),
}

def _schedule_lrs(kind, kw):
    o = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=PEAK)
    cfg = TrainingConfig(lr_scheduler_type=kind, lr_scheduler_kwargs=kw, warmup_ratio=0.1)
    assert warmup_for(cfg, T) == W
    s, lrs = make_scheduler(o, cfg, T), []
    for _ in range(T): lrs.append(o.param_groups[0]['lr']); o.step(); s.step()
    return lrs

@pytest.mark.parametrize('name', SCHEDULES)
def test_scheduler_values(name):
    kind, kw, after = SCHEDULES[name]
    for s, lr in enumerate(_schedule_lrs(kind, kw)):
        ref = PEAK * (1.0 if kind == 'constant' else s / W if s < W else after(s))
        assert math.isclose(lr, ref, rel_tol=1e-9, abs_tol=1e-18), (name, s, lr, ref)

def test_scheduler_kwargs_make_new_schedules():
    "The kwargs that make a schedule more than its neighbour do: 3 restarts are not one cosine, power 2 is not a line."
    def gap(a, b): return max(abs(x - y) for x, y in zip(_schedule_lrs(*a), _schedule_lrs(*b)))
    assert gap(('cosine_with_restarts', dict(num_cycles=3)), ('cosine', {})) > 0.5 * PEAK
    assert gap(('polynomial', dict(power=2, lr_end=1e-5)), ('linear', {})) > 0.1 * PEAK
    assert gap(('cosine_with_restarts', {}), ('cosine', {})) < 1e-15   # HF's default: one cycle is the cosine, as documented

# ---------------------------------------------------------------- early stopping, time budget
def _stop_index(seq, **kw):
    cb = EarlyStoppingCB(**kw); stub = SimpleNamespace(state=TrainState(), stop_reason=None)
    for i, v in enumerate(seq):
        stub.metrics = {cb.metric: v}; cb.after_validate(stub)
        try: cb.after_step(stub)
        except CancelFit: return i, stub.stop_reason
    return None, None

def test_early_stopping_scripted():
    assert _stop_index([2.0, 1.5, 1.6, 1.4, 1.45, 1.41, 1.5], patience=3) == (6, 'early-stopping')
    assert _stop_index([2.0, 1.5, 1.45, 1.46, 1.3], patience=2, threshold=0.06) == (3, 'early-stopping')
    assert _stop_index([0.1, 0.3, 0.3, 0.29], patience=2, metric='eval_token_accuracy') == (3, 'early-stopping')
    assert _stop_index([5, 4, 3, 2, 1], patience=1) == (None, None)
    with pytest.raises(ValueError, match='early_stopping_patience'): EarlyStoppingCB(0)

def test_early_stopping_skips_an_evaluation_without_its_metric():
    "A missing metric (a side task failed) is warned about and skipped: patience is neither counted down nor reset."
    cb = EarlyStoppingCB(2); stub = SimpleNamespace(metrics={'eval_perplexity': 3.0}, state=TrainState(step=7), stop_reason=None)
    cb.best, cb.wait = 2.0, 1
    with pytest.warns(UserWarning, match=r"^eval_loss is missing from the evaluation at step 7 \(it has eval_perplexity\): "
                                         r"early-stopping patience not counted \(1 of 2 used\)"):
        cb.after_validate(stub)
    assert (cb.best, cb.wait, cb.stop) == (2.0, 1, False)

def test_early_stopping_on_a_side_task_metric_that_fails():
    "eval_bleu from a side task that fails at evaluations 3 and 4: those two are skipped, so the run stops at the 5th, not the 3rd."
    class Bleu(Callback):   # stands in for GenerationEvalCB: a side task that adds eval_bleu, or raises
        order, side_task, seq = 35, True, [10.0, 9.0, None, None, 8.0, 7.0]
        def after_validate(self, learn):
            v = self.seq.pop(0)
            if v is None: raise RuntimeError('generation failed')
            learn.metrics['eval_bleu'] = v
    m = tiny_gpt2()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        learn = Learner(m, tiny_dl(64), tiny_dl(4), opt=torch.optim.SGD(m.parameters(), lr=0.0), max_steps=50, mixed_precision='no',
                        cbs=[EvalCB(2), Bleu(), EarlyStoppingCB(2, metric='eval_bleu')]).fit()
    assert (learn.error, learn.stop_reason, learn.state.step) == (None, 'early-stopping', 10)   # evals at 2 (best), 4, [6, 8 skipped], 10
    msgs = [str(x.message) for x in w]
    assert sum(m.startswith('Bleu.after_validate failed') for m in msgs) == 2
    assert [re.search(r'^eval_bleu is missing from the evaluation at step (\d+)', m)[1] for m in msgs if 'is missing' in m] == ['6', '8']

def test_early_stopping_in_a_fit():
    class Worse(LMTask):   # evaluation gets worse every time: stop after patience evaluations
        calls = 0
        def eval_sums(self, model, batch):
            Worse.calls += 1
            return dict(loss=torch.tensor(float(Worse.calls)), correct=torch.tensor(0), n=torch.tensor(1))
    m = tiny_gpt2()
    learn = Learner(m, tiny_dl(64), tiny_dl(4), task=Worse(), opt=torch.optim.SGD(m.parameters(), lr=0.0), max_steps=50, mixed_precision='no',
                    cbs=[EvalCB(2), EarlyStoppingCB(2)])
    learn.fit()
    assert learn.stop_reason == 'early-stopping' and learn.state.step == 6   # evals at 2 (best), 4, 6

def test_time_budget_in_seconds(tmp_path):
    from llm_nb.checkpoint import CheckpointCB
    class Slow(LMTask):
        def loss(self, model, batch, n): time.sleep(0.15); return super().loss(model, batch, n)
    m = tiny_gpt2()
    learn = Learner(m, tiny_dl(64, bs=1), task=Slow(), opt=torch.optim.SGD(m.parameters(), lr=0.01), max_steps=1000, mixed_precision='no',
                    cbs=[TimeBudgetCB(hours=0.6 / 3600), CheckpointCB(tmp_path, save_steps=0, handle_signals=False)])
    learn.fit()
    assert learn.stop_reason == 'time-limit' and 1 <= learn.state.step < 100
    assert (tmp_path/'checkpoints'/'time-limit'/'model.safetensors').exists()
    assert learn.time_budget == 0.6 and budget_status(learn).endswith('Remaining: 0.00h')
    # the bar shows the budget (a long budget, so that steps certainly reach the bar's refresh)
    m = tiny_gpt2(); pc = ProgressCB(refresh=1)
    learn = Learner(m, tiny_dl(), opt=torch.optim.SGD(m.parameters(), lr=0.01), max_steps=2, mixed_precision='no', cbs=[TimeBudgetCB(hours=2), pc])
    learn.fit()
    assert re.search(r'Elapsed: 0\.00h \| Remaining: 2\.00h', str(pc.bar.postfix)), pc.bar.postfix

# ---------------------------------------------------------------- NaN / spike guard
def _guarded_fit(bad_calls, factor=None, cbs=(), loader=None, steps=4, max_bad=3):
    class Inject(LMTask):
        calls = 0
        def loss(self, model, batch, n):
            Inject.calls += 1
            l = super().loss(model, batch, n)
            if Inject.calls in bad_calls: return l * factor if factor else l * float('nan')
            return l
    m = tiny_gpt2()
    learn = Learner(m, loader or tiny_dl(16, bs=4), task=Inject(), opt=torch.optim.SGD(m.parameters(), lr=0.5), max_steps=steps,
                    mixed_precision='no', cbs=[ClipGradCB(0), *cbs])
    learn.fit()
    return learn

def test_nan_step_is_skipped_exactly():
    with pytest.warns(UserWarning, match='loss is nan at step 2: skipping this update'):
        a = _guarded_fit({2}, cbs=[NaNGuardCB()])
    # reference: a run that never sees batch 2 (SGD has no state, so skipping = removing that batch)
    r = tiny_rows(16)
    ref = _guarded_fit(set(), loader=torch.utils.data.DataLoader(r[:4] + r[8:], batch_size=4), steps=3)
    torch.testing.assert_close(flat(a.model), flat(ref.model), rtol=0, atol=1e-6)
    assert a.cb(NaNGuardCB).skipped == 1 and a.state.step == 4

def test_loss_spike_is_skipped():
    g = NaNGuardCB(spike_factor=3.0, warmup=3)
    with pytest.warns(UserWarning, match='loss spiked'):
        learn = _guarded_fit({6}, factor=10.0, cbs=[g], loader=tiny_dl(32, bs=4), steps=8)
    assert g.skipped == 1

def test_nan_guard_aborts_after_n_in_a_row():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with pytest.raises(FloatingPointError, match='loss is nan at step 4: 3 bad steps in a row'):
            _guarded_fit({2, 3, 4, 5}, cbs=[NaNGuardCB(max_bad=3)], steps=5)

# ---------------------------------------------------------------- gradient checkpointing, CPU offload
@pytest.mark.parametrize('make', [lambda: tiny_gpt2(dropout=0.1), tiny_llama])
def test_gradient_checkpointing_same_grads(make):
    def grads(ckpt):
        m = make().train()
        if ckpt: enable_gradient_checkpointing(m)
        b = next(iter(tiny_dl()))
        torch.manual_seed(3); LMTask().loss(m, b, n_targets(b)).backward()
        return [p.grad.clone() for p in m.parameters()]
    for a, b in zip(grads(False), grads(True)): torch.testing.assert_close(a, b, rtol=0, atol=1e-6)

def _adam_run(make_opt, steps=6, resume_at=None):
    m = tiny_gpt2()
    o = make_opt(m)
    s = make_scheduler(o, TrainingConfig(warmup_steps=2), steps)
    for i in range(steps):
        if i == resume_at:   # save and restore the optimizer state mid-way, as a checkpoint resume does
            sd = o.state_dict(); o = make_opt(m); o.load_state_dict(sd)
            s = make_scheduler(o, TrainingConfig(warmup_steps=2), steps); [s.step() for _ in range(i)]
        b = next(iter(tiny_dl(4, seed=i)))
        LMTask().loss(m, b, n_targets(b)).backward()
        o.step(); s.step(); o.zero_grad()
    return m, o

@pytest.mark.parametrize('fraction', [0.0, 0.3, 1.0])
def test_offload_adamw_equals_adamw(fraction):
    kw = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    ref, _ = _adam_run(lambda m: torch.optim.AdamW(param_groups(m, 0.1), foreach=False, **kw))
    off, o = _adam_run(lambda m: OffloadAdamW(param_groups(m, 0.1), fraction=fraction, foreach=False, **kw), resume_at=3)
    assert abs(o.offload_fraction - fraction) < 0.1
    torch.testing.assert_close(flat(off), flat(ref), rtol=0, atol=1e-6)

def test_offload_through_learner_and_config():
    cfg = TrainingConfig(learning_rate=1e-2, use_cpu_offload=True, cpu_offload_fraction=0.5)
    def run(cfg):
        m = tiny_gpt2(); o = build_optimizer(m, cfg)
        Learner(m, tiny_dl(), opt=o, sched=make_scheduler(o, cfg, 4), max_steps=4, mixed_precision='no', cbs=[ClipGradCB(1.0)]).fit()
        return flat(m)
    torch.testing.assert_close(run(cfg), run(TrainingConfig(learning_rate=1e-2)), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match='cpu_offload_fraction'): OffloadAdamW(tiny_gpt2().parameters(), fraction=1.5)

# ---------------------------------------------------------------- aux loss, custom step, samples
def test_contrastive_gradient_equals_reference():
    "One step with the aux term gives the weights of a hand-written step on LM loss + weight * supcon."
    dom = torch.tensor([0, 1, 1, 0] * 4)
    m = tiny_gpt2()
    Learner(m, tiny_dl(4, domain=dom), opt=torch.optim.SGD(m.parameters(), lr=0.1), max_steps=1, mixed_precision='no',
            cbs=[CodeContrastiveCB(weight=0.7, temperature=0.2)]).fit()
    r = tiny_gpt2(); b = next(iter(tiny_dl(4, domain=dom)))
    out = r(input_ids=b['input_ids'], output_hidden_states=True)
    loss = causal_lm_loss(out.logits, b['labels']) + 0.7 * supcon_loss(out.hidden_states[-1].mean(1), b['domain'], 0.2)
    loss.backward()
    with torch.no_grad():
        for p in r.parameters(): p -= 0.1 * p.grad
    torch.testing.assert_close(flat(m), flat(r), rtol=0, atol=1e-6)

def test_custom_training_step():
    class Doubled(Learner):
        def training_step(self, batch, n): return 2 * super().training_step(batch, n)
    def run(cls, lr):
        m = tiny_gpt2(); cls(m, tiny_dl(), opt=torch.optim.SGD(m.parameters(), lr=lr), max_steps=2, mixed_precision='no').fit()
        return flat(m)
    torch.testing.assert_close(run(Doubled, 0.05), run(Learner, 0.1), rtol=0, atol=1e-6)

def test_sample_generation_file_and_rng_untouched(tmp_path):
    from llm_nb.tokenisation import train_tokenizer
    tok = train_tokenizer(['the cat sat on the mat', 'a dog and a cat'] * 10, 300)
    def run(cbs):
        m = tiny_gpt2(dropout=0.1, vocab=len(tok))
        Learner(m, tiny_dl(16, bs=2, seed=1), opt=torch.optim.AdamW(m.parameters(), lr=1e-2), max_steps=4, mixed_precision='no', cbs=cbs).fit()
        return flat(m)
    sg = SampleGenerationCB(tok, ['the cat', 'a dog'], every=2, output_dir=tmp_path, max_new_tokens=4, do_sample=True)
    torch.testing.assert_close(run([sg]), run([]), rtol=0, atol=0)   # sampling does not move the training RNG
    lines = [json.loads(l) for l in (tmp_path/'samples.jsonl').read_text().splitlines()]
    assert [(r['step'], r['prompt']) for r in lines] == [(2, 'the cat'), (2, 'a dog'), (4, 'the cat'), (4, 'a dog')]
    assert all(r['text'].startswith(r['prompt']) and len(r['text']) > len(r['prompt']) for r in lines)

# ---------------------------------------------------------------- lr finder, ablation
def test_lr_find_restores_state_and_keeps_group_ratios(tmp_path):
    m = tiny_gpt2()
    o = build_optimizer(m, TrainingConfig(use_llrd=True, llrd_factor=0.5, learning_rate=1e-3))
    s = make_scheduler(o, TrainingConfig(warmup_steps=5), 20)          # lr is 0 in warmup: ratios come from initial_lr
    learn = Learner(m, tiny_dl(64), opt=o, sched=s, max_steps=20, mixed_precision='no')
    before, lrs0 = flat(m).clone(), [g['lr'] for g in o.param_groups]
    seen = []
    class Spy(LMTask):
        def loss(self, model, batch, n):
            seen.append(sorted({g['lr'] for g in learn.opt.param_groups})); return super().loss(model, batch, n)
    learn.task = Spy()
    res = lr_find(learn, start_lr=1e-4, end_lr=1e2, num_steps=12, plot_path=tmp_path/'plots'/'lr_find.png')
    assert torch.equal(flat(m), before) and [g['lr'] for g in o.param_groups] == lrs0 and len(learn.opt.state) == 0
    assert (tmp_path/'plots'/'lr_find.png').exists()
    top = seen[0][-1]; assert math.isclose(top, 1e-4) and [round(x / top, 6) for x in seen[0]] == [0.125, 0.25, 0.5, 1.0]
    assert math.isclose(seen[1][-1] / seen[0][-1], (1e2 / 1e-4) ** (1 / 11))
    assert 0 < res['suggestion'] <= res['lrs'][-1]

def test_ablation_turns_techniques_off():
    on = dict(label_smoothing=0.1, use_rdrop=True, use_ema=True, use_llrd=True, use_cpu_offload=True, early_stopping_patience=3)
    t = TrainingConfig(**on)
    assert {type(c).__name__ for c in technique_callbacks(t)} == {'NaNGuardCB', 'EMACB', 'EarlyStoppingCB'}
    assert isinstance(technique_task(t), RDropTask) and isinstance(build_optimizer(tiny_gpt2(), t), OffloadAdamW)
    a = TrainingConfig(**on, ablation_mode=True)
    a = dataclasses.replace(a, sample_prompts=['x'], sample_every_steps=1, aux_contrastive_weight=1.0)
    assert [type(c).__name__ for c in technique_callbacks(a, tok=object())] == ['NaNGuardCB']
    task = technique_task(a); assert type(task) is LMTask and task.label_smoothing == 0.0
    o = build_optimizer(tiny_gpt2(), a); assert type(o) is torch.optim.AdamW and len(o.param_groups) == 2

def test_token_level_techniques_leave_a_dpo_task_alone():
    "training.label_smoothing never reaches DPOTask (its smoothing is dpo.label_smoothing); R-Drop on it is an error naming the key."
    from llm_nb.dpo import DPOTask
    with pytest.warns(UserWarning, match='DPOTask ignores it'): t = technique_task(TrainingConfig(label_smoothing=0.2), DPOTask(0.1))
    assert type(t) is DPOTask and t.label_smoothing == 0.0
    with pytest.raises(ValueError, match='training.use_rdrop'): technique_task(TrainingConfig(use_rdrop=True), DPOTask(0.1))
