"""Per-step overhead of each training technique against the plain loop, on the benchmark workload.

    python benchmarks/techniques.py                 # GPT-2 6 layers / 384 dims, T=256, batch 16, whatever device is there
    python benchmarks/techniques.py --quick         # a tiny smoke run (seconds)

Runs are interleaved: every round measures every technique once, in a fresh random order, so a change in
machine load hits all of them alike; the table shows the median ms/step over rounds and the ratio to the
baseline. Run it on a quiet machine. Expected: R-Drop about 2x (two forward passes over the batch), the
others within about 5%. Gradient checkpointing trades roughly one extra forward for memory (~1.3x) and is
listed for reference."""
import argparse, random, statistics, time
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from llm_nb.config import TrainingConfig
from llm_nb.loop import Learner, ClipGradCB, NaNGuardCB, TrainMetricsCB, make_scheduler
from llm_nb.tasks import LMTask
from llm_nb.callback import Callback
from llm_nb.techniques import EMACB, RDropTask, EarlyStoppingCB, CodeContrastiveCB, build_optimizer
from llm_nb.model import enable_gradient_checkpointing

class StepTimer(Callback):
    "Wall time of each optimizer step after `skip` warm-up steps (synchronising CUDA so the time is real)."
    order = -100
    def __init__(self, skip): self.skip, self.times = skip, []
    def _sync(self, learn):
        if learn.acc.device.type == 'cuda': torch.cuda.synchronize()
    def before_batch(self, learn): self._sync(learn); self.t = time.perf_counter()
    def after_batch(self, learn):
        self._sync(learn)
        if learn.state.step > self.skip: self.times.append(time.perf_counter() - self.t)

# name -> (TrainingConfig overrides, task factory, extra callbacks factory, model transform)
TECHNIQUES = {
    'baseline':            ({}, None, lambda: [], None),
    'label_smoothing':     ({}, lambda: LMTask(label_smoothing=0.1), lambda: [], None),
    'rdrop':               ({}, lambda: RDropTask(LMTask(), 0.05), lambda: [], None),
    'ema':                 ({}, None, lambda: [EMACB(0.998, start_step=0)], None),
    'llrd':                ({'use_llrd': True}, None, lambda: [], None),
    'cpu_offload_0.5':     ({'use_cpu_offload': True, 'cpu_offload_fraction': 0.5}, None, lambda: [], None),
    'nan_guard':           ({}, None, lambda: [NaNGuardCB()], None),
    'early_stopping':      ({}, None, lambda: [EarlyStoppingCB(3)], None),
    'aux_contrastive':     ({}, None, lambda: [CodeContrastiveCB(0.1)], None),
    'grad_checkpointing':  ({}, None, lambda: [], enable_gradient_checkpointing),
}

def make_data(n, T, vocab, bs, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, T), generator=g)
    rows = [dict(input_ids=r, labels=r.clone(), attention_mask=torch.ones(T, dtype=torch.long), domain=torch.tensor(i % 2))
            for i, r in enumerate(x)]
    return torch.utils.data.DataLoader(rows, batch_size=bs, shuffle=False, drop_last=True)

def measure(name, a):
    over, task, cbs, transform = TECHNIQUES[name]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=a.layers, n_embd=a.dim, n_head=a.heads, vocab_size=a.vocab, n_positions=a.seq))
    if transform: transform(model)
    device = 'cuda' if torch.cuda.is_available() and not a.cpu else 'cpu'
    model.to(device)
    cfg = TrainingConfig(learning_rate=1e-4, **over)
    steps = a.warmup + a.steps
    opt = build_optimizer(model, cfg)
    timer = StepTimer(a.warmup)
    learn = Learner(model, make_data(a.batch * steps, a.seq, a.vocab, a.batch), opt=opt, sched=make_scheduler(opt, cfg, steps),
                    task=task() if task else None, max_steps=steps, mixed_precision=a.precision,
                    cbs=[ClipGradCB(1.0), TrainMetricsCB(10**9), timer, *cbs()])
    learn.fit()
    return statistics.median(timer.times) * 1000

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--layers', type=int, default=6); p.add_argument('--dim', type=int, default=384); p.add_argument('--heads', type=int, default=6)
    p.add_argument('--seq', type=int, default=256); p.add_argument('--batch', type=int, default=16); p.add_argument('--vocab', type=int, default=8192)
    p.add_argument('--steps', type=int, default=10, help='timed steps per measurement'); p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--rounds', type=int, default=3); p.add_argument('--precision', default='auto'); p.add_argument('--cpu', action='store_true')
    p.add_argument('--only', nargs='*', help='a subset of: ' + ' '.join(TECHNIQUES))
    p.add_argument('--quick', action='store_true', help='tiny sizes: a smoke test of the script')
    a = p.parse_args()
    if a.quick: a.layers, a.dim, a.heads, a.seq, a.batch, a.vocab, a.steps, a.warmup, a.rounds = 2, 64, 2, 64, 4, 512, 3, 1, 2
    names = a.only or list(TECHNIQUES)
    if 'baseline' not in names: names = ['baseline', *names]
    res = {n: [] for n in names}
    rng = random.Random(0)
    for r in range(a.rounds):
        order = names[:]; rng.shuffle(order)
        for n in order:
            res[n].append(measure(n, a))
            print(f"round {r + 1}/{a.rounds} {n:<20} {res[n][-1]:9.1f} ms/step", flush=True)
    base = statistics.median(res['baseline'])
    print(f"\nGPT-2 {a.layers} layers / {a.dim} dims, T={a.seq}, batch {a.batch}, precision {a.precision}, "
          f"device {'cuda' if torch.cuda.is_available() and not a.cpu else 'cpu'}; median of {a.rounds} rounds x {a.steps} steps")
    print(f"{'technique':<20} {'ms/step':>9} {'vs baseline':>12}")
    for n in names:
        m = statistics.median(res[n])
        print(f"{n:<20} {m:9.1f} {m / base:11.2f}x")

if __name__ == '__main__': main()
