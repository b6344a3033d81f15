#!/usr/bin/env bash
# Without its extras, `ziggurat demo` must stop with exit status 2 and one line naming the extra
# to install, never a traceback. $1: the ziggurat console script of an environment without them.
set -uo pipefail
ziggurat=$(realpath "$1")
err=$(cd /tmp && "$ziggurat" demo hpo --quiet --steps 1 2>&1 >/dev/null)
status=$?
if [ "$status" -ne 2 ] || [ "$(printf '%s\n' "$err" | wc -l)" -ne 1 ] \
    || [[ "$err" != *"pip install 'ziggurat[examples]'"* ]]; then
    echo "ci: expected one line naming ziggurat[examples] and exit status 2, got $status:" >&2
    printf '%s\n' "$err" >&2
    exit 1
fi
echo "ci: a missing extra is one line: $err"
