# Helpers of the recipes' run.sh: their options, which stages run, and skipping what is already done.
# A recipe sets the defaults of its options (stage and stop_stage among them) and PYTHON before sourcing this file.

# parse_options "NAME NAME ..." ARGS...: each --NAME VALUE in ARGS sets the variable NAME; anything else is an error.
parse_options() {
    local names=" $1 "
    shift
    while [ $# -gt 0 ]; do
        local name=${1#--}
        if [ "$name" = "$1" ] || [[ "$names" != *" $name "* ]]; then
            echo "Error: unknown option $1; the options are:$(printf ' --%s' $names)" >&2
            exit 1
        fi
        [ $# -ge 2 ] || { echo "Error: $1 needs a value" >&2; exit 1; }
        printf -v "$name" '%s' "$2"
        shift 2
    done
}

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

# yaml_value CONFIG KEY: one value of a YAML recipe.
yaml_value() {
    "$PYTHON" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"
}
