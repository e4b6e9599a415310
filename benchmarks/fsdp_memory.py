"""Memory per rank and step time of FSDP2 (`training.fsdp=true`) against DDP, on local processes.

    python benchmarks/fsdp_memory.py [--models default,gpt2-124m] [--steps 4] [--processes 2] [--batch 4] [--length 256] [--out DIR]

Each configuration is one `accelerate launch` of `llm_nb train` on `--processes` CPU ranks (GPUs when there are any:
then without `ACCELERATE_USE_CPU`), `--steps` optimizer steps on the default corpus, no evaluation or checkpoint before
the end. Per configuration: the peak RSS of the largest rank over the whole run, final export included
(`RUSAGE_CHILDREN` of a wrapper process: the biggest descendant), rank 0's peak while training (`peak_memory_mb` of
the last logged step: RSS on CPUs, allocated memory on GPUs), the median seconds per step after the first (from `tokens_per_sec` in `loss_history.json`), and the loss
of the last step (the two should train the same model). Models: llm_nb's default GPT-2 (6 × 384, 8k vocabulary,
~14M parameters) and GPT-2 small's shape (12 × 768, the GPT-2 tokenizer, ~124M parameters)."""
import argparse, json, os, statistics, subprocess, sys, tempfile
from pathlib import Path

MODELS = {'default': [],
          'gpt2-124m': ['model.d_model=768', 'model.num_layers=12', 'model.num_heads=12', 'model.d_ff=3072', 'tokenizer.name_or_path=gpt2']}
MEASURE = ("import json, resource, subprocess, sys, time\n"
           "t = time.time(); r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
           "print(json.dumps(dict(rc=r.returncode, s=time.time() - t, rss_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,"
           " tail=(r.stdout + r.stderr)[-1500:])))")

def run(out:Path, model:str, fsdp:bool, steps:int, n:int, batch:int=4, length:int=256) -> dict:
    import torch
    from llm_nb.distributed import launch_command
    cmd, env = launch_command(n, 'train', f'output_dir={out}', f'training.max_steps={steps}', 'training.logging_steps=1',
                              f'training.per_device_train_batch_size={batch}', f'model.max_length={length}', 'training.eval_steps=100000',
                              'training.save_steps=100000', 'data.validation_split=0.02', 'logging.report_to=[]',
                              f'training.fsdp={str(fsdp).lower()}', *MODELS[model], cpu=not torch.cuda.is_available())
    r = subprocess.run([sys.executable, '-c', MEASURE, *cmd], capture_output=True, text=True, env=env)
    m = json.loads(r.stdout.strip().split('\n')[-1])
    if m['rc'] != 0: raise RuntimeError(m['tail'])
    hist = [h for h in json.loads((out/'loss_history.json').read_text()) if 'tokens_per_sec' in h]
    tokens_per_step = batch * length * n
    step_s = statistics.median(tokens_per_step / h['tokens_per_sec'] for h in hist[1:]) if len(hist) > 1 else float('nan')
    return dict(model=model, mode='FSDP' if fsdp else 'DDP', rss_mb=m['rss_mb'], train_mb=hist[-1]['peak_memory_mb'], step_s=step_s,
                loss=hist[-1]['loss'], wall_s=m['s'])

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--models', default='default,gpt2-124m'); ap.add_argument('--steps', type=int, default=4)
    ap.add_argument('--processes', type=int, default=2); ap.add_argument('--out', default=None)
    ap.add_argument('--batch', type=int, default=4); ap.add_argument('--length', type=int, default=256)
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix='fsdp_memory-'))
    rows = []
    for model in a.models.split(','):
        for fsdp in (False, True):
            rows.append(run(out/f'{model}-{"fsdp" if fsdp else "ddp"}', model, fsdp, a.steps, a.processes, a.batch, a.length))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n| model | mode | peak per rank, whole run (MB) | rank 0 peak while training (MB) | s / step | last loss |\n|---|---|---|---|---|---|")
    for r in rows: print(f"| {r['model']} | {r['mode']} | {r['rss_mb']:.0f} | {r['train_mb']:.0f} | {r['step_s']:.2f} | {r['loss']:.4f} |")
    for model in a.models.split(','):
        d, f = [next(r for r in rows if r['model'] == model and r['mode'] == m) for m in ('DDP', 'FSDP')]
        print(f"{model}: FSDP / DDP memory per rank {f['rss_mb'] / d['rss_mb']:.2f}× (while training {f['train_mb'] / d['train_mb']:.2f}×), "
              f"step time {f['step_s'] / d['step_s']:.2f}×")

if __name__ == '__main__': main()
