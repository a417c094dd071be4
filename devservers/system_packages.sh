#!/usr/bin/env bash
# What `make test` needs beyond Python: a browser for the page tests (and a font with
# Chinese glyphs for the README's screenshots of its pages), and the PostgreSQL
# and RabbitMQ servers that tests/postgres and tests/rabbitmq start on 127.0.0.1.
# As root on Debian it installs what is missing; anywhere else it names what to install
# and stops. `make run` needs none of it.
set -euo pipefail

missing=()
command -v chromium >/dev/null || missing+=(chromium)
if ! command -v fc-list >/dev/null || [ -z "$(fc-list :lang=zh)" ]; then missing+=(fonts-wqy-microhei); fi
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "make test needs these system packages, which are not installed: ${missing[*]}" >&2
    echo "On Debian or Ubuntu: sudo apt-get install ${missing[*]}" >&2
    echo "(or run make test as root on Debian, which installs them)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Keep postinst scripts from starting system services (a broker on 0.0.0.0:5672, a
# PostgreSQL cluster): the tests start their own on 127.0.0.1.
blocked=
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && blocked=1
fi
trap '[ -z "$blocked" ] || rm -f /usr/sbin/policy-rc.d' EXIT
echo "Installing system packages for the tests: ${missing[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
