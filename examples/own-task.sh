#!/usr/bin/env bash
# The scientist's path, end to end, on one machine: your own model and data from
# `secfl new task` to a final model only you can open. The folders stand for machines:
# owner/ (the model owner, who also runs the aggregator), site-1/ .. site-3/ (the
# hospitals), board/ (alice, bob and carol, 2 of 3 approve) and spm/ (the SPM
# operator). Simulated TEE; on hardware drop `--platform simulated --sim-dir sim` and
# give `policy init` --platform/--measurement instead of --sim-root.
# Usage: examples/own-task.sh [WORK_DIR]   (needs `secfl` on PATH, and its Python as
# `python`; OWN_TASK_SKIP_PYTEST=1 skips the task's own test)
set -euo pipefail
W=$(realpath -m "${1:-own-task}"); rm -rf "$W"; mkdir -p "$W"/{spm,owner,site-1,site-2,site-3,board}; cd "$W"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SPM_PORT=$(port); AGG=127.0.0.1:$(port); SPM=https://127.0.0.1:$SPM_PORT
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
say() { printf '\n=== %s  (%ss)\n' "$*" $SECONDS; }
# wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds, or fail saying what did not happen
wait_for() {
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@" 2>/dev/null; do
    if [ $SECONDS -ge $end ]; then echo "own-task: timed out after ${limit}s waiting for $what" >&2; exit 1; fi
    sleep 0.2
  done
}
# wait_exit SECONDS PID: wait for background job PID to end (RC: its exit code), or fail
wait_exit() {
  local end=$((SECONDS + $1))
  while kill -0 "$2" 2>/dev/null; do
    if [ $SECONDS -ge $end ]; then echo "own-task: process $2 still running after $1s" >&2; exit 1; fi
    sleep 0.2
  done
  RC=0; wait "$2" || RC=$?
}
# the aggregator must end well: else its log's end, and stop
aggregator_ok() {
  wait_exit "$1" $AGG_PID
  [ $RC = 0 ] || { echo "own-task: the aggregator failed (exit $RC):" >&2; tail -20 owner/aggregator.log >&2; exit 1; }
}
# every site's collaborator ends well once the run is complete
sites_ok() {
  for s in site-1 site-2 site-3; do
    wait_exit 60 ${SITE_PIDS[$s]}
    [ $RC = 0 ] || { echo "own-task: $s's collaborator failed (exit $RC):" >&2; tail -5 $s/collaborator.log >&2; exit 1; }
  done
}
rounds_done() { [ -f owner/metrics.jsonl ] && [ "$(wc -l < owner/metrics.jsonl)" -ge "$1" ]; }
# together PID...: wait for steps started at once with `&` (independent: none reads what
# another writes); fail if one failed. Each `secfl` spends about a second starting up.
together() { local p; for p in "$@"; do wait "$p"; done; }

# --- the model owner's laptop: a task of its own, tried in seconds, no TEE ----------------
say "1. secfl new task: a multi-file regression on CSV files"
(cd owner && secfl new task clinic-risk)
cd owner/clinic-risk
say "2. its own test, then the federation in one process"
if [ "${OWN_TASK_SKIP_PYTEST:-0}" != 1 ]; then python -m pytest test_task.py -q -p no:cacheprovider; fi
secfl simulate --task code --data data/site-1 --data data/site-2 --data data/site-3 \
  --validation data/validation --test data/test --settings federation.yaml --rounds 4 \
  --metrics ../simulate.jsonl
cd "$W"

# --- machine S: the SPM, in its TEE -------------------------------------------------------
say "3. the SPM; every party checks it and pins its key"
(cd spm && secfl sim init sim > /dev/null)
(cd spm && exec secfl spm serve --data spm-data --listen 127.0.0.1:$SPM_PORT --platform simulated \
  --sim-dir sim --ready-file ready.json > spm.log 2>&1) &
