#!/bin/sh
# tpmauthn-verifier postrm: remove keeps the state (its keys, the embedded
# server's JetStream: the fleet's records and audit trail) and the
# configuration; purge removes them.
set -e
if [ "$1" = purge ]; then
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper purge tpmauthn-verifier.service >/dev/null || true
    fi
    rm -rf /var/lib/tpmauthn-verifier /var/lib/private/tpmauthn-verifier
    rmdir /etc/tpmauthn 2>/dev/null || true
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
exit 0
