"""`training.eval_strategy` and `training.save_strategy` from the command line (`llm_nb train`, run in this process): with
`epoch`, a two-epoch run is evaluated and checkpointed at both epoch ends, the last included, keeps its best epoch in
`best/`, and resumed from its last checkpoint has nothing left to do. With `no`, only the end of the run is evaluated
and saved."""
import json
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from llm_nb.cli import main
from helpers import tiny_corpus, tiny_overrides

@pytest.fixture(scope='module')
def docs(tmp_path_factory): return tiny_corpus(tmp_path_factory.mktemp('docs'), n=2)   # 1 speech to train on, 1 to validate

def args(out, docs, **kw):
    "Two epochs of the tiny model."
    return tiny_overrides(out, docs, steps=-1, **{'training.num_train_epochs': 2, 'training.eval_steps': 3, 'training.save_steps': 3, 'training.per_device_train_batch_size': 32,
                                                  'logging.report_to': '[none]', **kw})

def history(out): return json.loads((Path(out)/'loss_history.json').read_text())
def ckpts(out): return sorted(p.name for p in (Path(out)/'checkpoints').glob('*'))
def tensors(folder):   # the tied embedding is saved as lm_head.weight by a checkpoint, as transformer.wte.weight by save_pretrained
    return {k.replace('lm_head', 'transformer.wte'): v for k, v in load_file(Path(folder)/'model.safetensors').items()}

def test_epoch_strategies_evaluate_and_save_every_epoch_end(docs, tmp_path):
    out = tmp_path/'out'
    main(['train', *args(out, docs, **{'training.eval_strategy': 'epoch', 'training.save_strategy': 'epoch'})])
    h = history(out)
    last = h[-1]['step']
    assert last % 2 == 0 and last >= 4, last
    evals = [(r['step'], r['epoch'], r['eval_loss']) for r in h if 'eval_loss' in r]
    assert [(s, e) for s, e, _ in evals] == [(last // 2, 1.0), (last, 2.0)]   # once at each epoch's end, not every 3 steps
    assert ckpts(out) == ['epoch-1', 'epoch-2']                               # no step-N, and the last epoch has its checkpoint
    for name, (step, _, _) in zip(ckpts(out), evals):
        assert json.loads((out/'checkpoints'/name/'trainer_state.json').read_text())['state']['step'] == step
    best_epoch = min(range(2), key=lambda i: evals[i][2]) + 1
    best, chosen = tensors(out/'best'), tensors(out/'checkpoints'/f'epoch-{best_epoch}')
    assert best.keys() == chosen.keys() and all(torch.equal(best[k], chosen[k]) for k in best)
    assert (out/'final'/'model.safetensors').exists()
    # resumed from the last epoch's checkpoint, the run is finished: no step, no evaluation, the same history and checkpoints
    final = tensors(out/'final')
    main(['train', *args(out, docs, **{'training.eval_strategy': 'epoch', 'training.save_strategy': 'epoch', 'training.resume_from': 'latest'})])
    assert history(out) == h and ckpts(out) == ['epoch-1', 'epoch-2']
    again = tensors(out/'final')
    assert all(torch.equal(final[k], again[k]) for k in final)

def test_no_strategies_evaluate_and_save_only_the_end(docs, tmp_path):
    out = tmp_path/'out'
    main(['train', *args(out, docs, **{'training.eval_strategy': 'no', 'training.save_strategy': 'no'})])
    h = history(out)
    assert [r['step'] for r in h if 'eval_loss' in r] == [h[-1]['step']]   # only the end-of-run evaluation
    assert ckpts(out) == []
    assert (out/'final'/'model.safetensors').exists()