PIDS+=($!)
wait_for 30 "the SPM" test -f spm/ready.json
M=$(cd spm && secfl spm measurement)
for d in owner site-1 site-2 site-3; do cp -r spm/sim $d/sim; done
PIN=$(secfl spm verify $SPM --expect-measurement $M --sim-root spm/sim/root.pem | tail -1)
echo "SPM pin: $PIN"

# --- the board publishes its public keys; owners seal their keys for exactly this board ----
K=()
for m in alice bob carol; do (cd board && secfl policy keygen --out-dir . --member $m > /dev/null) & K+=($!); done
together "${K[@]}"
BOARD="--board-key ../board/alice.pub --board-key ../board/bob.pub --board-key ../board/carol.pub --threshold 2"
# seal KEY_FILE SECRET: the key sealed to the SPM for this policy and board, sent to the board
seal() {
  secfl policy seal-secret --key-file "$1" --policy clinic-risk --secret "$2" --spm $SPM --spm-pin $PIN \
    $BOARD > "$2.sealed"
  cp "$2.sealed" ../board/
}

say "4. the model owner shields the code and the validation data; the output key is its own"
cd owner
# the three keys are independent: each is made, used and sealed at the same time
( secfl shield keygen -o task.key
  secfl shield encrypt clinic-risk/code -o task.secfl --key-file task.key > task.tag
  seal task.key task-key ) & K=($!)
( secfl shield keygen -o validation.key
  secfl shield encrypt clinic-risk/data/validation -o validation.secfl --key-file validation.key \
    > validation.tag
  seal validation.key validation-key ) & K+=($!)
( secfl shield keygen -o model.key
  seal model.key output-key ) & K+=($!)
together "${K[@]}"
TASK_TAG=$(< task.tag); VAL_TAG=$(< validation.tag)
echo "task.secfl $TASK_TAG, validation.secfl $VAL_TAG"
cd ..

say "5. each site shields its own data with its own key"
declare -A TAG
K=()
for s in site-1 site-2 site-3; do                 # the sites are independent: at the same time
  ( cd $s
    cp ../owner/task.secfl .                      # the code volume: the same for everyone
    cp -r ../owner/clinic-risk/data/$s data       # stands for the site's own CSV files
    secfl shield keygen -o $s.key
    secfl shield encrypt data -o $s.secfl --key-file $s.key > $s.tag
    seal $s.key $s-key ) & K+=($!)
done
together "${K[@]}"
for s in site-1 site-2 site-3; do TAG[$s]=$(< $s/$s.tag); echo "$s.secfl ${TAG[$s]}"; done

# --- the board: the policy from a few facts, checked, 2 of 3 signatures, submitted ---------
# The settings are the task's federation.yaml, the ones `simulate` ran; 12 rounds (of this
# tiny task, a tenth of a second each) leave time for the Ctrl-C below.
say "6. secfl policy init, validate, sign (alice, bob), submit"
cd board
secfl policy init --name clinic-risk --threshold 2 \
  --member alice=alice.pub --member bob=bob.pub --member carol=carol.pub \
  --site site-1 --site site-2 --site site-3 --sim-root ../spm/sim/root.pem \
  --task $TASK_TAG --validation $VAL_TAG \
  --data site-1=${TAG[site-1]} --data site-2=${TAG[site-2]} --data site-3=${TAG[site-3]} \
  --sealed task-key=@task-key.sealed --sealed validation-key=@validation-key.sealed \
  --sealed output-key=@output-key.sealed --sealed site-1-key=@site-1-key.sealed \
  --sealed site-2-key=@site-2-key.sealed --sealed site-3-key=@site-3-key.sealed \
  --settings ../owner/clinic-risk/federation.yaml --rounds 12
secfl policy validate policy.yaml
secfl policy sign policy.yaml --key alice.key --member alice & K=($!)  # each on their own machine
secfl policy sign policy.yaml --key bob.key --member bob & K+=($!)
together "${K[@]}"
secfl policy submit policy.yaml --sig policy.yaml.alice.sig --sig policy.yaml.bob.sig --spm $SPM --spm-pin $PIN
cd ..

