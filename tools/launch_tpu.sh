#!/usr/bin/env bash
# Launches a pav_jax config on every worker of a Cloud TPU VM slice.
#
# UNTESTED ON HARDWARE: written from the gcloud and JAX multi-host docs.
#
# Usage:
#   tools/launch_tpu.sh setup  TPU_NAME ZONE            # once: install deps
#   tools/launch_tpu.sh run    TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]
#   tools/launch_tpu.sh stop   TPU_NAME ZONE            # kill the run
#
# Example (Gemma-2 9B MATH SFT on a v5p-32 slice, 4 hosts x 4 chips):
#   tools/launch_tpu.sh setup pav-v5p zone-of-the-slice
#   tools/launch_tpu.sh run pav-v5p zone-of-the-slice \
#       configs/gemma2_9b.py:tpu_v5p_32 /gcs/BUCKET/pav/gemma2_9b_sft \
#       --config.init_checkpoint=/data/gemma-2-9b \
#       --config.tokenizer.path=/data/gemma-2-9b/tokenizer.model \
#       --config.task.data_dir=/data/math
#
# Every worker runs the same command (SPMD, one process per host, no pmap);
# the configs set distributed=True, so main.py calls
# jax.distributed.initialize(), which discovers the coordinator on TPU VMs.
# WORKDIR must be visible to all hosts under the same path (pav_jax opens it
# with pathlib, so a gcsfuse mount such as /gcs/BUCKET, not a gs:// URL), and
# the checkpoint, tokenizer and data paths must exist on every worker.
# See docs/multihost.md.

set -euo pipefail

REPO_URL="${PAV_REPO_URL:-}"        # git URL to clone on the workers, or
REPO_DIR="${PAV_REPO_DIR:-pav_jax}"  # an existing checkout there (scp'd).

usage() {
  sed -n '6,9p' "$0" >&2
  exit 2
}

ssh_all() {
  local name="$1" zone="$2" cmd="$3"
  gcloud compute tpus tpu-vm ssh "${name}" --zone="${zone}" --worker=all \
      --command="${cmd}"
}

[[ $# -ge 3 ]] || usage
action="$1" name="$2" zone="$3"
shift 3

case "${action}" in
  setup)
    clone=""
    if [[ -n "${REPO_URL}" ]]; then
      clone="[ -d ${REPO_DIR} ] || git clone ${REPO_URL} ${REPO_DIR};"
    fi
    ssh_all "${name}" "${zone}" "set -e; ${clone}
      cd ${REPO_DIR}
      python3 -m venv .venv
      .venv/bin/pip install -U pip
      .venv/bin/pip install -U 'jax[tpu]'
      .venv/bin/pip install -e .
      .venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_devices())'"
    ;;
  run)
    [[ $# -ge 2 ]] || usage
    config="$1" workdir="$2"
    shift 2
    overrides="$*"
    log="/tmp/pav_jax_run.log"
    # nohup: the run survives a dropped ssh session; each worker logs locally.
    ssh_all "${name}" "cd ${REPO_DIR} && nohup .venv/bin/python -m pav_jax.main \
        --config=${config} --workdir=${workdir} --config.distributed=True \
        ${overrides} > ${log} 2>&1 &
      sleep 2; echo \"worker \$(hostname): started, log in ${log}\""
    echo "Follow worker 0 with:"
    echo "  gcloud compute tpus tpu-vm ssh ${name} --zone=${zone} --worker=0" \
        "--command='tail -f ${log}'"
    ;;
  stop)
    # Ends only the pav_jax.main process started by `run` on each worker.
    ssh_all "${name}" "pid=\$(pgrep -f -u \$(id -u) -n 'python -m pav_jax.main') \
        && kill \${pid} && echo \"stopped \${pid}\" || echo 'not running'"
    ;;
  *)
    usage
    ;;
esac
