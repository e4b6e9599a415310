"""Training throughput on workload W, llm_nb against HF `Trainer` and a plain PyTorch loop, in one run.

    python benchmarks/throughput.py [--steps 20] [--warmup 5] [--rounds 2] [--systems a,b,...]

W: GPT-2 `GPT2Config(n_layer=6, n_head=6, n_embd=384, n_positions=256, vocab_size=8192)`, dropout 0, context 256,
micro-batch 16, AdamW(3e-4, betas 0.9/0.95, weight decay 0.1), gradient clipping at 1.0, random token batches.
Every system runs in its own subprocess (so its peak RSS is its own), after `--warmup` untimed steps; rounds
alternate the order of the systems so that drift of the machine (thermal, neighbours) hits all of them alike.
MFU is measured against this machine's best GEMM rate, bf16 or fp32 (a 2048² matmul in each, measured in the same
run): CPUs without native bf16 (no AMX / AVX512-BF16) emulate it at a fraction of their fp32 rate.
The table is printed last."""
import argparse, json, os, resource, statistics, subprocess, sys, time

B, T, V = 16, 256, 8192
SYSTEMS = ['llm_nb', 'llm_nb_compile', 'hf_trainer', 'hf_trainer_bf16_compile', 'plain_fp32', 'plain_bf16', 'plain_fp32_compile', 'plain_bf16_compile']

def w_config():
    from transformers import GPT2Config
    return GPT2Config(n_layer=6, n_head=6, n_embd=384, n_positions=T, vocab_size=V, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)

def batches(n, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (T,), generator=g) for _ in range(n * B)]

def run_llm_nb(n, compile=False):
    "llm_nb's defaults: its model builder, optimizer factory, loader, Learner and callbacks (`mixed_precision: auto`)."
    from llm_nb.config import ModelConfig, TrainingConfig
    from llm_nb.model import build_model, compile_model
    from llm_nb.data import lm_dataloader
    from llm_nb.loop import Learner, make_optimizer, make_scheduler, ClipGradCB, TrainMetricsCB
    from llm_nb.callback import Callback
    from llm_nb.precision import keep_freed_memory
    keep_freed_memory()   # as `llm_nb train` does (before the refactor every Learner did)
    model = build_model(ModelConfig(dropout=0.0), vocab_size=V)
    if compile: compile_model(model)   # `training.compile: true`
    tc = TrainingConfig(weight_decay=0.1, max_grad_norm=1.0)
    opt = make_optimizer(model, tc)
    times = []
    class Timer(Callback):
        def before_batch(self, learn): self.t = time.perf_counter()
        def after_batch(self, learn): times.append(time.perf_counter() - self.t)
    dl = lm_dataloader(batches(n), B, pad_id=0, train=True)
    Learner(model, dl, opt=opt, sched=make_scheduler(opt, tc, n), cbs=[ClipGradCB(1.0), TrainMetricsCB(100), Timer()],
            max_steps=n, mixed_precision=tc.mixed_precision).fit()
    return times

def run_hf_trainer(n, bf16=False, compile=False):
    import torch
    from transformers import GPT2LMHeadModel, Trainer, TrainingArguments, TrainerCallback
    times = []
    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k): self.t = time.perf_counter()
        def on_step_end(self, *a, **k): times.append(time.perf_counter() - self.t)
    ds = [dict(input_ids=x, labels=x) for x in batches(n)]
    args = TrainingArguments(output_dir='/tmp/llm_nb_bench_hf', per_device_train_batch_size=B, learning_rate=3e-4, adam_beta1=0.9,
                             adam_beta2=0.95, weight_decay=0.1, max_grad_norm=1.0, max_steps=n, use_cpu=True, report_to=[],
                             save_strategy='no', logging_strategy='no', bf16=bf16, torch_compile=compile, disable_tqdm=True)
    Trainer(model=GPT2LMHeadModel(w_config()), args=args, train_dataset=ds, callbacks=[Timer()]).train()
    return times

