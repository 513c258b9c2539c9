#!/usr/bin/env bash
# Manufacture and run a software TPM for development, everything under DIR:
#   scripts/swtpm.sh start DIR [PORT]   -> swtpm://127.0.0.1:PORT (default 2321)
#   scripts/swtpm.sh stop DIR
# The EK certificate is issued by a swtpm-localca CA in DIR/ca; its root,
# DIR/ca/swtpm-localca-rootca-cert.pem, is the "manufacturer root" to trust.
set -euo pipefail
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2; }
for b in swtpm swtpm_setup swtpm_localca swtpm_ioctl; do
  command -v "$b" >/dev/null || { echo "$b not found: sudo apt-get install -y swtpm swtpm-tools" >&2; exit 1; }
done
mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
case "$cmd" in
start)
  port=${3:-2321}
  mkdir -p "$dir/state" "$dir/ca"
  if [ ! -e "$dir/state/tpm2-00.permall" ]; then
    printf 'statedir = %s\nsigningkey = %s/signkey.pem\nissuercert = %s/issuercert.pem\ncertserial = %s/certserial\n' \
      "$dir/ca" "$dir/ca" "$dir/ca" "$dir/ca" > "$dir/swtpm-localca.conf"
    printf -- '--platform-manufacturer tpmauthn\n--platform-version 1.0\n--platform-model swtpm\n' > "$dir/swtpm-localca.options"
    printf 'create_certs_tool = swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n' \
      "$dir/swtpm-localca.conf" "$dir/swtpm-localca.options" > "$dir/swtpm_setup.conf"
    if ! HOME=$dir XDG_CONFIG_HOME=$dir/xdg swtpm_setup --tpm2 --tpmstate "$dir/state" --config "$dir/swtpm_setup.conf" \
      --create-ek-cert --create-platform-cert --lock-nvram --not-overwrite --logfile "$dir/swtpm_setup.log" >/dev/null; then
      echo "swtpm_setup failed; last lines of $dir/swtpm_setup.log:" >&2
      tail -20 "$dir/swtpm_setup.log" >&2 2>/dev/null || true
      rm -f "$dir/state/tpm2-00.permall" # half-made state must not be reused
      exit 1
    fi
  fi
  : > "$dir/swtpm.log" # this attempt's lines only
  if ! swtpm socket --tpm2 --daemon --pid file="$dir/swtpm.pid" --log file="$dir/swtpm.log" \
    --server type=tcp,port="$port",bindaddr=127.0.0.1 --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 \
    --flags not-need-init,startup-clear --tpmstate dir="$dir/state"; then
    echo "swtpm did not start on ports $port/$((port + 1)); last lines of $dir/swtpm.log:" >&2
    tail -20 "$dir/swtpm.log" >&2 2>/dev/null || true
    exit 1
  fi
  echo "$port" > "$dir/port"
  echo "swtpm://127.0.0.1:$port"
  ;;
stop)
  [ -f "$dir/port" ] && swtpm_ioctl --tcp "127.0.0.1:$(( $(cat "$dir/port") + 1 ))" -s 2>/dev/null || true
  pid=$(cat "$dir/swtpm.pid" 2>/dev/null || true) # gone already if the shutdown above finished
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  rm -f "$dir/swtpm.pid"
  ;;
*) echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2 ;;
esac
