"""GPU throughput at Pythia-410m shapes, saetrack against SAELens, side by side in one process.

What is compared, and why these shapes: the paper's pythia-410m series trains 29 ReLU SAEs (d_in 1024, d_sae
65,536 = 64 x 1024, batch 4096) on blocks.4.hook_resid_pre, and harvests that hook at every checkpoint on rows of
128 tokens. So, on the GPU:

1. SAE training act/s: saetrack's `train_sae` against SAELens' `SAETrainer` (driven through its `data_provider`,
   as bench/sae_training.py does on CPU) on the same SAE class, initial weights and data: random float32
   activations in a CPU array, each batch gathered on the CPU and copied to the GPU, as `train_sae` is used
   on a memory-mapped cache. Achieved TFLOP/s counts saetrack's 5 matmuls of 2·B·d_in·d_sae per step.
2. Harvest tokens/s on a randomly initialised Pythia-410m-config GPT-NeoX (built offline, converted with
   `hooked_from_hf`): saetrack's `harvest` (stops at the hook's layer, copies into a CPU array) against a real
   SAELens `ActivationsStore.get_activations` (its `run_with_cache` with `stop_at_layer`; activations stay on
   the GPU), in float32 and under bfloat16 autocast.
3. The wall time of the paper's 29-SAE plan at those two rates.

`run(device="cpu", small=True)` shrinks every shape so the code can be checked on a CPU in seconds.
`python -m bench.gpu` runs the full shapes on CUDA, prints markdown and writes bench/gpu_results.json;
without a CUDA GPU it prints one line and exits 0."""
import copy, json, time
from pathlib import Path
import numpy as np
import torch

HERE = Path(__file__).parent
PYTHIA_410M = dict(vocab_size=50304, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                   intermediate_size=4096, max_position_embeddings=2048)
FULL = dict(d_in=1024, d_sae=65536, batch=4096, warmup=3, steps=50, acts_rows=1 << 18,
            lm=PYTHIA_410M, hook="blocks.4.hook_resid_pre", ctx=128, n_rows=2048, batch_rows=64)
SMALL = dict(d_in=64, d_sae=512, batch=256, warmup=2, steps=5, acts_rows=4096,
             lm=dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                     max_position_embeddings=64), hook="blocks.1.hook_resid_pre", ctx=16, n_rows=32, batch_rows=8)

def _sync(device):
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

def best_time(n: int, fn, device, setup=lambda: None) -> float:
    "Fastest of n runs of fn(setup()) in wall seconds, synchronised with the device; setup is not timed."
    sync, times = _sync(device), []
    for _ in range(n):
        arg = setup(); sync()
        t = time.perf_counter(); fn(arg); sync()
        times.append(time.perf_counter() - t)
    return min(times)

# --- 1. SAE training ---------------------------------------------------------------------------------------------

def train_ours(sae, acts, n_tokens: int, batch: int):
    from saetrack.sae import train_sae
    train_sae(sae, acts, n_tokens, lr=4e-4, l1_coefficient=8e-5, batch_size=batch, warmup_steps=10, seed=0, progress=False)

def train_saelens(sae, acts, n_tokens: int, batch: int, device):
    "SAELens' SAETrainer on the same batches: CPU rows gathered by saetrack's index stream; the trainer moves them."
    from sae_lens import SAETrainer
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from saetrack.sae import BatchIndexStream
    x_all = torch.from_numpy(acts)
    stream = BatchIndexStream(len(acts), batch, seed=0)
    def provider():
        while True: yield x_all.index_select(0, stream.next())
    sae.cfg.l1_coefficient = 8e-5
    cfg = SAETrainerConfig(total_training_samples=n_tokens, train_batch_size_samples=batch, lr=4e-4, lr_end=4e-4,
                           lr_warm_up_steps=10, lr_scheduler_name="constant", device=str(device),
                           logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, save_final_checkpoint=False)
    SAETrainer(cfg=cfg, sae=sae, data_provider=provider()).fit()

