#!/bin/sh
# tpmauthn-agent postrm: remove keeps the state (the host's enrollment and
# TPM key blobs) and the configuration; purge removes them, and the user.
set -e
if [ "$1" = purge ]; then
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper purge tpmauthn-agent.socket tpmauthn-agent.service >/dev/null || true
    fi
    rm -rf /var/lib/tpmauthn /run/tpmauthn
    rmdir /etc/tpmauthn 2>/dev/null || true
    if getent passwd tpmauthn >/dev/null; then
        deluser --system tpmauthn >/dev/null 2>&1 || true
    fi
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
exit 0
