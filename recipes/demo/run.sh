#!/usr/bin/env bash
# The VoxCeleb recipe's stages on the demo corpus, on a CPU in minutes: the same stages as
# recipes/voxceleb/run.sh (data, shards, training, averaging, large-margin fine-tuning, evaluation with centring
# and AS-norm, calibration) with recipes/demo/conf/{train,lm}.yaml, wespeaker's ResNet34 run narrowed.
#
#   bash recipes/demo/run.sh                      # every stage; run it again and finished stages are skipped
#   bash recipes/demo/run.sh --stage 5 --stop_stage 6
#
# Options: --stage N --stop_stage M (0-6), --data DIR (data/demo), --exp DIR (exps/demo_recipe),
# --conf DIR (recipes/demo/conf), --train_speakers N and --test_speakers N (the corpus: 200 and 40),
# --from_shards true (train from the stage-1 shards, with their speaker-balanced batches).
set -euo pipefail
cd "$(dirname "$0")/../.."
stage=0
stop_stage=6
data=data/demo
exp=exps/demo_recipe
conf=recipes/demo/conf
train_speakers=200
test_speakers=40
from_shards=false
norm_topk=20
PYTHON=${PYTHON:-.venv/bin/python}
source recipes/stages.sh
parse_options "stage stop_stage data exp conf train_speakers test_speakers from_shards norm_topk" "$@"

train_epochs=$(epochs_of "$conf/train.yaml")
lm_epochs=$(epochs_of "$conf/lm.yaml")
paths=(--train_list "$data/train_list.txt" --train_path "$data/wav" --test_list "$data/veri_test.txt"
       --test_path "$data/wav" --musan_path "$data/musan_split" --rir_path "$data/RIRS_NOISES/simulated_rirs")
training_data=("${paths[@]}")
if [ "$from_shards" = true ]; then
    training_data+=(--train_shards "$data/shards/shards.list" --sampler balanced)
fi

if run_stage 0 "data" "$data/DEMO_COMPLETE.json"; then
    "$PYTHON" dataprep.py --demo --save_path "$data" --demo_train_speakers "$train_speakers" \
        --demo_test_speakers "$test_speakers"
fi
if run_stage 1 "shards" "$data/shards/shards.list"; then
    "$PYTHON" dataprep.py --make_shards --save_path "$data/shards" --train_list "$data/train_list.txt" \
        --train_path "$data/wav"
fi
if run_stage 2 "training" "$exp/train/model/$(checkpoint_name "$train_epochs")"; then
    "$PYTHON" trainSpeakerNet.py --config "$conf/train.yaml" "${training_data[@]}" --save_path "$exp/train"
fi
if run_stage 3 "averaging" "$exp/train/average.model"; then
    "$PYTHON" averageModels.py --save_path "$exp/train" --last 3 --output "$exp/train/average.model"
fi
if run_stage 4 "large-margin fine-tuning" "$exp/lm/model/$(checkpoint_name "$lm_epochs")"; then
    "$PYTHON" trainSpeakerNet.py --config "$conf/lm.yaml" "${paths[@]}" --initial_model "$exp/train/average.model" \
        --save_path "$exp/lm"
fi
evaluation=(--eval --config "$conf/lm.yaml" "${paths[@]}" --initial_model "$exp/lm/model/$(checkpoint_name "$lm_epochs")"
            --center_embeddings --score_norm asnorm --norm_topk "$norm_topk" --cohort_utterances 0
            --embeddings_cache "$exp/embeddings.pt")
if run_stage 5 "evaluation" "$exp/scores/demo.txt"; then
    "$PYTHON" trainSpeakerNet.py "${evaluation[@]}" --score_file "$exp/scores/demo.txt"
fi
if run_stage 6 "calibration" "$exp/calibration.json"; then
    "$PYTHON" trainSpeakerNet.py "${evaluation[@]}" --fit_calibration "$exp/calibration.json"
fi
