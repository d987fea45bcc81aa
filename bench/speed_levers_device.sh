#!/usr/bin/env bash
# Issue 11 on the GPU, in device calls of under 10 minutes each:
#   bash bench/speed_levers_device.sh table OUT_DIR   # TRL's best practice and lorakit, the four settings of the issue
#   bash bench/speed_levers_device.sh detail OUT_DIR  # GPU tests, rows with optimisations switched off, step profile, guide row
#   bash bench/speed_levers_device.sh check OUT_DIR   # GPU tests, the fused gate-up SwiGLU on and off, the 8 GB card's
#                                                # micro-batch / checkpointing trade-off, and its step profile
#   bash bench/speed_levers_device.sh layer OUT_DIR   # GPU tests, the one-node LoRA layer on and off, the 8 GB profile
#   bash bench/speed_levers_device.sh final OUT_DIR   # two GPUs (nvidia-h200-x2): the table on GPU 0 while GPU 1 runs the
#                                                # rows with this session's optimisations switched off one at a time
#   bash bench/speed_levers_device.sh profile OUT_DIR # the 8 GB card's step profile alone (prepares the model if missing)
# Rows switch optimisations off with LORAKIT_DISABLE (src/lorakit/runtime/ablation.py).
set -uo pipefail
part=${1:?table, detail, check, layer, final or profile}
out=${2:?results folder}
case "$part" in table|detail|check|layer|final|profile) ;;
    *) echo "unknown part '$part': table, detail, check, layer, final or profile" >&2; exit 2;; esac
mkdir -p "$out"
gpu_tests() {  # the GPU-only tests of the kernels, whole log in OUT/gpu_tests.txt
    python -m pytest -q -p no:cacheprovider --tb=short tests/model/test_fused_projections.py tests/model/test_kernels.py \
        tests/model/test_attention.py tests/model/test_fused_lora.py > "$out/gpu_tests.txt" 2>&1
    tail -3 "$out/gpu_tests.txt"
}
if [ "$part" = final ]; then
    python -m pytest -q -p no:cacheprovider --tb=short tests/model/test_fused_lora.py > "$out/gpu_tests.txt" 2>&1
    tail -1 "$out/gpu_tests.txt"
    mkdir -p "$out/table" "$out/ablation"
    CUDA_VISIBLE_DEVICES=0 python bench/peer_speed.py --out "$out/table" --work /tmp/peer-speed-table \
        --settings 8gb-qlora-512,gpu-bf16-512,gpu-qlora-512,8gb-qlora-2048 --tools trl,lorakit --steps 8 --warmup 2 \
        > "$out/table/stdout.txt" 2>&1 &
    CUDA_VISIBLE_DEVICES=1 timeout 500 python bench/peer_speed.py --out "$out/ablation" --work /tmp/peer-speed-ablation \
        --settings 8gb-qlora-512,gpu-bf16-512 --tools lorakit --steps 8 --warmup 2 \
        --ablate reentrant_checkpoint,fused_layer,fused_gate_up > "$out/ablation/stdout.txt" 2>&1
    wait
    cat "$out/table/table.md" "$out/ablation/table.md"
    exit
fi
if [ "$part" = table ]; then
    python bench/peer_speed.py --out "$out" --settings 8gb-qlora-512,gpu-bf16-512,gpu-qlora-512,8gb-qlora-2048 \
        --tools trl,lorakit --steps 8 --warmup 2
    exit
fi
profile_8gb() {  # the emulated 8 GB card's QLoRA step, as the planner sets it up
    python bench/profile_step.py /tmp/lorakit-peer-speed/config.yaml --cap-gib 7.25 --set model.quantization=nf4 \
        --set training.batch_size=auto --set training.gradient_checkpointing=auto --set output_dir=/tmp/profile-run \
        --steps 3 --out "$out" --name "$1" > "/tmp/$1.log" 2>&1 || tail -20 "/tmp/$1.log"
    head -12 "$out/$1.md"
}
if [ "$part" = profile ]; then  # (run8_profile: the model and config peer_speed.py would prepare, then the profile)
    python bench/peer_speed.py --prepare-only --steps 8 --warmup 2 > /dev/null
    profile_8gb profile_8gb_qlora_reentrant
    exit
fi
if [ "$part" = layer ]; then
    gpu_tests
    python bench/peer_speed.py --out "$out" --settings 8gb-qlora-512,gpu-bf16-512 --tools lorakit --steps 8 --warmup 2 \
        --ablate fused_layer
    profile_8gb profile_8gb_qlora
    exit
fi
if [ "$part" = check ]; then
    gpu_tests
    python bench/peer_speed.py --out "$out" --settings gpu-bf16-512,8gb-qlora-512 --tools lorakit --steps 8 --warmup 2 \
        --ablate fused_gate_up
    # The planner's choice (micro-batch 16, 31 of 32 layers recomputed) against smaller micro-batches with as
    # many rows per step, which need fewer checkpointed layers.
    python bench/peer_speed.py --out "$out" --settings 8gb-qlora-512 --tools lorakit --steps 8 --warmup 2 \
        --extra training.batch_size=8+training.gradient_accumulation_steps=2,training.batch_size=4+training.gradient_accumulation_steps=4,training.batch_size=2+training.gradient_accumulation_steps=8
    profile_8gb profile_8gb_qlora
    exit
fi
gpu_tests
python bench/peer_speed.py --out "$out" --settings gpu-bf16-512 --tools lorakit,guide --steps 8 --warmup 2 \
    --ablate host_overlap,fused_lora+split_qkv+fused_gate_up+host_overlap
python bench/profile_step.py /tmp/lorakit-peer-speed/config.yaml --set model.quantization=none \
    --set training.batch_size=16 --set training.gradient_checkpointing=false --set output_dir=/tmp/profile-run \
    --steps 3 --out "$out" --name profile_bf16
