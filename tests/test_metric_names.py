"""The metric names `load_config` accepts for `training.metric_for_best_model` are the names the code produces.
00_config lists them (it comes before the code that computes them); these tests catch the two drifting apart."""
import math, torch
import pytest
from llm_nb.config import (Config, LM_EVAL_METRICS, DPO_EVAL_METRICS, GENERATION_METRICS, BERTSCORE_METRICS, DOMAIN_METRICS,
                           eval_metrics, is_eval_metric, load_config)
from llm_nb.dpo import dpo_metrics
from llm_nb.metrics import bleu_rouge
from llm_nb.loop import Learner
from llm_nb.tasks import LMTask

def test_dpo_names():
    sums = dict(pairs=2, rewards_chosen=1., rewards_rejected=0., correct=1, logps_chosen=-3., logps_rejected=-4., loss=1.,
                logratio=0.5, tokens=10, loss_clean=0.5, loss_flipped=0.7)
    assert set(dpo_metrics(sums, 'eval_')) <= set(DPO_EVAL_METRICS)

def test_domain_and_generation_names():
    sums = dict(loss=torch.tensor(5.), correct=torch.tensor(2.), n=torch.tensor(4.), domain_loss=torch.tensor([2., 3.]),
                domain_correct=torch.tensor([1., 1.]), domain_n=torch.tensor([2., 2.]))
    m = {k: v for k, v in LMTask(domains=['code', 'prose']).eval_metrics(sums).items() if k not in LM_EVAL_METRICS}
    assert len(m) == 6 and all(is_eval_metric(k, DOMAIN_METRICS) for k in m)
    assert {f'eval_{k}' for k in bleu_rouge(['a b c d'], ['a b c d'])} == set(GENERATION_METRICS)

def test_lm_validation_names():
    from llm_nb.testing import tiny_gpt2
    model = tiny_gpt2(32, n_layer=1, n_embd=16, n_positions=8, dropout=0.1)
    x = torch.randint(0, 32, (2, 8))
    learn = Learner(model, None, [dict(input_ids=x, labels=x)], task=LMTask(), opt=torch.optim.SGD(model.parameters(), lr=0.), mixed_precision='no')
    assert set(learn.validate()) == set(LM_EVAL_METRICS)

def test_every_listed_name_is_accepted():
    cfg = ['evaluation.generation_file=g.jsonl', 'evaluation.bertscore_model=enc', 'data.domain_field=d']
    for name in LM_EVAL_METRICS + GENERATION_METRICS + BERTSCORE_METRICS + ('eval_code_perplexity',):
        assert load_config(None, cfg + [f'training.metric_for_best_model={name}']).training.metric_for_best_model == name
    for name in DPO_EVAL_METRICS:
        assert load_config(None, ['training_type=dpo', f'training.metric_for_best_model={name}']).training.metric_for_best_model == name

def test_bits_per_byte_from_the_command_line(tmp_path):
    "eval_bpb in the history equals eval_loss / (ln 2 · bytes per token), the ratio recomputed here from the eval files and the saved tokenizer."
    from transformers import AutoTokenizer
    from helpers import tiny_corpus, tiny_overrides
    from llm_nb.cli import train
    docs, held = tiny_corpus(tmp_path/'train', n=3), tmp_path/'held'
    held.mkdir(); f = sorted(docs.glob('*.txt'))[0]; f.rename(held/f.name)
    learn = train(load_config(None, tiny_overrides(tmp_path/'out', docs, steps=4, **{'data.eval_file': held, 'logging.report_to': '[none]'})))
    texts = [p.read_text() for p in sorted(held.glob('*.txt'))]
    tok = AutoTokenizer.from_pretrained(tmp_path/'out'/'final')
    ratio = sum(len(t.encode()) for t in texts) / sum(len(i) + 1 for i in tok(texts, add_special_tokens=False)['input_ids'])
    rec = [r for r in learn.history if 'eval_bpb' in r][-1]
    assert math.isclose(rec['eval_bpb'], rec['eval_loss'] / (math.log(2) * ratio), rel_tol=1e-3)
    assert 0.5 < ratio < 8 and rec['eval_bpb'] > 0
