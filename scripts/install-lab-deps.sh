#!/usr/bin/env bash
# Install what `blockwatch lab` needs: Debian packages (idempotent: apt-get skips what is there)
# and, if the project venv exists, the NFQUEUE binding used by the censor's helper processes.
# Daemons are never auto-started here: the lab starts each one inside its own namespace.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(iproute2 nftables iptables dnsmasq-base nginx-light openssl
          libnetfilter-queue-dev build-essential python3-dev
          openvpn strongswan-charon strongswan-swanctl pptpd xl2tpd tor
          microsocks  # the lab's SOCKS5 control path ([analysis] control_proxy)
          coturn      # a real STUN server (turnserver --stun-only) for the stun probe's tests
          systemd     # systemd-analyze verifies the deploy/ units in the tests
          chromium    # headless screenshots of the HTML report (tests/test_report_browser.py)
          postgresql) # tests/postgres.py runs its own throwaway server from these binaries

if [ "$(id -u)" -ne 0 ]; then
    echo "install-lab-deps: run as root (sudo bash $0)" >&2
    exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    # policy-rc.d exit 101 keeps dnsmasq/openvpn/strongswan from starting in the host namespace
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    # and no "main" PostgreSQL cluster is created on the host (the tests make their own)
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/blockwatch.conf
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

if [ -x .venv/bin/pip ]; then
    .venv/bin/python -c "import netfilterqueue" 2>/dev/null \
        || .venv/bin/pip install --quiet "netfilterqueue>=1.1"
fi
echo "install-lab-deps: ok"
