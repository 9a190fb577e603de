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
(cd board && for m in alice bob carol; do secfl policy keygen --out-dir . --member $m > /dev/null; done)
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
secfl shield keygen -o task.key
TASK_TAG=$(secfl shield encrypt task -o task.secfl --key-file task.key)
secfl data split --task digits --clients 2 -o shards > /dev/null
mkdir validation && cp shards/validation.safetensors validation/
secfl shield keygen -o validation.key
VAL_TAG=$(secfl shield encrypt validation -o validation.secfl --key-file validation.key)
TASK_SEALED=$(secfl policy seal-secret --key-file task.key --policy fed --secret task-key --spm $SPM --spm-pin $PIN $BOARD)
VAL_SEALED=$(secfl policy seal-secret --key-file validation.key --policy fed --secret validation-key --spm $SPM --spm-pin $PIN $BOARD)
AGG_MR=$(secfl measure --for-run --code-volume task=task.secfl -- secfl aggregator --task volume:task --validation volume:validation --listen $AGG)
COL_MR=$(secfl measure --for-run --code-volume task=task.secfl -- secfl collaborator --aggregator $AGG --task volume:task)
cd ..

# --- machines B and C: each site shields its own data with its own key --------------------
for i in 1 2; do
  cd site$i; cp ../agg/task.secfl .
  mkdir data && cp ../agg/shards/client-00$((i-1)).safetensors data/
  secfl shield keygen -o site-$i.key
  eval "S${i}_TAG=\$(secfl shield encrypt data -o site-$i.secfl --key-file site-$i.key)"
  eval "S${i}_SEALED=\$(secfl policy seal-secret --key-file site-$i.key --policy fed --secret site-$i-key --spm $SPM --spm-pin $PIN $BOARD)"
  [ "$(secfl measure --for-run --code-volume task=task.secfl -- secfl collaborator --aggregator $AGG --task volume:task)" = "$COL_MR" ]
  cd ..
done
# --- the board: the policy, two of three signatures, submitted ------------------------------
cd board
cat > policy.yaml <<YAML
name: fed
version: 1
board:
  threshold: 2
  members:
$(for m in alice bob carol; do printf '    - name: %s\n      public_key: |\n' $m; sed 's/^/        /' $m.pub; done)
platforms:
  accept: [simulated]
  allow_unknown_tcb: true
  simulation_root: |
$(sed 's/^/    /' ../spm/sim/root.pem)
identity_ca: fl-ca
services:
  - name: aggregator
    role: aggregator
    measurements: {simulated: [$AGG_MR]}
    volumes: [task, validation]
    counters: [rounds]
    inject:
      files:
        /fl/signing-key.pem: \$\$SECFL::model-signing:key\$\$
        /fl/checkpoint.key: \$\$SECFL::checkpoint-key:hex\$\$
  - name: site-1
    role: collaborator
    measurements: {simulated: [$COL_MR]}
    volumes: [task, site-1]
    certificate_ttl: 3600
    inject: {files: {/fl/signing-key.pub: \$\$SECFL::model-signing:pub\$\$}}
  - name: site-2
    role: collaborator
    measurements: {simulated: [$COL_MR]}
    volumes: [task, site-2]
    certificate_ttl: 3600
    inject: {files: {/fl/signing-key.pub: \$\$SECFL::model-signing:pub\$\$}}
secrets:
  - {name: fl-ca, kind: x509-ca, common_name: fed CA}
  - {name: model-signing, kind: ed25519}
  - {name: checkpoint-key, kind: aes-256}
  - {name: task-key, kind: imported, sealed: "$TASK_SEALED"}
  - {name: validation-key, kind: imported, sealed: "$VAL_SEALED"}
  - {name: site-1-key, kind: imported, sealed: "$S1_SEALED"}
  - {name: site-2-key, kind: imported, sealed: "$S2_SEALED"}
volumes:
  - {name: task, key: task-key, kind: code, tag: $TASK_TAG}
  - {name: validation, key: validation-key, tag: $VAL_TAG}
  - {name: site-1, key: site-1-key, tag: $S1_TAG}
  - {name: site-2, key: site-2-key, tag: $S2_TAG}
counters: [{name: rounds}]
federation:
  rounds: 5
  min_clients: 2
  train: {epochs: 2}
YAML
secfl policy validate policy.yaml
secfl policy sign policy.yaml --key alice.key --member alice
secfl policy sign policy.yaml --key bob.key --member bob
secfl policy submit policy.yaml --sig policy.yaml.alice.sig --sig policy.yaml.bob.sig --spm $SPM --spm-pin $PIN
# --- run: the aggregator on machine A, one collaborator on each site -----------------------
cd ../agg
secfl run --spm $SPM --spm-pin $PIN --policy fed --service aggregator --platform simulated --sim-dir sim \
  --volume task=task.secfl --volume validation=validation.secfl \
  -- secfl aggregator --task volume:task --validation volume:validation --listen $AGG > agg.log 2>&1 &
AGG_PID=$!
cd ..

# --- machines B and C: each site shields its own data with its own key --------------------
for i in 1 2; do
  (cd site$i && exec secfl run --spm $SPM --spm-pin $PIN --policy fed --service site-$i --platform simulated --sim-dir sim \
    --volume task=task.secfl --volume site-$i=site-$i.secfl \
    -- secfl collaborator --aggregator $AGG --task volume:task > site.log 2>&1) &
  PIDS+=($!)
done
wait $AGG_PID
grep "round .* done" agg/agg.log | tail -1
secfl audit verify --spm $SPM --spm-pin $PIN
