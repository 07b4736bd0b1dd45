#!/usr/bin/env bash
# The GPU measurements of the README's Speed section, as one run of under 10 minutes on one CUDA GPU:
#   1. bench_train.py at ASVspoof shape on CUDA (bf16 + channels_last joint training against fp32,
#      cached frozen embeddings against the frozen networks every batch, eval against per-trial);
#   2. the demo trained with bf16 (amp: auto) and with fp32 (amp: off), to compare their dev/eval EERs;
#   3. bench_ssl.py: XLS-R 300M + AASIST at the recipe's batch 14 x 64,600 samples, fp32 / bf16, with and
#      without gradient checkpointing (step time, peak memory, eval utterances/s);
#   4. nvidia-smi utilisation sampled every second throughout, with the phase boundaries logged.
# Results go to $OUT (or ./gpu_check): bench.txt (its last line is the JSON summary), demo_bf16.txt,
# demo_fp32.txt, bench_ssl.txt, phases.txt, nvidia_smi.csv and utilisation.txt.
#
# Packages the GPU image may lack (soundfile and its cffi/pycparser) travel as wheels in .whl/ (git-ignored),
# installed into /tmp/site first. With the session's device tool:
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=590)
# To fetch the wheels here (Python 3.12, manylinux x86-64), see the device README.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$python" -c "import torch, torchaudio, soundfile, numpy, scipy, sklearn, tqdm, yaml
print('torch', torch.__version__, '| torchaudio', torchaudio.__version__, '| soundfile', soundfile.__version__,
      '| numpy', numpy.__version__, '|', torch.cuda.get_device_name(0))" | tee "$out/versions.txt"

# -f: nvidia-smi writes each sample itself, so none is lost in a buffer when it is stopped.
nvidia-smi --query-gpu=timestamp,name,utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 \
    -f "$out/nvidia_smi.csv" &
sampler=$!
trap 'kill "$sampler" 2>/dev/null || true' EXIT
phase() { echo "$(date '+%Y/%m/%d %H:%M:%S') $1" | tee -a "$out/phases.txt"; }

# A failing phase is recorded (phases.txt) and the next one still runs: the device time is scarce.
run_phase() {  # name, log file, command...
    local name="$1" log="$2"
    shift 2
    phase "$name start"
    "$@" 2>&1 | tee "$out/$log" || phase "$name FAILED (exit ${PIPESTATUS[0]})"
}
run_phase bench bench.txt "$python" bench/bench_train.py --config configs/demo.conf --asvspoof_shape \
    --device cuda --train_batches 20 --reference_batches 5 --per_trial_trials 16
run_phase "demo bf16" demo_bf16.txt "$python" main.py --config configs/demo.conf --device cuda --no_progress \
    --overwrite --output_dir "$out/runs_bf16"
run_phase "demo fp32" demo_fp32.txt "$python" main.py --config configs/demo.conf --device cuda --no_progress \
    --overwrite --output_dir "$out/runs_fp32" --set amp=off
run_phase "ssl bench" bench_ssl.txt "$python" bench/bench_ssl.py --device cuda --batch 14 --steps 3 \
    --eval_batch 14
phase "end"

kill "$sampler" 2>/dev/null || true
"$python" - "$out" <<'EOF' | tee "$out/utilisation.txt"
"""Mean / median GPU utilisation per phase, from nvidia_smi.csv and phases.txt."""
import statistics
import sys
from datetime import datetime
from pathlib import Path

out = Path(sys.argv[1])
samples = []
for line in (out / "nvidia_smi.csv").read_text().splitlines():
    fields = [f.strip() for f in line.split(",")]
    if len(fields) == 4 and fields[2].isdigit():
        samples.append((datetime.strptime(fields[0].split(".")[0], "%Y/%m/%d %H:%M:%S"), int(fields[2])))
phases = [(datetime.strptime(" ".join(l.split()[:2]), "%Y/%m/%d %H:%M:%S"), " ".join(l.split()[2:]))
          for l in (out / "phases.txt").read_text().splitlines()]
for (start, name), (end, _) in zip(phases, phases[1:]):
    values = [u for t, u in samples if start <= t < end]
    if values:
        print(f"{name.removesuffix(' start')}: GPU utilisation mean {statistics.mean(values):.0f}%, "
              f"median {statistics.median(values):.0f}% over {len(values)} s")
EOF
rm -rf "$out/runs_bf16" "$out/runs_fp32"  # weights and scores: not needed back
