#!/bin/sh
# tpmauthn-agent prerm: stop the agent before its files go.
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    deb-systemd-invoke stop tpmauthn-agent.service tpmauthn-agent.socket >/dev/null 2>&1 || true
fi
exit 0