def batch_copy_seconds(acts, batch: int, steps: int, device) -> float:
    "The batch gather on the CPU and copy to `device` that train_sae does per step, alone, for `steps` steps."
    from saetrack.sae import BatchIndexStream
    x_all, stream = torch.from_numpy(acts), BatchIndexStream(len(acts), batch, seed=0)
    def copy_all(_):
        for _ in range(steps): x_all.index_select(0, stream.next()).to(device, non_blocking=True)
    return best_time(2, copy_all, device)

def sae_training(s: dict, device) -> dict:
    from saetrack.sae import make_sae
    acts = np.random.default_rng(0).standard_normal((s["acts_rows"], s["d_in"]), dtype=np.float32)
    base = make_sae(s["d_in"], s["d_sae"], seed=0, device=device)
    fresh = lambda: copy.deepcopy(base)
    B, n, warm = s["batch"], s["steps"] * s["batch"], s["warmup"] * s["batch"]
    train_ours(fresh(), acts, warm, B); train_saelens(fresh(), acts, warm, B, device)      # warm-up: kernels, allocator
    t_ours = best_time(2, lambda sae: train_ours(sae, acts, n, B), device, fresh)
    t_sl = best_time(2, lambda sae: train_saelens(sae, acts, n, B, device), device, fresh)
    flops = 10 * s["d_in"] * s["d_sae"] * n
    return dict(d_in=s["d_in"], d_sae=s["d_sae"], batch=B, steps=s["steps"], ours_acts_per_s=n / t_ours,
                saelens_acts_per_s=n / t_sl, ratio=t_sl / t_ours, ours_tflops=flops / t_ours / 1e12,
                batch_copy_share=batch_copy_seconds(acts, B, s["steps"], device) / t_ours)

# --- 2. Harvest --------------------------------------------------------------------------------------------------

def neox_model(lm: dict, device):
    "A randomly initialised GPT-NeoX of Pythia's layout (rotary_pct 0.25, parallel residual), as a HookedTransformer."
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from saetrack.checkpoints import hooked_from_hf
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = GPTNeoXForCausalLM(GPTNeoXConfig(**lm, rotary_pct=0.25, use_parallel_residual=True, hidden_act="gelu",
                                              tie_word_embeddings=False)).eval()
    return hooked_from_hf(hf, None, str(device))

def token_rows(n_rows: int, ctx: int, vocab: int) -> np.ndarray:
    rows = np.random.default_rng(0).integers(0, vocab, (n_rows, ctx), dtype=np.int32)
    rows[:, 0] = 0                                                                   # BOS
    return rows

def saelens_store(model, rows: np.ndarray, hook: str, batch_rows: int, bf16: bool, device):
    "A real SAELens ActivationsStore over the rows as an in-memory pretokenised dataset."
    from datasets import Dataset
    from sae_lens.training.activations_store import ActivationsStore
    return ActivationsStore(model, Dataset.from_dict({"input_ids": rows.tolist()}), streaming=False, hook_name=hook,
                            hook_head_index=None, context_size=rows.shape[1], d_in=model.cfg.d_model, n_batches_in_buffer=2,
                            total_training_tokens=len(rows), store_batch_size_prompts=batch_rows, train_batch_size_tokens=4096,
                            prepend_bos=False, normalize_activations="none", device=torch.device(device), dtype="float32",
                            autocast_lm=bf16)

def saelens_harvest(store, rows: np.ndarray, batch_rows: int, device):
    "The store's own `get_activations` on each batch of rows (what its buffer fill calls); results stay on the device."
    for i in range(0, len(rows), batch_rows):
        store.get_activations(torch.from_numpy(rows[i:i + batch_rows]).long().to(device))

