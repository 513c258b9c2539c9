#!/bin/sh
# tpmauthn-agent postinst: the tpmauthn system user (group tss, for
# /dev/tpmrm0), its state directory, and the units enabled (not started:
# the agent needs its configuration and a join token first).
set -e
if [ "$1" = configure ]; then
    if ! getent group tss >/dev/null; then
        addgroup --system tss
    fi
    if ! getent passwd tpmauthn >/dev/null; then
        adduser --system --group --home /var/lib/tpmauthn --no-create-home \
            --gecos "tpmauthn agent" tpmauthn >/dev/null
    fi
    adduser tpmauthn tss >/dev/null 2>&1 || true
    install -d -m 0700 -o tpmauthn -g tpmauthn /var/lib/tpmauthn
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
    fi
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper enable tpmauthn-agent.socket >/dev/null || true
        deb-systemd-helper enable tpmauthn-agent.service >/dev/null || true
    fi
fi
exit 0
