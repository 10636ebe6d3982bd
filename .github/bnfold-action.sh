#!/usr/bin/env bash
# The shell of action.yml (the composite GitHub Action at the repository's root), one step each:
#
#   bnfold-action.sh install   pip install bnfold (INPUT_VERSION: a version such as 0.1.0, any
#                              pip requirement or path; empty: the action's own checkout,
#                              GITHUB_ACTION_PATH) into a virtual environment of its own under
#                              RUNNER_TEMP, and name its bnfold in GITHUB_ENV (BNFOLD) for the next step
#   bnfold-action.sh check     bnfold check on INPUT_PATHS (default .) with INPUT_ARGS: annotations on
#                              stdout, the markdown report appended to GITHUB_STEP_SUMMARY; exits with
#                              check's exit code (0 clean, 1 something to fold, 2 unreadable or wrong input)
#
# Inputs arrive as environment variables (action.yml sets them from its inputs; none is pasted
# into a command line, so a value cannot run code). INPUT_PATHS and INPUT_ARGS are split like a
# shell's words (quotes group, nothing is expanded: bnfold expands globs itself). Runs as Actions
# runs it, and the same by hand or in a test: tests/test_action.py.
set -euo pipefail

split_words() {  # split_words ARRAY TEXT WHAT: ARRAY := the shell words of TEXT, nothing expanded (shlex)
    local tmp status=0
    tmp=$(mktemp)
    WORDS="$2" "${PYTHON:-python3}" -c 'import os, shlex, sys
sys.stdout.write("".join(w + "\0" for w in shlex.split(os.environ["WORDS"])))' >"$tmp" 2>/dev/null || status=$?
    if [ "$status" -eq 0 ]; then
        mapfile -d '' -t "$1" <"$tmp"
    else
        echo "bnfold-action: error: $3 is not a list of shell words (an unclosed quote?)" >&2
    fi
    rm -f "$tmp"
    return "$status"
}

install() {
    local spec="${INPUT_VERSION:-}" venv="${RUNNER_TEMP:-${TMPDIR:-/tmp}}/bnfold-venv"
    case "$spec" in
        "") spec="${GITHUB_ACTION_PATH:?GITHUB_ACTION_PATH is not set}" ;;
        [0-9]*) spec="bnfold==$spec" ;;
    esac
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet "$spec"
    "$venv/bin/bnfold" --version
    if [ -n "${GITHUB_ENV:-}" ]; then
        echo "BNFOLD=$venv/bin/bnfold" >>"$GITHUB_ENV"
    fi
}

check() {
    local bnfold="${BNFOLD:-bnfold}" paths=() args=() code=0
    cd "${GITHUB_WORKSPACE:-.}"
    split_words paths "${INPUT_PATHS:-.}" "the paths input" || return 2
    split_words args "${INPUT_ARGS:-}" "the args input" || return 2
    if [ "${#paths[@]}" -eq 0 ]; then
        paths=(.)
    fi
    for arg in "${args[@]}"; do
        case "$arg" in
            --fix | --format* | --json)
                echo "bnfold-action: error: args: $arg is not for this action (it checks and reports; run bnfold check --fix yourself)" >&2
                return 2 ;;
        esac
    done
    # Annotations. A file found under "." is ./a.onnx: GitHub matches a file by its path from the root.
    "$bnfold" check --format github "${args[@]}" -- "${paths[@]}" | sed -e 's|^\(::[a-z]* file=\)\./|\1|' || code=$?
    if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
        # the same findings as tables (its error lines are those printed above)
        "$bnfold" check --format markdown "${args[@]}" -- "${paths[@]}" >>"$GITHUB_STEP_SUMMARY" 2>/dev/null || true
    fi
    return "$code"
}

case "${1:-}" in
    install) install ;;
    check) check ;;
    *) echo "usage: $0 install|check" >&2; exit 2 ;;
esac
