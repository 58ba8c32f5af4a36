"""`python -m dualprompt.bench`: time one trial of our training loop against the field's straightforward loop.

    python -m dualprompt.bench                                  # tiny CLIP on synthetic_blurry (about a minute)
    python -m dualprompt.bench --backbone ViT-B-16 --pretrained random      # ViT-B-16, few steps (CPU: minutes)
    python -m dualprompt.bench --memory-check                   # one 1000-class ViT-B-16 training step
    python -m dualprompt.bench --memory-check --device cuda --precision amp   # the same on a GPU, bf16 text tower
    python -m dualprompt.bench --smoke                          # seconds; what the tests run
    python -m dualprompt.bench --jobs-together --method dualprompt  # a search trial's jobs: alone vs together

(a) The field's loop (CoOp/KgCoOp; protocol.md §4 and §9): every step renders the batch's augmented images
    and encodes them through the frozen image tower, and encodes every class prompt over the model's full
    context (77 tokens for CLIP); evaluation re-encodes all prompts for every test batch of 100 images.
(b) Our loop (`train_prompt` on `CachedViews`): image features of every (image, view) are extracted once,
    prompts run only up to the longest prompt's EOT token with the shared `[SOS][ctx]` prefix computed once
    for all classes (`shared_prefix.py`), and evaluation encodes the prompts once.

Both loops run the same `train_prompt` (optimiser, schedule, random streams, `method_loss`), start from the
same context vectors, and (a) renders exactly the augmented views that (b) caches, so their losses agree
step by step up to float round-off: the speed difference comes from the three mechanisms alone. (a)'s
per-step cost is that of a fresh augmentation (decode, crop, flip, normalise, image forward).

Each loop runs in a fresh subprocess, so its timings and peak memory are its own. Peak memory is
`torch.cuda.max_memory_allocated` on CUDA; on a CPU it is the process's peak resident set (VmHWM, reset
after the model is loaded) minus the resident set at that moment: tensors plus allocator slack, which
is close to, and at most a little above, what the same tensors take on an accelerator.

Modules: `field_loop` (the field's loop, (a)), `problem` (the job both loops run), `loops` (the two
loops and the memory step, timed), `measure` (clocks, peak memory, FLOP counts, the matmul probe),
`output` (the printed tables), `joint` (--jobs-together) and `cli` (the command line; each loop in a fresh
process).
"""
