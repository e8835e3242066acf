# Helpers of the recipes' run.sh: which stages run, and skipping what is already done.
# A recipe sets stage, stop_stage and PYTHON before sourcing this file.

# run_stage N NAME OUTPUT: true when stage N is in [stage, stop_stage] and OUTPUT does not exist yet; says why not.
run_stage() {
    local number=$1 name=$2 output=$3
    if [ "$number" -lt "$stage" ] || [ "$number" -gt "$stop_stage" ]; then
        return 1
    fi
    if [ -e "$output" ]; then
        echo "== stage $number ($name): already done ($output exists), skipped"
        return 1
    fi
    echo "== stage $number ($name)"
}

# epochs_of CONFIG: the max_epoch of a YAML recipe.
epochs_of() {
    "$PYTHON" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['max_epoch'])" "$1"
}

# checkpoint_name EPOCH: the file name trainSpeakerNet.py gives the checkpoint of that epoch.
checkpoint_name() {
    printf 'model%09d.model' "$1"
}