# --- run: the aggregator on the owner's machine, one collaborator on each site -------------
# Where to listen, whom to dial and where to write are each host's own (unmeasured) settings.
start_aggregator() {
  (cd owner && SECFL_LISTEN=$AGG SECFL_OUTPUT=output SECFL_METRICS=metrics.jsonl exec \
    secfl run --spm $SPM --spm-pin $PIN --policy clinic-risk --service aggregator \
    --platform simulated --sim-dir sim --volume task=task.secfl --volume validation=validation.secfl \
    -- secfl aggregator --task volume:task --validation volume:validation >> aggregator.log 2>&1) &
  AGG_PID=$!; PIDS+=($AGG_PID)
}
start_site() {
  (cd $1 && SECFL_AGGREGATOR=$AGG exec secfl run --spm $SPM --spm-pin $PIN --policy clinic-risk \
    --service $1 --platform simulated --sim-dir sim --volume task=task.secfl --volume $1=$1.secfl \
    -- secfl collaborator --task volume:task >> collaborator.log 2>&1) &
  SITE_PIDS[$1]=$!; PIDS+=($!)
}
declare -A SITE_PIDS
say "7. the federation: the aggregator and 3 sites under secfl run"
start_aggregator
for s in site-1 site-2 site-3; do start_site $s; done
# Ctrl-C (SIGINT to `secfl run`, which passes it on) once round 2 is sealed
end=$((SECONDS + 120))
until rounds_done 2; do
  kill -0 $AGG_PID 2>/dev/null || { echo "own-task: the aggregator ended early" >&2; tail -20 owner/aggregator.log >&2; exit 1; }
  [ $SECONDS -lt $end ] || { echo "own-task: no round 2 after 120s" >&2; exit 1; }
  sleep 0.05
done
kill -INT $AGG_PID

say "8. Ctrl-C on the aggregator: it says which round is sealed"
wait_exit 60 $AGG_PID
[ $RC = 130 ] || { echo "own-task: the aggregator did not stop on Ctrl-C (exit $RC)" >&2; exit 1; }
grep "stopped: round .* is sealed" owner/aggregator.log

say "9. meanwhile: secfl status, secfl audit show"
secfl status --spm $SPM --spm-pin $PIN --policy clinic-risk
secfl audit show --spm $SPM --spm-pin $PIN --policy clinic-risk --limit 6

say "10. the same command again: it resumes, and the sites (which waited) rejoin"
start_aggregator
aggregator_ok 180
sites_ok
grep -E "resumed from|final model" owner/aggregator.log

say "11. policy version 2: 5 more rounds from run 1's model, signed and submitted; no reset"
cd board
secfl policy next policy.yaml --rounds 5 --set start_from=previous
diff policy.yaml policy-v2.yaml || true           # what the members review before signing
secfl policy validate policy-v2.yaml
secfl policy sign policy-v2.yaml --key alice.key --member alice & K=($!)
secfl policy sign policy-v2.yaml --key carol.key --member carol & K+=($!)
together "${K[@]}"
secfl policy submit policy-v2.yaml --sig policy-v2.yaml.alice.sig --sig policy-v2.yaml.carol.sig \
  --spm $SPM --spm-pin $PIN
cd ..
# every host starts its service again with the same command
start_aggregator
for s in site-1 site-2 site-3; do start_site $s; done
aggregator_ok 180
sites_ok

say "12. the model owner opens the final model with the key it never gave away"
cd owner
secfl shield decrypt output/model.secfl -o model --key-file model.key > /dev/null
python - <<'PY'
from safetensors import safe_open

with safe_open("model/model.safetensors", "numpy") as f:
    meta = f.metadata()
    print("tensors:", ", ".join(sorted(f.keys())))
print(f"best round: {meta['best_round']} ({meta['objective_metric']} {meta['best_objective']})")
PY
cd ..
say "13. secfl status, secfl audit show --event fl.round"
secfl status --spm $SPM --spm-pin $PIN --policy clinic-risk
secfl audit show --spm $SPM --spm-pin $PIN --policy clinic-risk --event fl.round
secfl audit verify --spm $SPM --spm-pin $PIN
