#!/usr/bin/env bash
# Multi-node DPO under Slurm: one `accelerate launch` per node through multi_node.yaml (DeepSpeed ZeRO-3).
# Submit with: sbatch accelerate_configs/slurm_multi_node.sh --config recipes/configs/YOUR.yaml
# Not run on this project's machines (no Slurm there); the same two-launch setup is rehearsed on one machine by
# tests/test_distributed.py::test_multi_node_rehearsed_as_two_machines_on_this_one.
#SBATCH --job-name=dpo-recipes
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one launcher per node; accelerate starts one process per GPU
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
set -euo pipefail

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PORT=${MAIN_PORT:-29500}
WORLD=$((SLURM_NNODES * GPUS_PER_NODE))

# srun starts the command once per node; each node reads its rank from SLURM_NODEID.
srun bash -c "accelerate launch --config_file accelerate_configs/multi_node.yaml \
    --num_machines $SLURM_NNODES --num_processes $WORLD --machine_rank \$SLURM_NODEID \
    --main_process_ip $MAIN_IP --main_process_port $MAIN_PORT \
    recipes/dpo_lora.py $*"
