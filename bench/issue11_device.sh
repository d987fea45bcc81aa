#!/usr/bin/env bash
# Issue 11 on the GPU, one device call: the fused kernels' GPU tests, one lorakit row per optimisation switched
# off (LORAKIT_DISABLE) next to TRL's best practice, and a step profile with the host gaps charged to phases.
#   bash bench/issue11_device.sh OUT_DIR
set -uo pipefail
out=${1:?results folder}
mkdir -p "$out"
python -m pytest -q -p no:cacheprovider tests/model/test_fused_projections.py tests/model/test_kernels.py \
    tests/model/test_attention.py 2>&1 | tail -15 | tee "$out/gpu_tests.txt"
python bench/peer_speed.py --out "$out" --settings gpu-bf16-512 --tools trl,lorakit --steps 8 --warmup 2 \
    --ablate fused_lora+split_qkv+fused_gate_up+one_sync,split_qkv,fused_gate_up,one_sync,fused_lora
python bench/peer_speed.py --out "$out" --settings 8gb-qlora-512 --tools lorakit --steps 8 --warmup 2 \
    --ablate fused_lora+split_qkv+fused_gate_up+one_sync
python bench/profile_step.py /tmp/lorakit-peer-speed/config.yaml --set model.quantization=none \
    --set training.batch_size=16 --set training.gradient_checkpointing=false --set output_dir=/tmp/profile-run \
    --steps 3 --out "$out" --name profile_bf16
