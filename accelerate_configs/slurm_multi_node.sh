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
#SBATCH --signal=USR1@120            # 120 s before the time limit: checkpoint at the next step boundary, exit 75
#SBATCH --requeue                    # a preempted or requeued job starts again; the recipe resumes its checkpoint
set -euo pipefail
# accelerate's launcher (torchrun) dies on SIGUSR1 unless told to handle it, and gives its workers 30 s after a signal:
# let it pass SIGUSR1 on and wait long enough for the step under way and the checkpoint.
export TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-110}
OUTPUT_DIR=${OUTPUT_DIR:?set OUTPUT_DIR to the --output_dir of the run, e.g. sbatch --export=ALL,OUTPUT_DIR=runs/x ...}

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PORT=${MAIN_PORT:-29500}
WORLD=$((SLURM_NNODES * GPUS_PER_NODE))

# srun starts the command once per node; each node reads its rank from SLURM_NODEID.
# Every process exits 75 after a preemption checkpoint; the launcher reports that as its own failure, so whether the
# run finished is read from its run record, and an unfinished run is requeued (the same command then resumes it).
srun bash -c "accelerate launch --config_file accelerate_configs/multi_node.yaml \
    --num_machines $SLURM_NNODES --num_processes $WORLD --machine_rank \$SLURM_NODEID \
    --main_process_ip $MAIN_IP --main_process_port $MAIN_PORT \
    recipes/dpo_lora.py --output_dir $OUTPUT_DIR $*" || status=$?
if grep -q '"finished_step": null' "$OUTPUT_DIR/run_record.json" 2>/dev/null && [ -d "$OUTPUT_DIR" ] \
        && ls -d "$OUTPUT_DIR"/checkpoint-* >/dev/null 2>&1; then
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "${status:-0}"