def harvest_rates(model, rows: np.ndarray, hook: str, batch_rows: int, device) -> dict:
    from saetrack.activations import harvest
    per, d = rows.shape[1] - 1, model.cfg.d_model
    out = np.zeros((len(rows) * per, d), dtype=np.float32)
    n = out.shape[0]
    r = {}
    for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        store = saelens_store(model, rows, hook, batch_rows, dtype is not None, device)
        harvest(model, rows[:batch_rows], {hook: out}, batch_rows, autocast=dtype)          # warm-up
        saelens_harvest(store, rows[:batch_rows], batch_rows, device)
        t_ours = best_time(2, lambda _: harvest(model, rows, {hook: out}, batch_rows, autocast=dtype), device)
        t_sl = best_time(2, lambda _: saelens_harvest(store, rows, batch_rows, device), device)
        theirs = store.get_activations(torch.from_numpy(rows[:batch_rows]).long().to(device))[:, 1:].reshape(-1, d).float().cpu()
        ours = torch.from_numpy(out[:len(theirs)])
        r[name] = dict(ours_tokens_per_s=n / t_ours, saelens_tokens_per_s=n / t_sl, ratio=t_sl / t_ours,
                       agree_rel_err=float(torch.linalg.vector_norm(ours - theirs) / torch.linalg.vector_norm(theirs)))
    return r

def harvesting(s: dict, device) -> dict:
    from saetrack.activations import BF16_TOL, bf16_error
    from saetrack.checkpoints import check_hook
    model = neox_model(s["lm"], device)
    rows = token_rows(s["n_rows"], s["ctx"], s["lm"]["vocab_size"])
    layer = check_hook(model, s["hook"])
    err = bf16_error(model, rows[:64], [s["hook"]])
    return dict(hook=s["hook"], ctx=s["ctx"], n_rows=s["n_rows"], batch_rows=s["batch_rows"], tokens=s["n_rows"] * (s["ctx"] - 1),
                layers_ours=layer, layers_saelens=layer + 1, bf16_rel_err=err, bf16_tol=BF16_TOL,
                used_dtype="bfloat16" if err <= BF16_TOL else "float32",
                **harvest_rates(model, rows, s["hook"], s["batch_rows"], device))

# --- 3. The paper's plan -----------------------------------------------------------------------------------------

def plan_hours(sae_acts_per_s: float, harvest_tokens_per_s: float) -> dict:
    "Wall hours of the 29-SAE pythia-410m series at these rates (SAE training + harvesting every checkpoint's tokens)."
    from saetrack.config import get_preset, pythia_plan
    p, a = pythia_plan("pythia-410m"), get_preset("pythia-410m").acts
    harvest_tokens = p["n_saes"] * (a.train_tokens + a.eval_tokens)
    sae_h, harvest_h = p["total_tokens"] / sae_acts_per_s / 3600, harvest_tokens / harvest_tokens_per_s / 3600
    return dict(n_saes=p["n_saes"], sae_tokens=p["total_tokens"], harvest_tokens=harvest_tokens, sae_hours=sae_h,
                harvest_hours=harvest_h, total_hours=sae_h + harvest_h, plan_sae_hours_assumed=p["sae_gpu_hours"],
                plan_tflops_assumed=p["gpu_tflops_assumed"])

# --- Together ----------------------------------------------------------------------------------------------------

def environment(device) -> dict:
    cuda = torch.device(device).type == "cuda"
    return dict(device=torch.cuda.get_device_name(device) if cuda else "cpu", torch=torch.__version__,
                cuda=torch.version.cuda, float32_matmul_precision=torch.get_float32_matmul_precision(),
                date=time.strftime("%Y-%m-%d"))

def run(device="cuda", small: bool = False) -> dict:
    s = SMALL if small else FULL
    t0 = time.time()
    sae, h = sae_training(s, device), harvesting(s, device)
    r = dict(env=environment(device), small=small, sae=sae, harvest=h,
             plan=plan_hours(sae["ours_acts_per_s"], h[h["used_dtype"]]["ours_tokens_per_s"]))
    r["seconds"] = time.time() - t0
    return r