def run_plain(n, bf16=False, compile=False):
    "nanoGPT-style: model, AdamW, a for loop."
    import torch
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel(w_config()); model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    fwd = torch.compile(model) if compile else model
    data, times = batches(n), []
    for i in range(n):
        t = time.perf_counter()
        x = torch.stack(data[i * B:(i + 1) * B])
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            loss = fwd(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return times

RUNNERS = dict(llm_nb=run_llm_nb, llm_nb_compile=lambda n: run_llm_nb(n, compile=True), hf_trainer=run_hf_trainer,
               hf_trainer_bf16_compile=lambda n: run_hf_trainer(n, bf16=True, compile=True),
               plain_fp32=run_plain, plain_bf16=lambda n: run_plain(n, bf16=True),
               plain_fp32_compile=lambda n: run_plain(n, compile=True),
               plain_bf16_compile=lambda n: run_plain(n, bf16=True, compile=True))

def gemm_peak(dtype_name='bfloat16', n=2048, reps=10):
    import torch
    dt = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    for _ in range(2): a @ b
    t = time.perf_counter()
    for _ in range(reps): a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)

def flops_per_token():
    from transformers import GPT2LMHeadModel
    from llm_nb.model import flops_per_token as f
    return f(GPT2LMHeadModel(w_config()), T)

def worker(name, steps, warmup):
    times = RUNNERS[name](steps + warmup)[warmup:]
    print(json.dumps(dict(times=times, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--steps', type=int, default=20); p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--rounds', type=int, default=2); p.add_argument('--systems', default=','.join(SYSTEMS))
    p.add_argument('--worker')
    a = p.parse_args()
    if a.worker: return worker(a.worker, a.steps, a.warmup)
    systems = a.systems.split(',')
    peaks, fpt = {d: gemm_peak(d) for d in ('bfloat16', 'float32')}, flops_per_token()
    peak = max(peaks.values())
    res = {s: dict(times=[], rss=0.0) for s in systems}
    for r in range(a.rounds):
        for s in (systems if r % 2 == 0 else systems[::-1]):
            out = subprocess.run([sys.executable, __file__, '--worker', s, '--steps', str(a.steps), '--warmup', str(a.warmup)],
                                 capture_output=True, text=True, env={**os.environ, 'TOKENIZERS_PARALLELISM': 'false'})
            if out.returncode: sys.exit(f"{s} failed:\n{out.stderr[-3000:]}")
            d = json.loads(out.stdout.strip().splitlines()[-1])
            res[s]['times'] += d['times']; res[s]['rss'] = max(res[s]['rss'], d['peak_rss_mb'])
            print(f"round {r + 1}: {s} done ({statistics.median(d['times']):.3f} s/step)", file=sys.stderr, flush=True)
    med = {s: statistics.median(B * T / t for t in res[s]['times']) for s in systems}
    base = med.get('hf_trainer')
    plain = max((s for s in systems if s.startswith('plain')), key=med.get, default=None)
    print(f"\nWorkload W: GPT-2 6x384, T={T}, batch {B}; {a.rounds} rounds x {a.steps} timed steps; "
          f"GEMM peak bf16 {peaks['bfloat16']/1e9:.0f}, fp32 {peaks['float32']/1e9:.0f} GFLOP/s; {fpt/1e9:.3f} GFLOP/token; "
          f"{os.cpu_count()} CPUs")
    print(f"{'system':<26}{'tok/s median':>13}{'min':>8}{'max':>8}{'MFU':>7}{'vs HF':>7}{'vs best plain':>14}{'peak RSS MB':>13}")
    for s in systems:
        tps = sorted(B * T / t for t in res[s]['times'])
        print(f"{s:<26}{med[s]:>13.0f}{tps[0]:>8.0f}{tps[-1]:>8.0f}{med[s] * fpt / peak:>7.1%}"
              f"{(med[s] / base if base else float('nan')):>7.2f}{(med[s] / med[plain] if plain else float('nan')):>14.2f}"
              f"{res[s]['rss']:>13.0f}")
    if plain: print(f"best plain loop: {plain}")

if __name__ == '__main__': main()
