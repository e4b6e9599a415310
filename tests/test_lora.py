"LoRA / QLoRA: target modules, parameter report, gradient checkpointing grads, the bitsandbytes CPU trap, adapter checkpoints, merge."
import json
from pathlib import Path
import pytest, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
from llm_nb.config import Config, ModelConfig, LoraConfig, TrainingConfig
from llm_nb.model import count_params
from llm_nb.loop import Learner, make_optimizer
from llm_nb.checkpoint import save_hf
from llm_nb.tokenisation import train_tokenizer
from llm_nb.testing import tiny_gpt2, tiny_llama
from llm_nb.lora import (auto_target_modules, peft_lora_config, add_lora, trainable_report, describe_trainable, load_quantised,
                         lora_model, save_adapter_state, load_adapter_state, merge_lora, is_peft)

V = 100
def gpt2(vocab=V): return tiny_gpt2(vocab, n_embd=64, n_positions=64, dropout=0.1)   # GPT-2's own dropout
def llama(vocab=V): return tiny_llama(vocab, hidden=64, n_positions=64)
IDS = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
NO_DROP = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0)

def lora_B_grads(model, ids=IDS):
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if 'lora_B' in n}

@pytest.fixture(scope='module')
def llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('llama')
    llama().save_pretrained(d)
    return d

def test_auto_targets():
    assert auto_target_modules(gpt2()) == ['c_attn', 'c_proj', 'c_fc']
    assert auto_target_modules(llama()) == ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']
    m = add_lora(llama(), NO_DROP)
    wrapped = {n.split('.')[-1] for n, mod in m.named_modules() if hasattr(mod, 'lora_A')}
    assert wrapped == set(auto_target_modules(llama()))
    with pytest.raises(ValueError, match=r"lora.target_modules: \['c_attn'\]"): peft_lora_config(LoraConfig(target_modules=['c_attn']), llama())

@pytest.mark.parametrize('make,per_layer', [(gpt2, (64 + 192) + (64 + 64) + (64 + 256) + (256 + 64)),
                                            (llama, 4 * (64 + 64) + 2 * (64 + 128) + (128 + 64))])
def test_trainable_report(make, per_layer):
    base = count_params(make())
    m = add_lora(make(), NO_DROP)
    r = trainable_report(m)
    assert r['trainable'] == 2 * NO_DROP.r * per_layer  # r·(d_in + d_out) per adapted matrix, 2 layers
    assert (r['trainable'], r['total']) == m.get_nb_trainable_parameters()
    assert r['total'] == base + r['trainable']
    assert f"{r['trainable']:,}" in describe_trainable(m)

@pytest.mark.parametrize('make', [gpt2, llama])
def test_gradient_checkpointing_lora_grads(make):
    ref = lora_B_grads(add_lora(make(), NO_DROP))
    m = add_lora(make(), NO_DROP, gradient_checkpointing=True)
    assert m.base_model.model.is_activation_checkpointing
    got = lora_B_grads(m)
    assert len(got) == len(ref) > 0
    for n in ref:
        assert got[n].abs().sum() > 0, f"{n}: zero gradient under checkpointing"
        torch.testing.assert_close(got[n], ref[n], atol=1e-6, rtol=1e-5)
    assert all(p.grad is None for n, p in m.named_parameters() if 'lora' not in n)  # the base stays frozen

def test_qlora_4bit_cpu_trap_fixed(llama_dir):
    "An eval-mode no-grad forward (evaluation, generate) before training must not change the LoRA gradients."
    def grads(eval_first):
        q = load_quantised(ModelConfig(name_or_path=str(llama_dir), load_in_4bit=True))
        assert q.is_loaded_in_4bit
        torch.manual_seed(1)
        m = add_lora(q, NO_DROP, gradient_checkpointing=True)
        if eval_first:
            m.eval()
            with torch.no_grad(): m(input_ids=IDS)
        return lora_B_grads(m)
    a, b = grads(False), grads(True)
    for n in a:
        assert torch.isfinite(a[n]).all() and a[n].abs().sum() > 0, n
        torch.testing.assert_close(b[n], a[n], atol=1e-6, rtol=1e-5)
    # and the 4-bit forward is close to the full-precision model it came from (NF4 error, not garbage)
    q = load_quantised(ModelConfig(name_or_path=str(llama_dir), load_in_4bit=True)).eval()
    full = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    with torch.no_grad():
        assert (q(IDS).logits.float() - full(IDS).logits).abs().max() < 0.1

