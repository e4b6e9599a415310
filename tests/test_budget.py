"A budget is the run's length (issue 24): a time or token budget without explicit epochs or steps trains until it is spent."
import json, math
import pytest
from llm_nb.cli import main, train
from llm_nb.config import load_config
from llm_nb.tasks import NO_STEP_LIMIT
from helpers import tiny_corpus, tiny_overrides

@pytest.fixture(scope='module')
def small(tmp_path_factory): return tiny_corpus(tmp_path_factory.mktemp('small'), n=2)   # two speeches: an epoch is a few steps

def budget_run(out, data, **kw):
    o = tiny_overrides(out, data, steps=-1, **{'training.eval_steps': 10**6, 'training.save_steps': 10**6, 'logging.report_to': '[none]',
                                               'training.warmup_steps': 0, **kw})
    return train(load_config(None, o))

def test_a_time_budget_trains_past_the_epoch_until_it_is_spent(tmp_path, small, capsys):
    learn = budget_run(tmp_path/'out', small, **{'training.max_training_hours': 0.002})   # 7.2 s
    assert learn.max_steps == NO_STEP_LIMIT and learn.stop_reason == 'time-limit'
    assert learn.state.epoch >= 2, learn.state.epoch                   # several epochs of the small corpus
    assert learn.state.elapsed >= 0.9 * 7.2   # the decay planned for the budget may end (at rate 0) a few steps early
    out = capsys.readouterr().out
    assert "budget is the run's length: about" in out
    assert learn.sched.lr_lambdas[0].moved is not None                  # warmup-stable-decay decayed within the budget
    assert math.isfinite(learn.history[-1]['loss']) and learn.history[-1]['step'] == learn.state.step

def test_explicit_epochs_bind_before_the_budget(tmp_path, small, capsys):
    learn = budget_run(tmp_path/'out', small, **{'training.max_training_hours': 0.05, 'training.num_train_epochs': 1})
    assert learn.stop_reason != 'time-limit' and learn.max_steps == learn.state.step == learn.steps_per_epoch > 10
    assert f"the run's {learn.max_steps} steps should end in about" in capsys.readouterr().out

def test_a_token_budget_is_a_step_count(tmp_path, small):
    learn = budget_run(tmp_path/'out', small, **{'training.max_tokens': 50 * 64 * 16})   # 50 steps of 16 blocks of 64 tokens
    assert learn.max_steps == 50 and learn.state.step == 50 and learn.state.epoch >= 2

def test_final_line_shows_a_real_loss(tmp_path, small, capsys):
    "A run that ends between logging steps (here a 1-second budget, logging every 100 steps) logs its last window."
    learn = budget_run(tmp_path/'out', small, **{'training.max_training_hours': 0.0003, 'training.logging_steps': 10**6})
    assert 0 < learn.state.step
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith('Done in')][-1]
    assert 'train loss nan' not in line and float(line.split('train loss ')[1].split(',')[0]) > 0

def test_more_budget_after_a_finished_decay_trains_at_a_real_rate(tmp_path, small, capsys):
    "Resuming a time-limit checkpoint with a larger budget plans a new decay instead of training on at the old decay's 0."
    out = tmp_path/'out'
    first = budget_run(out, small, **{'training.max_training_hours': 0.001})
    assert first.lr < 1e-3 * first.sched.base_lrs[0]                       # the first budget ended decayed
    more = budget_run(out, small, **{'training.max_training_hours': 0.002, 'training.resume_from': 'latest'})
    lrs = [r['learning_rate'] for r in more.history if 'learning_rate' in r and r['step'] > first.state.step]
    assert max(lrs) > 0.5 * more.sched.base_lrs[0], lrs                    # back near the peak, then a new decay
    assert 'steps until the time budget is spent' in capsys.readouterr().out

def test_a_resume_with_a_new_batch_keeps_an_open_length():
    from llm_nb.checkpoint import resumed_max_steps
    from llm_nb.config import TrainingConfig
    meta = dict(config=dict(training=dict(per_device_train_batch_size=16, gradient_accumulation_steps=1)), state=dict(step=300))
    assert resumed_max_steps(meta, TrainingConfig(per_device_train_batch_size=8, max_training_hours=1), NO_STEP_LIMIT) == NO_STEP_LIMIT

def test_tokens_and_steps_whichever_ends_first(tmp_path, small):
    learn = budget_run(tmp_path/'out', small, **{'training.max_tokens': 5 * 64 * 16, 'training.max_steps': 8})
    assert learn.max_steps == learn.state.step == 5
