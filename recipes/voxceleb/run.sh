#!/usr/bin/env bash
# wespeaker's VoxCeleb v2 pipeline as stages: data, shards, training, averaging, large-margin fine-tuning,
# evaluation on Vox1-O/E/H with centring and AS-norm, calibration. The recipes are configs/<model>.yaml and
# configs/<model>_LM.yaml (docs/recipes.md compares every setting with wespeaker's).
#
#   bash recipes/voxceleb/run.sh --model ResNet34 --key KEY          # every stage; again: finished ones skipped
#   bash recipes/voxceleb/run.sh --model ResNet34 --stage 5 --stop_stage 6
#
# Options: --stage N --stop_stage M (0-6), --model (ResNet34, ResNet221, ResNet293, ECAPA_TDNN_c512,
# ECAPA_TDNN_c1024, CAMPPlus), --data DIR (data), --key KEY or --user U --password P (stage 0's download),
# --from_shards true (train from the stage-1 shards, with their speaker-balanced batches), --norm_topk N (300).
# Training runs one process per visible GPU (--distributed); the learning rate follows lr_reference_batch.
set -euo pipefail
cd "$(dirname "$0")/../.."
stage=0
stop_stage=6
model=ResNet34
data=data
key=""
user=""
password=""
from_shards=false
norm_topk=300
PYTHON=${PYTHON:-.venv/bin/python}
source recipes/stages.sh
parse_options "stage stop_stage model data key user password from_shards norm_topk" "$@"

train_config=configs/$model.yaml
lm_config=configs/${model}_LM.yaml
[ -f "$train_config" ] && [ -f "$lm_config" ] || { echo "Error: no recipe $train_config and $lm_config" >&2; exit 1; }
exp=$(yaml_value "$train_config" save_path)
lm_exp=$(yaml_value "$lm_config" save_path)
average=$(yaml_value "$lm_config" initial_model)
lm_model="$lm_exp/model/$(checkpoint_name "$(epochs_of "$lm_config")")"
trials="$data/veri_test2.txt,$data/list_test_all2.txt,$data/list_test_hard2.txt"
distributed=()
if [ "$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')" -gt 1 ]; then
    distributed=(--distributed)
fi
training_data=(--train_list "$data/train_list.txt" --train_path "$data/voxceleb2/dev/wav"
               --musan_path "$data/musan_split" --rir_path "$data/RIRS_NOISES/simulated_rirs")
if [ "$from_shards" = true ]; then
    training_data+=(--train_shards "$data/shards/shards.list" --sampler balanced)
fi

if run_stage 0 "data" "$data/train_list.txt"; then
    credentials=(--key "$key")
    [ -n "$key" ] || credentials=(--user "$user" --password "$password")
    "$PYTHON" dataprep.py --save_path "$data" --download "${credentials[@]}"
    "$PYTHON" dataprep.py --save_path "$data" --extract --convert --augment --make_train_list
    for list in veri_test2.txt list_test_all2.txt list_test_hard2.txt; do
        "$PYTHON" dataprep.py --save_path "$data" --check_trials "$data/$list"
    done
fi
if run_stage 1 "shards" "$data/shards/shards.list"; then
    "$PYTHON" dataprep.py --make_shards --save_path "$data/shards" --train_list "$data/train_list.txt" \
        --train_path "$data/voxceleb2/dev/wav"
fi
if run_stage 2 "training" "$exp/model/$(checkpoint_name "$(epochs_of "$train_config")")"; then
    "$PYTHON" trainSpeakerNet.py --config "$train_config" "${distributed[@]}" "${training_data[@]}" \
        --test_list "$data/veri_test2.txt" --test_path "$data/voxceleb1/test/wav"
fi
if run_stage 3 "averaging" "$average"; then
    "$PYTHON" averageModels.py --save_path "$exp" --last 10 --output "$average"
fi
if run_stage 4 "large-margin fine-tuning" "$lm_model"; then
    "$PYTHON" trainSpeakerNet.py --config "$lm_config" "${distributed[@]}" --train_list "$data/train_list.txt" \
        --train_path "$data/voxceleb2/dev/wav" --musan_path "$data/musan_split" \
        --rir_path "$data/RIRS_NOISES/simulated_rirs" --test_list "$data/veri_test2.txt" \
        --test_path "$data/voxceleb1/test/wav"
fi
evaluation=(--eval --config "$lm_config" --initial_model "$lm_model" --test_list "$trials"
            --test_path "$data/voxceleb1/all_wav" --train_list "$data/train_list.txt"
            --train_path "$data/voxceleb2/dev/wav" --eval_frames 0 --scoring cosine --center_embeddings
            --score_norm asnorm --norm_topk "$norm_topk" --cohort_utterances 0
            --embeddings_cache "$lm_exp/embeddings.pt")
if run_stage 5 "evaluation on Vox1-O, E and H" "$lm_exp/scores/vox1_veri_test2.txt"; then
    "$PYTHON" trainSpeakerNet.py "${evaluation[@]}" --score_file "$lm_exp/scores/vox1.txt"
fi
if run_stage 6 "calibration (fitted on Vox1-O)" "$lm_exp/calibration.json"; then
    "$PYTHON" trainSpeakerNet.py "${evaluation[@]}" --fit_calibration "$lm_exp/calibration.json"
fi
