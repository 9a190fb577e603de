#!/usr/bin/env bash
# The README's three-machine walkthrough, run on one machine: the folders spm/, agg/,
# site1/, site2/ and board/ stand for the SPM operator's machine, the aggregator's,
# two sites' and the board members'. Simulated TEE; on hardware drop
# `--platform simulated --sim-dir sim` and the simulation root.
# Usage: examples/walkthrough.sh [WORK_DIR]   (needs `secfl` on PATH)
set -euo pipefail
W=$(realpath -m "${1:-walkthrough}"); rm -rf "$W"; mkdir -p "$W"/{spm,agg,site1,site2,board}; cd "$W"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SPM_PORT=$(port); AGG=127.0.0.1:$(port); SPM=https://127.0.0.1:$SPM_PORT
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
# together PID...: wait for steps started at once with `&` (independent: none reads what
# another writes); fail if one failed. Each `secfl` spends about a second starting up.
together() { local p; for p in "$@"; do wait "$p"; done; }

# --- machine S: the SPM, in its TEE -------------------------------------------------------
(cd spm && secfl sim init sim > /dev/null)
(cd spm && exec secfl spm serve --data spm-data --listen 127.0.0.1:$SPM_PORT --platform simulated \
  --sim-dir sim --ready-file ready.json > spm.log 2>&1) &
PIDS+=($!)
while [ ! -f spm/ready.json ]; do sleep 0.2; done
M=$(cd spm && secfl spm measurement)
cp -r spm/sim agg/sim; cp -r spm/sim site1/sim; cp -r spm/sim site2/sim
PIN=$(secfl spm verify $SPM --expect-measurement $M --sim-root spm/sim/root.pem | tail -1)
echo "SPM pin: $PIN"

# --- the board: each member makes a key pair and publishes the public half ---------------
# Data owners seal their keys for exactly this board: a policy of the same name registered
# first by anyone else (another board) can never open them.
K=()
for m in alice bob carol; do (cd board && secfl policy keygen --out-dir . --member $m > /dev/null) & K+=($!); done
together "${K[@]}"
BOARD="--board-key ../board/alice.pub --board-key ../board/bob.pub --board-key ../board/carol.pub --threshold 2"

# --- machine A: the model owner shields the task code and its validation data -------------
cd agg
mkdir task && cat > task/task.py <<'PY'
"""The federation's task: scikit-learn's digits, a small MLP."""
from secfl.tasks._registry import get_task

_task = get_task("digits")
name = _task.name
build_model, load_data = _task.build_model, _task.load_data
train, evaluate = _task.train, _task.evaluate
PY
# (the code, the validation data and the output key are independent: made at the same time)
( secfl shield keygen -o task.key
  secfl shield encrypt task -o task.secfl --key-file task.key > task.tag
  secfl policy seal-secret --key-file task.key --policy fed --secret task-key --spm $SPM --spm-pin $PIN $BOARD > task.sealed
) & K=($!)
( secfl data split --task digits --clients 2 -o shards > /dev/null
  mkdir validation && cp shards/validation.safetensors validation/
  secfl shield keygen -o validation.key
  secfl shield encrypt validation -o validation.secfl --key-file validation.key > validation.tag
  secfl policy seal-secret --key-file validation.key --policy fed --secret validation-key --spm $SPM --spm-pin $PIN $BOARD > validation.sealed
) & K+=($!)
# The output key: the final model is sealed to it, and only the model owner opens it.
( secfl shield keygen -o model.key
  secfl policy seal-secret --key-file model.key --policy fed --secret output-key --spm $SPM --spm-pin $PIN $BOARD > model.sealed
) & K+=($!)
together "${K[@]}"
TASK_TAG=$(< task.tag); VAL_TAG=$(< validation.tag)
TASK_SEALED=$(< task.sealed); VAL_SEALED=$(< validation.sealed); OUT_SEALED=$(< model.sealed)
cd ..

