#!/usr/bin/env bash
# Issue 23 on the GPU, in device calls of under 10 minutes each (run from the repository root, with lorakit's
# src/ and the wheels of TRL, peft, transformers, bitsandbytes, liger-kernel and datasets on PYTHONPATH):
#   bash bench/peer_speed_device.sh table OUT_DIR  # the four settings, TRL best practice and lorakit, equal tokens per step,
#       and lorakit with training.shared_prefix=false (EXTRA=... other --set rows, '' none); on the two capped (8 GB)
#       settings also lorakit-at-peer-peak: lorakit with the allocator capped at TRL's peak_reserved of that setting,
#       just measured (issue 23's "at no higher peak"; TOOLS=trl,lorakit drops it). Rows take ~35-95 s each, so the
#       four settings (14 rows) do not fit one 10-minute call: pass SETTINGS=8gb-qlora-512,8gb-qlora-2048 (8 rows,
#       ~6 min) in one call and SETTINGS=gpu-bf16-512,gpu-qlora-512 (6 rows) in another, with the same OUT_DIR.
#       ABLATE=dequantized_weights adds lorakit with that optimisation off (LORAKIT_DISABLE; comma list) to each
#       setting: with SETTINGS=gpu-qlora-512 TOOLS=lorakit EXTRA='' the QLoRA row without its frozen weights kept
#       dequantized (plan/dequantized.py; the plan column says how many layers the lever kept). PROFILE_BF16=1 then
#       profiles the gpu-bf16-512 step (bench/profile_step.py, OUT_DIR/profile/, at most PROFILE_S=150 s).
#       STEPS=16 ROW_TIMEOUT=300: more measured steps per row (8 by default): single steps vary up to ~2x on the
#       8 GB rows (session 10: 0.39 s for 6,475 positions, 0.58 s for 4,518), so 8 steps decide little there.
#   bash bench/peer_speed_device.sh long OUT_DIR   # the 8 GB card at 8k-32k tokens per example, both tools, and lorakit plan
#   bash bench/peer_speed_device.sh preference OUT_DIR  # issue 24: DPO, lorakit vs TRL's DPOTrainer, 8 GB card and whole GPU
#       (TOOLS=trl,lorakit,lorakit-unshared,lorakit-at-peer-peak by default: lorakit-unshared is lorakit with
#       training.shared_prefix=false, the lever; lorakit-at-peer-peak, on the 8 GB card only, is lorakit with the
#       allocator capped at TRL's peak_reserved just measured, issue 24's "at no higher peak"; first
#       bench/shared_prefix_check.py's exactness and timing check of the shared-prefix layout, ~1 min; 7 rows, ~6-7
#       min; a row not started within BUDGET_S is listed as not run: SETTINGS=gpu-qlora runs that setting again)
#   bash bench/peer_speed_device.sh serve OUT_DIR  # lorakit serve, ~8 min in one call: first the decoding step's
#       fixes one by one (bench/serve_step_profile.py --only cudnn: cuDNN allowed vs excluded, peft's LoRA forward,
#       fp32 adapter; OUT_DIR/cudnn/, at most PROFILE_S=270 s; PROFILE='' skips it), then 1 client vs 8 concurrent
#       streamed clients (bench/serve_batching.py, ROUNDS=1, at most TABLE_S=280 s). Phi-4-mini-shaped random-weight
#       run; needs fastapi, starlette, uvicorn and openai too: bench/serve_wheels.sh adds their wheels to .whl/.
#       SERVE_MODEL=smollm2-135m for the SmolLM2-135M shape, MAX_TOKENS; on CPU, SERVE_MODEL=tiny MAX_TOKENS=16 is
#       the smoke test (no profile).
# A row that does not finish inside the call's time is missing from rows.jsonl; a later call can run the rest
# with SETTINGS=... (table, preference) or LENGTHS=... and TOOLS=lorakit|trl|lorakit,trl (long) on the same prepared
# work folder.
set -uo pipefail
part=${1:?table, long, preference or serve}
out=${2:?results folder}
case "$part" in table|long|preference|serve) ;; *) echo "unknown part '$part': table, long, preference or serve" >&2; exit 2;; esac
mkdir -p "$out"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# transformers >= 5.25 kernelizes every from_pretrained with Hub kernels by default (needs the `kernels` package
# and the Hub): off for the peers, as lorakit's own loads turn it off (model/load.py), so both run as on 5.24
export USE_HUB_KERNELS=0
if [ "$part" = serve ]; then
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
        python -c "import torch, transformers, peft, fastapi, uvicorn, openai, lorakit.cli.app