def test_qlora_8bit_step(llama_dir):
    m = add_lora(load_quantised(ModelConfig(name_or_path=str(llama_dir), load_in_8bit=True)), NO_DROP)
    assert m.base_model.model.is_loaded_in_8bit
    g = lora_B_grads(m)
    assert g and all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in g.values())

def test_qlora_trains_in_learner(llama_dir):
    cfg = Config(training_type='lora', model=ModelConfig(name_or_path=str(llama_dir), load_in_4bit=True), lora=NO_DROP)
    m = lora_model(cfg)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    batches = [dict(input_ids=IDS, labels=IDS)] * 3
    learn = Learner(m, batches, opt=make_optimizer(m, TrainingConfig(learning_rate=1e-2)), max_steps=3, mixed_precision='no')
    learn.fit()
    assert torch.isfinite(learn.loss)
    after = dict(learn.raw_model.named_parameters())
    assert all(not torch.equal(after[n], before[n]) for n in before if 'lora_B' in n)
    assert all(torch.equal(after[n], before[n]) for n in before if 'lora' not in n)  # 4-bit base untouched

def test_config_errors():
    with pytest.raises(ValueError, match='name_or_path'): lora_model(Config(training_type='lora', model=ModelConfig(load_in_4bit=True)))
    with pytest.raises(ValueError, match='choose one'):
        load_quantised(ModelConfig(name_or_path='x', load_in_4bit=True, load_in_8bit=True))
    with pytest.raises(ValueError, match='lora.r'): peft_lora_config(LoraConfig(r=0), gpt2())

def test_adapter_folder_loads_with_peft(tmp_path):
    from llm_nb.checkpoint import save_hf
    base = gpt2(); base.save_pretrained(tmp_path/'base')
    m = add_lora(AutoModelForCausalLM.from_pretrained(tmp_path/'base'), NO_DROP)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if 'lora_B' in n: p.normal_(std=0.1)
    save_hf(m, None, tmp_path/'final')  # the checkpoint module's exporter, unchanged, on a PeftModel
    files = {p.name for p in (tmp_path/'final').iterdir()}
    assert {'adapter_config.json', 'adapter_model.safetensors'} <= files and 'model.safetensors' not in files
    assert (tmp_path/'final'/'adapter_model.safetensors').stat().st_size < 200_000  # adapter only, not the base
    back = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path/'base'), tmp_path/'final').eval()
    m.eval()
    with torch.no_grad(): torch.testing.assert_close(back(IDS).logits, m(IDS).logits)

def test_merge_lora(tmp_path):
    tok = train_tokenizer(['hello world, hello there'] * 10, vocab_size=300)
    gpt2(len(tok)).save_pretrained(tmp_path/'base')
    m = add_lora(AutoModelForCausalLM.from_pretrained(tmp_path/'base'), LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, bias='none'))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if 'lora_B' in n: p.normal_(std=0.1)
    m.save_pretrained(tmp_path/'adapter'); tok.save_pretrained(tmp_path/'adapter')
    out = save_hf(*merge_lora(tmp_path/'adapter'), tmp_path/'merged')  # what `llm_nb merge-lora` writes
    assert (out/'model.safetensors').exists() and (out/'tokenizer.json').exists() and not (out/'adapter_config.json').exists()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not is_peft(merged) and not any('lora' in n for n, _ in merged.named_parameters())
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, m(IDS).logits, atol=1e-5, rtol=1e-4)
        # reference: W + (alpha/r)·(B A)ᵀ by hand for one Conv1D layer (weights stored in×out)
        lin = m.base_model.model.transformer.h[0].attn.c_attn
        w = lin.base_layer.weight + (16 / 4) * (lin.lora_B['default'].weight @ lin.lora_A['default'].weight).T
        torch.testing.assert_close(merged.transformer.h[0].attn.c_attn.weight, w)
    with pytest.raises(FileNotFoundError, match='adapter_config.json'): merge_lora(tmp_path/'base')

