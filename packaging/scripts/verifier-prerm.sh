#!/bin/sh
# tpmauthn-verifier prerm: stop the verifier before its files go.
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    deb-systemd-invoke stop tpmauthn-verifier.service >/dev/null 2>&1 || true
fi
exit 0
