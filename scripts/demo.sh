#!/usr/bin/env bash
# make demo: the whole tpmauthn chain on this machine, narrated.
# A software TPM with an EK certificate, the verifier (embedded NATS), a join
# token, the agent (which enrolls), and a workload that connects with its
# TPM, publishes and receives, is refused outside its role, and sees a
# replayed signature refused; then the host is revoked, its live connection
# dropped and the reconnect denied, and the audit trail of it all is printed
# and verified. Everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
W=$(mktemp -d /tmp/tpmauthn-demo.XXXXXX)
PIDS=()

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
fail() {
  printf '\ndemo: FAILED: %s\n' "$*" >&2
  for f in verifier.log agent.log; do
    [ -f "$W/$f" ] && { echo "--- last lines of $f" >&2; tail -15 "$W/$f" >&2; }
  done
  exit 1
}
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  scripts/swtpm.sh stop "$W/tpm" >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { # a free loopback port, and the one after it free too
  # Below Linux's ephemeral range (32768+): a probe cannot see a port that an
  # outgoing connection holds, and swtpm would then fail to bind it.
  for _ in $(seq 50); do
    p=$(( (RANDOM % 12000) + 20000 ))
    if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && ! (exec 3<>/dev/tcp/127.0.0.1/$((p + 1))) 2>/dev/null; then
      echo "$p"; return
    fi
  done
  return 1
}
wait_for() { # wait_for SECONDS CMD...
  local n=$(( $1 * 10 )); shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

for b in swtpm swtpm_setup swtpm_localca swtpm_ioctl; do
  command -v "$b" >/dev/null || fail "$b is missing: sudo apt-get install -y swtpm swtpm-tools"
done
for b in tpmauthn-verifier tpmauthnctl tpmauthn-agent workload demo-idp; do
  [ -x "$BIN/$b" ] || fail "$BIN/$b is missing: run make build (make demo does)"
done

step "1. Manufacture a software TPM (swtpm) with an EK certificate from its own manufacturer CA"
TPM_URI=
for _ in 1 2 3; do # another process may take the port between probe and bind
  TPM_PORT=$(free_port) || fail "no free port"
  TPM_URI=$(scripts/swtpm.sh start "$W/tpm" "$TPM_PORT") && break
  TPM_URI=
  say "swtpm did not start (reason above); trying again on another port"
done
[ -n "$TPM_URI" ] || fail "swtpm did not start (see the messages above; is swtpm from Debian's swtpm package installed?)"
mkdir -p "$W/ek-ca"
cp "$W/tpm/ca/swtpm-localca-rootca-cert.pem" "$W/tpm/ca/issuercert.pem" "$W/ek-ca/"
say "TPM at $TPM_URI; the verifier will trust its manufacturer root ($W/ek-ca)"

step "2. Start the verifier: embedded NATS with auth callout, fleet CA, role policy, people's logins"
NATS_PORT=$(free_port) || fail "no free port"
HTTP_PORT=$(free_port) || fail "no free port"
# The people's identity provider: a stand-in OpenID provider (Dana, group
# developers; Olga, group ops). In production: Okta, Entra ID, Auth0, ...
(umask 077; head -c 24 /dev/urandom | base64 > "$W/idp.secret"; head -c 24 /dev/urandom | base64 > "$W/scim.token")
"$BIN/demo-idp" serve --issuer-file "$W/issuer" --client-secret "$(cat "$W/idp.secret")" \
  --redirect-uri "http://127.0.0.1:$HTTP_PORT/oidc/callback" > "$W/idp.log" 2>&1 &
PIDS+=($!)
wait_for 10 test -s "$W/issuer" || fail "the demo identity provider did not start: $(cat "$W/idp.log")"
ISSUER=$(cat "$W/issuer")
cat > "$W/policy.yaml" <<POLICY
session_ttl: 10m
roles:
  demo:
    publish: {allow: ["demo.>"]}
    subscribe: {allow: ["demo.>"]}
  dev:
    publish: {allow: ["dev.{{person}}.>"]}
    subscribe: {allow: ["dev.{{person}}.>"]}
bindings:
  - host_roles: [demo]
    roles: [demo]
people:
  login_ttl: 1h
  idps: [{name: okta, issuer: "$ISSUER", client_id: tpmauthn, client_secret_file: "$W/idp.secret", scim_token_file: "$W/scim.token"}]
  bindings:
    - {groups: [developers], roles: [dev], require: {assurance: hardware}}
POLICY
"$BIN/tpmauthn-verifier" --data-dir "$W/verifier" --nats-listen "127.0.0.1:$NATS_PORT" \
  --http-listen "127.0.0.1:$HTTP_PORT" \
  --ek-ca-dir "$W/ek-ca" --policy "$W/policy.yaml" --rp-id fleet.example.com > "$W/verifier.log" 2>&1 &
PIDS+=($!)
wait_for 15 test -s "$W/verifier/client-url" || fail "the verifier did not start"
wait_for 10 "$BIN/tpmauthnctl" --data-dir "$W/verifier" status || fail "the verifier does not answer"
say "verifier serving on nats://127.0.0.1:$NATS_PORT; policy: role demo may publish and subscribe demo.>"
say "people log in at http://127.0.0.1:$HTTP_PORT/login/ with identity provider $ISSUER; group developers gets role dev"

step "3. An operator creates a one-time join token for role demo"
(umask 077; "$BIN/tpmauthnctl" --data-dir "$W/verifier" token create --roles demo --ttl 10m > "$W/token" 2>"$W/token.info") || fail "token create"
say "$(cat "$W/token.info")"

step "4. Start the agent: it enrolls this host (EK chain, credential activation, AK certificate)"
cat > "$W/agent.yaml" <<AGENT
workloads:
  - name: demo-app
    match: {uid: $(id -u), exe: "$(realpath "$BIN/workload")"}
AGENT
"$BIN/tpmauthn-agent" run --tpm "$TPM_URI" --data-dir "$W/agent" --nats-url "nats://127.0.0.1:$NATS_PORT" \
  --token-file "$W/token" --socket "$W/agent.sock" --config "$W/agent.yaml" > "$W/agent.log" 2>&1 &
PIDS+=($!)
wait_for 30 curl -sf --unix-socket "$W/agent.sock" http://agent/healthz || fail "the agent did not start"
"$BIN/tpmauthnctl" --data-dir "$W/verifier" host list
echo
"$BIN/tpmauthnctl" --data-dir "$W/verifier" credential list

step "5. The agent names each caller by its process credentials: curl is not the demo-app program"
curl -s --unix-socket "$W/agent.sock" http://agent/v1/whoami || fail "whoami"
echo

step "6. The workload connects to NATS with its TPM, publishes, receives; a replay and a publish outside its role are refused"
"$BIN/workload" --socket "$W/agent.sock" --nats-url "nats://127.0.0.1:$NATS_PORT" \
  --subject demo.greetings --forbidden billing.invoices --replay || fail "the workload did not behave as shown"

step "7. A person logs in with their identity provider; the agent gives her a TPM credential for her uid"
say "Dana (group developers) runs tpmauthnctl login; her browser (scripted here) logs her in at the IdP"
BROWSER="$BIN/demo-idp browse --issuer $ISSUER --user dana --password pw" \
  "$BIN/tpmauthnctl" login --url "http://127.0.0.1:$HTTP_PORT" --idp okta --agent-socket "$W/agent.sock" \
  --out "$W/dana-login.json" 2>&1 | sed 's/^/   /' || fail "the person's login failed"
PERSON=$(sed -n 's/.*"id": "\(okta_[0-9a-f]*\)".*/\1/p' "$W/dana-login.json" | head -1)
[ -n "$PERSON" ] || fail "no person in the login: $(cat "$W/dana-login.json")"
say "her own program (no configured workload matches it) connects as the person, with role dev:"
cp "$BIN/workload" "$W/dana-app"
"$W/dana-app" --socket "$W/agent.sock" --nats-url "nats://127.0.0.1:$NATS_PORT" \
  --subject "dev.$PERSON.hello" --forbidden demo.greetings || fail "the person's program did not behave as shown"

step "8. The IdP offboards her (SCIM): her live session is dropped and her credential revoked"
SCIM="http://127.0.0.1:$HTTP_PORT/scim/v2/okta"
scim() { curl -sf -H "Authorization: Bearer $(cat "$W/scim.token")" -H "Content-Type: application/scim+json" "$@"; }
SCIM_ID=$(scim -X POST "$SCIM/Users" -d '{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"dana.scully@example.com","externalId":"u-dana","active":true}' |
  sed -n 's/.*"id":"\([^"]*\)".*/\1/p') || fail "SCIM provisioning failed"
[ -n "$SCIM_ID" ] || fail "SCIM: no user ID"
"$W/dana-app" --socket "$W/agent.sock" --nats-url "nats://127.0.0.1:$NATS_PORT" --subject "dev.$PERSON.live" --hold 30s > "$W/dana-live.log" 2>&1 &
PIDS+=($!)
wait_for 10 grep -q "holding the connection" "$W/dana-live.log" || fail "her live program did not connect: $(cat "$W/dana-live.log")"
T0=$(date +%s%3N)
scim -X PATCH "$SCIM/Users/$SCIM_ID" -d '{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"replace","value":{"active":false}}]}' >/dev/null ||
  fail "SCIM deactivation failed"
wait_for 5 grep -q "connection dropped" "$W/dana-live.log" || fail "her live connection was not dropped: $(cat "$W/dana-live.log")"
wait_for 20 grep -q "connection closed" "$W/dana-live.log" || fail "her reconnect was not refused: $(cat "$W/dana-live.log")"
sed 's/^/   her program: /' "$W/dana-live.log"
DROP=$(sed -n 's/.*unix_ms=\([0-9]*\).*/\1/p' "$W/dana-live.log" | head -1)
[ -n "$DROP" ] && say "SCIM deactivation -> her connection dropped in $((DROP - T0)) ms; the reconnect was denied"
"$BIN/tpmauthnctl" --data-dir "$W/verifier" person list

step "9. The workload holds a live connection; the operator revokes the host"
"$BIN/workload" --socket "$W/agent.sock" --nats-url "nats://127.0.0.1:$NATS_PORT" --subject demo.live --hold 30s > "$W/live.log" 2>&1 &
LIVE=$!
PIDS+=($LIVE)
wait_for 10 grep -q "holding the connection" "$W/live.log" || fail "the live workload did not connect: $(cat "$W/live.log")"
HOST_ID=$("$BIN/tpmauthnctl" --data-dir "$W/verifier" --json host list | sed -n 's/.*"id": "\(h-[0-9a-f]*\)".*/\1/p' | head -1)
T0=$(date +%s%3N)
"$BIN/tpmauthnctl" --data-dir "$W/verifier" host revoke "$HOST_ID" --reason "demo: host decommissioned"
wait_for 5 grep -q "connection dropped" "$W/live.log" || fail "the live connection was not dropped: $(cat "$W/live.log")"
# nats.go retries after 1-2 s, then 2-4 s (agent/client.ReconnectDelay), and
# gives up after the second refusal.
wait_for 20 grep -q "connection closed" "$W/live.log" || fail "the reconnect was not refused: $(cat "$W/live.log")"
sed 's/^/   workload: /' "$W/live.log"
DROP=$(sed -n 's/.*unix_ms=\([0-9]*\).*/\1/p' "$W/live.log" | head -1)
[ -n "$DROP" ] && say "revoke -> connection dropped in $((DROP - T0)) ms; the reconnect was denied"

step "10. The audit trail of everything above, and its proof"
"$BIN/tpmauthnctl" --data-dir "$W/verifier" audit tail -n 60
"$BIN/tpmauthnctl" --data-dir "$W/verifier" audit verify || fail "the audit chain does not verify"

printf '\ndemo: OK\n'
