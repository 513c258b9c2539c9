#!/bin/sh
# tpmauthn-verifier postinst: the unit enabled, not started (it needs its
# configuration: EK CAs, policy). Its user is systemd's DynamicUser.
set -e
if [ "$1" = configure ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
    fi
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper enable tpmauthn-verifier.service >/dev/null || true
    fi
fi
exit 0