def test_adapter_checkpoint_resume(tmp_path):
    "2 steps, adapter-only checkpoint (+ optimizer), 2 more in a fresh Learner == 4 uninterrupted steps."
    batches = [dict(input_ids=IDS[:, :8 + i], labels=IDS[:, :8 + i]) for i in range(4)]
    def learner(steps, dl):
        m = add_lora(gpt2(), NO_DROP)
        m.base_model.model.config.resid_pdrop = 0
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout): mod.p = 0.0
        return Learner(m, dl, opt=make_optimizer(m, TrainingConfig(learning_rate=1e-2)), max_steps=steps, mixed_precision='no')
    full = learner(4, batches).fit()
    first = learner(2, batches[:2]).fit()
    save_adapter_state(first.raw_model, tmp_path/'adapter.safetensors')
    torch.save(first.opt.state_dict(), tmp_path/'optimizer.pt')
    assert (tmp_path/'adapter.safetensors').stat().st_size < 100_000
    second = learner(2, batches[2:])
    load_adapter_state(second.raw_model, tmp_path/'adapter.safetensors')
    second.opt.load_state_dict(torch.load(tmp_path/'optimizer.pt', weights_only=True))
    second.fit()
    a, b = dict(full.raw_model.named_parameters()), dict(second.raw_model.named_parameters())
    for n in a:
        if 'lora' in n: torch.testing.assert_close(b[n], a[n], atol=1e-6, rtol=1e-5)
    with pytest.raises(KeyError, match='shapes do not match'):
        load_adapter_state(add_lora(gpt2(), LoraConfig(r=8)), tmp_path/'adapter.safetensors')
    with pytest.raises(KeyError, match='keys do not match'):
        load_adapter_state(add_lora(gpt2(), LoraConfig(r=4, target_modules=['c_attn'])), tmp_path/'adapter.safetensors')

@pytest.mark.skipif(not torch.cuda.is_available(), reason='GPU only: QLoRA with CUDA bitsandbytes kernels')
def test_qlora_cuda(llama_dir):
    m = add_lora(load_quantised(ModelConfig(name_or_path=str(llama_dir), load_in_4bit=True)), NO_DROP, gradient_checkpointing=True)
    assert next(m.parameters()).is_cuda
    g = lora_B_grads(m, IDS.cuda())
    assert g and all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in g.values())

def test_new_chat_tokens_are_trained_saved_and_merged(tmp_path):
    "SFT adds <|im_start|>/<|im_end|>: their new embedding rows train, and the adapter folder reproduces them on reload and merge."
    from llm_nb.sft import ensure_chat_template, prepare_model_for_chat
    tok = train_tokenizer(['hello world, hello there'] * 10, vocab_size=300)
    gpt2(len(tok)).save_pretrained(tmp_path/'base'); tok.save_pretrained(tmp_path/'base')
    tok = ensure_chat_template(tok)
    m = prepare_model_for_chat(lora_model(Config(training_type='lora', model=ModelConfig(name_or_path=str(tmp_path/'base')), lora=NO_DROP), tok), tok)
    assert m.config.vocab_size == len(tok) and m.peft_config["default"].trainable_token_indices == [len(tok) - 2, len(tok) - 1]
    end = tok.convert_tokens_to_ids('<|im_end|>')
    x = torch.tensor([[5, end - 1, 7, end]])
    before = m.get_input_embeddings()(x).detach().clone()
    learn = Learner(m, [dict(input_ids=x, labels=x)] * 5, opt=make_optimizer(m, TrainingConfig(learning_rate=1e-2)), max_steps=5, mixed_precision='no')
    learn.fit()
    m.eval()
    after = m.get_input_embeddings()(x).detach()
    assert torch.equal(after[0, [0, 2]], before[0, [0, 2]]) and not torch.equal(after[0, [1, 3]], before[0, [1, 3]])  # only new rows move
    m.save_pretrained(tmp_path/'adapter'); tok.save_pretrained(tmp_path/'adapter')
    with torch.no_grad(): ref = m(input_ids=x).logits
    b = AutoModelForCausalLM.from_pretrained(tmp_path/'base'); b.resize_token_embeddings(len(tok))
    back = PeftModel.from_pretrained(b, tmp_path/'adapter').eval()
    merged = AutoModelForCausalLM.from_pretrained(save_hf(*merge_lora(tmp_path/'adapter'), tmp_path/'merged')).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=x).logits, ref)
        torch.testing.assert_close(merged(input_ids=x).logits, ref, atol=1e-5, rtol=1e-4)