def no_gpu_reason() -> str:
    build = "CPU build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
    return f"no CUDA GPU was visible to torch on this machine (torch {torch.__version__}, {build})"

def main() -> dict | None:
    "The full-shape run on CUDA, saved to bench/gpu_results.json; None without a CUDA GPU."
    if not torch.cuda.is_available(): return None
    r = run("cuda")
    (HERE/"gpu_results.json").write_text(json.dumps(r, indent=1))
    return r

def markdown(r: dict) -> list[str]:
    "The section's body (no heading): SAE training and harvest tables, then the plan's wall time."
    e, s, h, p = r["env"], r["sae"], r["harvest"], r["plan"]
    lines = [f"Measured {e['date']} on {e['device']} (torch {e['torch']}, CUDA {e['cuda']}, float32 matmul precision "
             f"'{e['float32_matmul_precision']}'{'; small smoke shapes, not Pythia-410m' if r['small'] else ''}).", "",
             f"SAE training (ReLU + L1, d_in {s['d_in']}, d_sae {s['d_sae']:,}, batch {s['batch']}, {s['steps']} steps, best of 2; "
             "activations in a CPU float32 array, each batch gathered on the CPU and copied):", "",
             "| saetrack act/s | SAELens SAETrainer act/s | ratio (goal >= 1.5) | saetrack TFLOP/s | batch gather + copy share |",
             "|---|---|---|---|---|",
             f"| {s['ours_acts_per_s']:,.0f} | {s['saelens_acts_per_s']:,.0f} | {s['ratio']:.2f} | {s['ours_tflops']:.1f} | "
             f"{s['batch_copy_share']:.1%} |", "",
             "TFLOP/s counts 10 x d_in x d_sae FLOPs per token (5 matmuls). The gather + copy share is that work timed alone "
             "over the same steps, as a fraction of saetrack's training time.", "",
             f"Harvest ({h['hook']} of a randomly initialised {'small' if r['small'] else 'Pythia-410m-config'} GPT-NeoX, {h['n_rows']} rows of {h['ctx']} tokens, "
             f"{h['batch_rows']} rows a batch, best of 2):", "",
             "| forward | saetrack harvest tokens/s | SAELens ActivationsStore.get_activations tokens/s | ratio | the two agree to (rel. err.) |",
             "|---|---|---|---|---|"]
    for name, label in (("float32", "float32"), ("bfloat16", "bfloat16 autocast")):
        x = h[name]
        lines.append(f"| {label} | {x['ours_tokens_per_s']:,.0f} | {x['saelens_tokens_per_s']:,.0f} | {x['ratio']:.2f} | {x['agree_rel_err']:.1e} |")
    lines += ["", f"saetrack runs {h['layers_ours']} blocks and copies the activations into a CPU array; SAELens runs "
              f"{h['layers_saelens']} (stop_at_layer = layer + 1) and keeps them on the GPU. bfloat16 relative error against "
              f"float32: {h['bf16_rel_err']:.4f} (harvest uses bfloat16 when it is <= {h['bf16_tol']}, so {h['used_dtype']} here).", "",
              f"The paper's {p['n_saes']}-SAE pythia-410m plan at these rates: SAE training {p['sae_tokens']:,} tokens, "
              f"{p['sae_hours']:.1f} h; harvesting {p['harvest_tokens']:,} tokens ({h['used_dtype']}), {p['harvest_hours']:.1f} h; "
              f"total {p['total_hours']:.1f} h (pythia_plan's estimate of SAE training at an assumed {p['plan_tflops_assumed']:.0f} "
              f"TFLOP/s: {p['plan_sae_hours_assumed']:.1f} h). Not counted: loading 29 checkpoints, writing the caches to disk, evaluation."]
    return lines

if __name__ == "__main__":
    result = main()
    if result is None: print(f"skipped: {no_gpu_reason()}")
    else: print("\n".join(markdown(result)))
