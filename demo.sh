#!/usr/bin/env bash
# The demo in one command: .venv from requirements.txt when missing, the demo corpus when absent, CPU training
# with configs/demo.yaml (which evaluates on the demo trials at its last epoch), then the EER next to the EER of
# an untrained MFCC-mean cosine scorer on the same trials. Re-running continues or reuses exps/demo.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q -r requirements.txt
fi
PYTHON=.venv/bin/python
SECONDS=0
"$PYTHON" dataprep.py --demo --save_path data/demo
baseline=$("$PYTHON" benchmarks/mfcc_baseline.py --test_list data/demo/veri_test.txt --test_path data/demo/wav)
echo "$baseline"
baseline_eer=$(echo "$baseline" | sed -n 's/.*EER \([0-9.]*\)%.*/\1/p')
"$PYTHON" trainSpeakerNet.py --config configs/demo.yaml
result=$(grep -o 'VEER [0-9.]*' exps/demo/result/scores.txt | tail -n 1 | cut -d' ' -f2)
echo "Demo finished in ${SECONDS} s: EER ${result}% after training (MFCC-mean baseline ${baseline_eer}%)."
echo "Scores and checkpoints are in exps/demo; delete that folder to train again."