# --- machines B and C: each site shields its own data with its own key --------------------
K=()
for i in 1 2; do                                  # (the two sites at the same time)
  ( cd site$i; cp ../agg/task.secfl .
    mkdir data && cp ../agg/shards/client-00$((i-1)).safetensors data/
    secfl shield keygen -o site-$i.key
    secfl shield encrypt data -o site-$i.secfl --key-file site-$i.key > site-$i.tag
    secfl policy seal-secret --key-file site-$i.key --policy fed --secret site-$i-key --spm $SPM --spm-pin $PIN $BOARD > site-$i.sealed
    # its site key: only a TEE its host gives this key enrols as site-$i (every site runs
    # the same collaborator, so the measurement cannot tell them apart); the board gets the .pub
    secfl policy keygen --out-dir site-keys --member site-$i > /dev/null
  ) & K+=($!)
done
together "${K[@]}"
S1_TAG=$(< site1/site-1.tag); S1_SEALED=$(< site1/site-1.sealed)
S2_TAG=$(< site2/site-2.tag); S2_SEALED=$(< site2/site-2.sealed)

# --- the board: the policy from a few facts, checked, two of three signatures, submitted ---
# `policy init` computes each service's measurement from the exact command `secfl run`
# starts (addresses and folders stay out of it: they are the hosts' SECFL_* settings).
cd board
secfl policy init --name fed --threshold 2 \
  --member alice=alice.pub --member bob=bob.pub --member carol=carol.pub \
  --site site-1 --site site-2 --sim-root ../spm/sim/root.pem \
  --task $TASK_TAG --validation $VAL_TAG --data site-1=$S1_TAG --data site-2=$S2_TAG \
  --sealed task-key=$TASK_SEALED --sealed validation-key=$VAL_SEALED --sealed output-key=$OUT_SEALED \
  --sealed site-1-key=$S1_SEALED --sealed site-2-key=$S2_SEALED \
  --site-key site-1=../site1/site-keys/site-1.pub --site-key site-2=../site2/site-keys/site-2.pub \
  --rounds 5 --train epochs=2 > init.txt
secfl policy validate policy.yaml
# Every site checks that the policy pins exactly what it will run (the same for all sites).
K=()
for i in 1 2; do
  ( MINE=$(cd ../site$i && secfl measure --for-run --code-volume task=task.secfl -- secfl collaborator --task volume:task)
    grep -q "$MINE" policy.yaml ) & K+=($!)
done
together "${K[@]}"
secfl policy sign policy.yaml --key alice.key --member alice & K=($!)  # each on their own machine
secfl policy sign policy.yaml --key bob.key --member bob & K+=($!)
together "${K[@]}"
secfl policy submit policy.yaml --sig policy.yaml.alice.sig --sig policy.yaml.bob.sig --spm $SPM --spm-pin $PIN

# --- run: the aggregator on machine A, one collaborator on each site -----------------------
# Where to listen, whom to dial and where to write are each host's own settings.
cd ../agg
SECFL_LISTEN=$AGG SECFL_OUTPUT=output \
  secfl run --spm $SPM --spm-pin $PIN --policy fed --service aggregator --platform simulated --sim-dir sim \
  --volume task=task.secfl --volume validation=validation.secfl \
  -- secfl aggregator --task volume:task --validation volume:validation > agg.log 2>&1 &
AGG_PID=$!
cd ..
for i in 1 2; do
  (cd site$i && SECFL_SITE_KEY=site-keys/site-$i.key SECFL_AGGREGATOR=$AGG exec secfl run --spm $SPM --spm-pin $PIN --policy fed --service site-$i \
    --platform simulated --sim-dir sim --volume task=task.secfl --volume site-$i=site-$i.secfl \
    -- secfl collaborator --task volume:task > site.log 2>&1) &
  PIDS+=($!)
done
wait $AGG_PID
grep "round .* done" agg/agg.log | tail -1
secfl audit verify --spm $SPM --spm-pin $PIN
# --- machine A: the model owner opens the final model with the key it never gave away ------
# (the tag the aggregator logged with the SPM: no other file, such as an older output, opens)
TAG=$(secfl audit show --spm $SPM --spm-pin $PIN --policy fed --event fl.model --limit 1 --json \
  | python -c 'import json, sys; print(json.load(sys.stdin)["detail"]["tag"])')
(cd agg && secfl shield decrypt output/model.secfl -o model --key-file model.key --expect-tag $TAG > /dev/null && ls model)