print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'fastapi',
      fastapi.__version__, 'uvicorn', uvicorn.__version__, 'openai', openai.__version__)"
    } > "$out/checks.txt" 2>&1
    cat "$out/checks.txt"
    grep -q "^torch" "$out/checks.txt" || exit 1
    if [ -n "${PROFILE-1}" ] && [ "${SERVE_MODEL:-phi4-mini}" != tiny ]; then  # what each decoding fix is worth
        mkdir -p "$out/cudnn"
        timeout "${PROFILE_S:-270}" python bench/serve_step_profile.py --random-model "${SERVE_MODEL:-phi4-mini}" \
            --only cudnn --out "$out/cudnn" 2>&1 | tee "$out/cudnn/stdout.txt"
    fi
    timeout "${TABLE_S:-280}" python bench/serve_batching.py --random-model "${SERVE_MODEL:-phi4-mini}" \
        --work /tmp/lorakit-serve-batching --clients 8 --max-tokens "${MAX_TOKENS:-128}" --rounds "${ROUNDS:-1}" \
        --skip-batch-1 --out "$out/table.md" --answers "$out/answers.jsonl" 2>&1 | tee "$out/stdout.txt"
    exit
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python -c "import torch, transformers, trl, peft, bitsandbytes, liger_kernel, datasets, lorakit.cli.app
print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft',
      peft.__version__, 'bitsandbytes', bitsandbytes.__version__, 'liger', liger_kernel.__version__ if hasattr(liger_kernel, '__version__') else '?')"
    python -c "import flash_attn" 2>&1 | tail -1  # TRL's docs name FlashAttention for padding-free packing
} > "$out/checks.txt" 2>&1
cat "$out/checks.txt"
grep -q "^torch" "$out/checks.txt" || exit 1
if [ "$part" = table ]; then
    python bench/peer_speed.py --out "$out" --work /tmp/lorakit-peer-speed \
        --settings "${SETTINGS:-8gb-qlora-512,gpu-bf16-512,gpu-qlora-512,8gb-qlora-2048}" --tools "${TOOLS:-trl,lorakit,lorakit-at-peer-peak}" \
        --extra "${EXTRA-training.shared_prefix=false}" --ablate "${ABLATE-}" --steps "${STEPS:-8}" --warmup 2 --row-timeout "${ROW_TIMEOUT:-200}" 2>&1 | tee "$out/stdout.txt"
    if [ -n "${PROFILE_BF16:-}" ]; then  # where the whole-GPU bf16 step's time goes now (the next lever, MFU)
        config=$(python bench/peer_speed.py --prepare-only --work /tmp/lorakit-peer-speed | tail -1)
        timeout "${PROFILE_S:-150}" python bench/profile_step.py "$config" --set output_dir=/tmp/lorakit-profile-bf16 \
            --set model.max_length=512 --set model.quantization=none --set training.batch_size=16 \
            --set training.gradient_checkpointing=false --steps 2 --out "$out/profile" --name gpu_bf16_512 2>&1 | tail -60
    fi
    exit
fi
if [ "$part" = preference ]; then
    if [ -z "${SETTINGS:-}" ]; then  # once per table, not on a re-run of some settings
        python bench/shared_prefix_check.py --out "$out/shared_prefix_check.json" 2>&1 | tee "$out/shared_prefix_check.txt"
    fi
    python bench/preference_speed.py --out "$out" --work /tmp/lorakit-preference-speed \
        --settings "${SETTINGS:-8gb-qlora,gpu-qlora}" --tools "${TOOLS:-trl,lorakit,lorakit-unshared,lorakit-at-peer-peak}" \
        --steps 8 --warmup 2 --row-timeout 140 --budget-seconds "${BUDGET_S:-440}" 2>&1 | tee "$out/stdout.txt"
    exit
fi
python bench/long_context.py --out "$out" --work /tmp/lorakit-peer-speed --lengths "${LENGTHS:-8192,16384,24576,32768}" \
    --tools "${TOOLS:-lorakit,trl}" --steps 3 --warmup 1 --row-timeout 150 2>&1 | tee "$out/stdout.txt"
