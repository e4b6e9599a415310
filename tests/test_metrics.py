"Metrics, loggers, plots and alerts (`llm_nb.metrics`): each against a reference computed another way."
import glob, logging, sys, types
from pathlib import Path
import pytest, torch
from llm_nb.loop import Learner, ClipGradCB, TrainMetricsCB, EvalCB, HistoryCB
from llm_nb.model import flops_per_token
from llm_nb.metrics import (MFUCB, PlotsCB, AlertsCB, WandbCB, plot_metrics, bleu_rouge,
                            generate_batch, table_peak, peak_flops, check_thresholds)
from llm_nb.config import ConfigError
from llm_nb.tasks import LMTask
from llm_nb.testing import tiny_gpt2

V, T = 64, 16

def tiny_model(seed=0): return tiny_gpt2(V, n_positions=T, dropout=0.1, seed=seed)   # GPT-2's own dropout

def rows(n, seed=0, domains=3, pad_last=True):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x = torch.randint(0, V, (T,), generator=g)
        y, m = x.clone(), torch.ones(T, dtype=torch.long)
        if pad_last and i % 4 == 3: y[T//2:], m[T//2:] = -100, 0   # unequal target counts per row
        out.append(dict(input_ids=x, labels=y, attention_mask=m, domain=torch.tensor(i % domains)))
    return out

def dl(rs, bs=4, shuffle=False): return torch.utils.data.DataLoader(rs, batch_size=bs, shuffle=shuffle)

def learner(cbs, n=16, steps=4, valid=None, model=None, task=None):
    model = model or tiny_model()
    return Learner(model, dl(rows(n)), valid, task, opt=torch.optim.AdamW(model.parameters(), lr=1e-3), max_steps=steps,
                   mixed_precision='no', cbs=cbs)

# --- MFU -------------------------------------------------------------------------------------------------------------
def test_mfu_is_tokens_per_sec_times_flops_over_peak():
    learn = learner([ClipGradCB(1.0), TrainMetricsCB(2), MFUCB(peak=1e12)]).fit()
    recs = [r for r in learn.history if 'tokens_per_sec' in r]
    assert len(recs) == 2
    fpt = flops_per_token(learn.raw_model, T)
    for r in recs: assert r['mfu'] == pytest.approx(r['tokens_per_sec'] * fpt / 1e12, rel=1e-12)

def test_peak_table_and_cpu_measurement():
    assert table_peak('NVIDIA H100 80GB HBM3', 'bf16') == 989e12 and table_peak('NVIDIA H100 80GB HBM3', 'no') == 67e12
    assert table_peak('NVIDIA H200') == 989e12 and table_peak('NVIDIA A100-PCIE-40GB') == 312e12
    assert table_peak('NVIDIA A10') == 125e12 and table_peak('NVIDIA L4') == 121e12
    assert table_peak('Unknown Accelerator 9000') is None
    # the measured CPU peak is in the range of a real GEMM rate and is never below what one matmul achieves
    import time
    p = peak_flops('cpu', 'no')
    a = torch.randn(512, 512); t = time.perf_counter(); a @ a; one = 2 * 512**3 / (time.perf_counter() - t)
    assert 1e8 < p < 1e14 and p > 0.2 * one

# --- per-domain evaluation --------------------------------------------------------------------------------------------
def test_domain_eval_matches_evaluating_each_domain_alone():
    vrows = rows(24, seed=5)
    model = tiny_model(1)
    task = LMTask(domains=['web', 'code', 'books'])
    learn = learner([], valid=dl(vrows, 5), model=model, task=task)
    m = learn.validate()
    plain = Learner(model, None, dl(vrows, 5), mixed_precision='no').validate()
    for k in ('eval_loss', 'eval_perplexity', 'eval_token_accuracy'): assert m[k] == pytest.approx(plain[k], rel=1e-6)
    for d, name in enumerate(['web', 'code', 'books']):
        ref = Learner(model, None, dl([r for r in vrows if int(r['domain']) == d], 3), mixed_precision='no').validate()
        assert m[f'eval_{name}_loss'] == pytest.approx(ref['eval_loss'], rel=1e-5)
        assert m[f'eval_{name}_perplexity'] == pytest.approx(ref['eval_perplexity'], rel=1e-5)
        assert m[f'eval_{name}_token_accuracy'] == pytest.approx(ref['eval_token_accuracy'], rel=1e-6)
    assert learn.task is task   # nothing swapped the run's task
    # batches of another size give the same numbers: the sums are per row
    f = learner([], valid=dl(vrows, 7), model=model, task=LMTask(domains=['web', 'code', 'books'])).validate()
    for k, v in m.items(): assert f[k] == pytest.approx(v, rel=1e-5), k

def test_domain_eval_logged_by_evalcb_and_absent_without_domains():
    learn = learner([EvalCB(2)], valid=dl(rows(8, seed=2)), task=LMTask(domains=['a', 'b', 'c'])).fit()
    assert all(f'eval_{d}_loss' in learn.history[-1] for d in 'abc')
    no_dom = [{k: v for k, v in r.items() if k != 'domain'} for r in rows(8)]
    m = learner([], valid=dl(no_dom), task=LMTask(domains=['a'])).validate()
    assert sorted(m) == ['eval_loss', 'eval_perplexity', 'eval_token_accuracy']

def test_domain_id_without_a_name_is_a_clear_error():
    with pytest.raises(ValueError, match='outside 0..1'): learner([], valid=dl(rows(8)), task=LMTask(domains=['a', 'b'])).validate()

# --- generation metrics ----------------------------------------------------------------------------------------------
def test_bleu_rouge_reference_values():
    import sacrebleu
    preds, refs = ['the cat sat on the mat', 'a quick brown fox'], ['the cat sat on a mat', 'the quick brown fox jumps']
    r = bleu_rouge(preds, refs)
    assert r['bleu'] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    # ROUGE-1 F by hand: pair 1 has 5 of 6 unigrams in common both ways; pair 2 has 3 of 4 vs 3 of 5
    f2 = 2 * (3/4) * (3/5) / (3/4 + 3/5)
    assert r['rouge1'] == pytest.approx((5/6 + f2) / 2)
    with pytest.raises(ValueError, match='no prompt/reference pairs'): bleu_rouge([], [])

def test_batched_generation_equals_one_at_a_time():
    from llm_nb.tokenisation import train_tokenizer
    tok = train_tokenizer(['the cat sat on the mat and the dog ran far away from home'] * 20, 300)
    model = tiny_gpt2(len(tok), n_positions=64, dropout=0.1, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    prompts = ['the cat', 'the dog ran far away', 'home']
    side = tok.padding_side
    batched = generate_batch(model, tok, prompts, max_new_tokens=6, batch_size=3)
    single = [generate_batch(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert tok.padding_side == side   # restored after left-padded generation

# --- plots -------------------------------------------------------------------------------------------------------------
def test_plot_metrics_writes_the_plots_that_have_data(tmp_path):
    h = [dict(step=s, loss=4 - s/10, learning_rate=1e-3, tokens_per_sec=100.) for s in range(1, 6)] + [dict(step=5, eval_loss=3.5, eval_perplexity=33.)]
    p = plot_metrics(h, tmp_path/'plots')
    assert sorted(x.name for x in (tmp_path/'plots').iterdir()) == ['learning_rate.png', 'loss.png', 'perplexity.png', 'tokens_per_sec.png']
    assert all(v.stat().st_size > 1000 for v in p.values())
    assert sorted(plot_metrics([dict(step=1, learning_rate=1.)], tmp_path/'p2')) == ['learning_rate']

def test_plots_cb_replaces_history_plot(tmp_path):
    learn = learner([TrainMetricsCB(1), EvalCB(2), HistoryCB(tmp_path), PlotsCB(tmp_path)], valid=dl(rows(4))).fit()
    assert sorted(p.name for p in (tmp_path/'plots').iterdir()) == ['learning_rate.png', 'loss.png', 'perplexity.png', 'tokens_per_sec.png']
    import matplotlib.image as mpimg
    assert mpimg.imread(tmp_path/'plots'/'loss.png').shape[:2] == (320, 500)   # plot_metrics' 5x3.2 in at 100 dpi, not HistoryCB's

# --- alerts ------------------------------------------------------------------------------------------------------------
class LogKL:
    order = 60
    def __init__(self, values): self.values = values
    def after_step(self, learn): learn.log(kl=self.values[learn.state.step - 1], difficult_ratio=0.1)

def test_alerts_warn_once_per_activation_and_clear(caplog):
    learn = learner([LogKL([0.5, 2.0, 3.0, 0.2]), AlertsCB(dict(kl_max=1.0, difficult_ratio_max=0.7))])
    with caplog.at_level(logging.WARNING, logger='llm_nb'): learn.fit()
    msgs = [r.getMessage() for r in caplog.records if r.name == 'llm_nb']
    assert msgs == ['ALERT kl = 2 > 1 at step 2', 'ALERT kl = 3 > 1 at step 3']
    assert [a['step'] for a in learn.alerts] == [2, 3] and learn.active_alerts == {}

def test_learning_rate_floor_not_checked_at_the_last_step():
    from transformers import get_scheduler
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = get_scheduler('linear', opt, num_warmup_steps=0, num_training_steps=4)   # lr is 0 after the last step
    learn = Learner(model, dl(rows(16)), opt=opt, sched=sched, max_steps=4, mixed_precision='no', cbs=[TrainMetricsCB(1), AlertsCB()]).fit()
    assert learn.history[-1]['learning_rate'] == 0 and learn.alerts == []
    bad = [dict(step=2, learning_rate=1e-9)]
    from llm_nb.metrics import check_alerts
    assert [a['metric'] for a in check_alerts(bad[0], check_thresholds(dict(learning_rate_min=1e-8)))] == ['learning_rate']

def test_bad_alert_config_names_the_key():
    with pytest.raises(ConfigError, match='notifications.alerts.perplexity'): AlertsCB(dict(perplexity=10))

# --- wandb ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    monkeypatch.delenv('WANDB_API_KEY', raising=False); monkeypatch.delenv('WANDB_MODE', raising=False)
    for k in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR', 'WANDB_ARTIFACT_DIR'):
        monkeypatch.setenv(k, str(tmp_path/'wandb-home'/k))
    monkeypatch.setenv('WANDB_SILENT', 'true')
    monkeypatch.setenv('LLM_NB_SMTP_PASSWORD', 'pw-Zq81-never-saved')
    return tmp_path

def test_wandb_offline_writes_a_run_and_no_secret(wandb_env, caplog):
    out = wandb_env/'run'
    with caplog.at_level(logging.WARNING, logger='llm_nb'):
        learn = learner([TrainMetricsCB(2), HistoryCB(out), WandbCB(out, 'llm_nb-test', 'tiny', config=dict(seed=1))]).fit()
    assert [r for r in caplog.records if r.name == 'llm_nb'] == []
    runs = glob.glob(str(out/'wandb'/'offline-run-*'/'run-*.wandb'))
    assert len(runs) == 1 and Path(runs[0]).stat().st_size > 0
    for f in Path(wandb_env).rglob('*'):
        if f.is_file(): assert b'pw-Zq81-never-saved' not in f.read_bytes(), f

def test_wandb_failure_warns_once_and_training_goes_on(wandb_env, monkeypatch, caplog):
    fake = types.ModuleType('wandb')
    def init(**kw): raise ConnectionError('no route to api.wandb.ai')
    fake.init, fake.Settings = init, lambda **kw: None
    monkeypatch.setitem(sys.modules, 'wandb', fake)
    cb = WandbCB(wandb_env/'run')
    with caplog.at_level(logging.WARNING, logger='llm_nb'): learn = learner([TrainMetricsCB(1), cb]).fit()
    assert learn.state.step == 4 and cb.run is None
    warns = [r.getMessage() for r in caplog.records if r.name == 'llm_nb']
    assert len(warns) == 1 and 'wandb disabled' in warns[0] and 'no route' in warns[0]

def test_wandb_online_failure_falls_back_to_offline(wandb_env, monkeypatch, caplog):
    calls = []
    class Run:
        def log(self, d, step): calls.append(('log', step))
        def finish(self): calls.append(('finish',))
    fake = types.ModuleType('wandb')
    def init(mode, **kw):
        calls.append(('init', mode))
        if mode == 'online': raise TimeoutError('init timed out')
        return Run()
    fake.init, fake.Settings = init, lambda **kw: None
    monkeypatch.setitem(sys.modules, 'wandb', fake)
    monkeypatch.setenv('WANDB_API_KEY', 'k' * 40)
    with caplog.at_level(logging.WARNING, logger='llm_nb'): learner([TrainMetricsCB(2), WandbCB(wandb_env/'run')]).fit()
    assert calls == [('init', 'online'), ('init', 'offline'), ('log', 2), ('log', 4), ('finish',)]
    warns = [r.getMessage() for r in caplog.records if r.name == 'llm_nb']
    assert len(warns) == 1 and 'logging offline' in warns[0] and 'k' * 40 not in warns[0]

# --- generation metrics from a prompt/reference file: the config and `llm_nb evaluate --generate` --------------------------
from llm_nb.cli import main, config_callbacks
from llm_nb.config import load_config
from llm_nb.data import DataError
from llm_nb.metrics import GenerationEvalCB

@pytest.fixture(scope='module')
def saved_lm(tmp_path_factory):
    "A tiny random GPT-2 with a trained BPE, saved as an HF model folder (context 256: room for 64 new tokens)."
    from llm_nb.tokenisation import train_tokenizer
    d = tmp_path_factory.mktemp('lm')
    tok = train_tokenizer(['the cat sat on the mat and the dog ran far away from home'] * 20, 300)
    tiny_gpt2(len(tok), n_positions=256, dropout=0.1, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id).save_pretrained(d)
    tok.save_pretrained(d)
    return d

def write_pairs(path, prompts, refs):
    import json
    path.write_text(''.join(json.dumps(dict(prompt=p, reference=r)) + '\n' for p, r in zip(prompts, refs)))
    return path

def test_evaluate_generate_bleu_is_sacrebleu_on_independent_greedy_generation(saved_lm, tmp_path, capsys):
    import json, sacrebleu
    from rouge_score import rouge_scorer
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tok = AutoModelForCausalLM.from_pretrained(saved_lm).eval(), AutoTokenizer.from_pretrained(saved_lm)
    def greedy(p):   # one prompt at a time, no padding: the HF reference
        enc = tok(p, return_tensors='pt')
        with torch.no_grad(): out = model.generate(**enc, max_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, enc['input_ids'].shape[1]:], skip_special_tokens=True)
    prompts = ['the cat', 'the dog ran far away', 'home', 'a mat and the']
    preds = [greedy(p) for p in prompts]
    refs = [preds[0], 'the cat sat on the mat', ' '.join(preds[2].split()[:6]) + ' from home', 'far away']   # some overlap: BLEU > 0
    f = write_pairs(tmp_path/'pairs.jsonl', prompts, refs)
    main(['evaluate', '--model_path', str(saved_lm), '--generate', '--data', str(f)])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(last) == ['bleu', 'rouge1', 'rouge2', 'rougeL']
    bleu = sacrebleu.corpus_bleu(preds, [refs]).score
    assert bleu > 0 and last['bleu'] == pytest.approx(bleu)
    sc = rouge_scorer.RougeScorer(['rougeL'], use_stemmer=True)
    assert last['rougeL'] == pytest.approx(sum(sc.score(r, p)['rougeL'].fmeasure for p, r in zip(preds, refs)) / len(refs))

def exit_message(argv):
    with pytest.raises(SystemExit) as e: main(argv)
    return str(e.value.code)

def test_a_bad_row_is_named_before_the_model_loads(tmp_path):
    f = tmp_path/'pairs.jsonl'
    f.write_text('{"prompt": "the cat", "reference": "sat"}\n{"prompt": "a dog", "answer": "ran"}\n')
    # the model folder does not exist: the row error proves the file is checked first
    assert exit_message(['evaluate', '--model_path', str(tmp_path/'no-model'), '--generate', '--data', str(f)]) == (
        f"llm_nb evaluate: error: {f}, record 2: 'reference' is missing (each row needs a non-empty 'prompt' and 'reference')")
    f.write_text('{"prompt": "the cat", "reference": "sat"}\n{"prompt": "a dog", "reference": "ran"\n')
    assert exit_message(['evaluate', '--model_path', str(tmp_path/'no-model'), '--generate', '--data', str(f)]).startswith(
        f"llm_nb evaluate: error: {f}, line 2: malformed JSON")

def test_evaluate_generation_flags(tmp_path, capsys):
    assert exit_message(['evaluate', '--model_path', 'm', '--generate']) == '2'
    assert 'evaluate --generate needs --data FILE' in capsys.readouterr().err
    assert exit_message(['evaluate', '--model_path', 'm', '--max_new_tokens', '5']) == '2'
    assert 'evaluate: --max_new_tokens only go with --generate' in capsys.readouterr().err
    f = write_pairs(tmp_path/'p.jsonl', ['a'], ['b'])
    assert exit_message(['evaluate', '--model_path', 'm', '--generate', '--data', str(f), '--max_new_tokens', '0']) == (
        'llm_nb evaluate: error: --max_new_tokens must be at least 1, got 0')

def test_config_generation_file_adds_the_callback_and_checks_the_file(tmp_path, saved_lm):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(saved_lm)
    f = write_pairs(tmp_path/'p.jsonl', ['the cat', 'a dog'], ['sat', 'ran'])
    over = [f'output_dir={tmp_path/"run"}', 'logging.report_to=[none]']
    cbs = [c for c in config_callbacks(load_config(None, over + [f'evaluation.generation_file={f}',
                                                                 'evaluation.generation_max_new_tokens=7']), tok, tmp_path/'run')
           if isinstance(c, GenerationEvalCB)]
    assert len(cbs) == 1 and (cbs[0].prompts, cbs[0].refs, cbs[0].kw) == (['the cat', 'a dog'], ['sat', 'ran'], dict(max_new_tokens=7, batch_size=8))
    assert not any(isinstance(c, GenerationEvalCB) for c in config_callbacks(load_config(None, over), tok, tmp_path/'run'))
    f.write_text('{"prompt": "", "reference": "sat"}\n')
    with pytest.raises(DataError, match=f"{f}, record 1: 'prompt' is empty"):
        config_callbacks(load_config(None, over + [f'evaluation.generation_file={f}']), tok, tmp_path/'run')

@pytest.mark.parametrize('flag,value,message', [
    ('--temperature', '-1', '--temperature must be >= 0 (0 = greedy), got -1.0'),
    ('--top_p', '0', '--top_p must be in (0, 1] (1 = no nucleus cut), got 0.0'),
    ('--top_p', '1.5', '--top_p must be in (0, 1] (1 = no nucleus cut), got 1.5'),
    ('--top_k', '-1', '--top_k must be >= 0 (0 = no top-k cut), got -1'),
    ('--max_new_tokens', '0', '--max_new_tokens must be at least 1, got 0')])
def test_generate_refuses_bad_sampling_flags_before_the_model_loads(tmp_path, flag, value, message):
    assert exit_message(['generate', '--model_path', str(tmp_path/'no-model'), '--prompt', 'the cat', flag, value]) == (
        f'llm_nb generate: error: {message}')

def test_generate_temperature_zero_is_greedy(saved_lm, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tok = AutoModelForCausalLM.from_pretrained(saved_lm).eval(), AutoTokenizer.from_pretrained(saved_lm)
    enc = tok('the cat', return_tensors='pt')
    with torch.no_grad(): out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    main(['generate', '--model_path', str(saved_lm), '--prompt', 'the cat', '--max_new_tokens', '6', '--temperature', '0'])
    assert capsys.readouterr().out.rstrip('\n') == tok.decode(out[0], skip_special_tokens=True)

def test_failed_generation_warns_and_best_model_skips_that_evaluation(tmp_path, monkeypatch):
    "A side task never stops training: with metric_for_best_model=eval_bleu, an evaluation whose generation raised leaves best/ alone."
    import sacrebleu, warnings
    from llm_nb.callback import Callback
    from llm_nb.checkpoint import BestModelCB
    preds, refs = ['the cat sat on the mat', 'a dog ran'], ['the cat sat on the mat', 'a dog ran far away']
    outcomes = [RuntimeError('CUDA out of memory'), preds]   # the first evaluation's generation fails, the second's works
    def fake_generate(model, tok, prompts, **kw):
        o = outcomes.pop(0)
        if isinstance(o, Exception): raise o
        return o
    monkeypatch.setattr('llm_nb.metrics.generate_batch', fake_generate)
    best = tmp_path/'best'
    class Seen(Callback):   # after BestModelCB (190): whether best/ exists after each evaluation
        order, seen = 195, []
        def after_validate(self, learn): self.seen.append((learn.state.step, best.exists()))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        learn = learner([EvalCB(2), GenerationEvalCB(None, ['p1', 'p2'], refs), BestModelCB(tmp_path, metric='eval_bleu'), Seen()],
                        valid=dl(rows(4))).fit()
    assert (learn.state.step, learn.error, learn.stop_reason) == (4, None, None)
    assert Seen.seen == [(2, False), (4, True)]
    assert learn.state.best_metric == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert ['eval_bleu' in r for r in learn.history if 'eval_loss' in r] == [False, True]
    msgs = [str(x.message) for x in w]
    assert any(m.startswith('GenerationEvalCB.after_validate failed at step 2 (RuntimeError: CUDA out of memory)') for m in msgs), msgs
    assert [m for m in msgs if 'eval_bleu is missing' in m] == [
        'eval_bleu is missing from the evaluation at step 2 (it has eval_loss, eval_perplexity, eval_token_accuracy): best/ not updated. '
        'A side task that computes it failed, or none does.']
