#!/usr/bin/env bash
# Install the system packages coldkeep's tests and demo need, only when they are missing.
# PostgreSQL 15 server binaries, zstd, tar, gzip, coreutils (sha256sum), util-linux (runuser), git
# (the reproducibility package's code), locales; Prometheus (promtool and the server: the alert-rule
# tests) and the Pushgateway (metrics tests); Chromium (the report opened in a headless browser).
set -euo pipefail
missing=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || command -v pg_ctl >/dev/null 2>&1 || missing+=(postgresql-15)
command -v zstd >/dev/null 2>&1 || missing+=(zstd)
command -v tar >/dev/null 2>&1 || missing+=(tar)
command -v sha256sum >/dev/null 2>&1 || missing+=(coreutils)
command -v gzip >/dev/null 2>&1 || missing+=(gzip)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
{ command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } || missing+=(prometheus)
command -v prometheus-pushgateway >/dev/null 2>&1 || missing+=(prometheus-pushgateway)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing system packages: ${missing[*]} (run as root or install them: apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "installing system packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # the Debian package starts a cluster on 5432; coldkeep's tests never use it (nor the Prometheus
  # services the packages may start: the tests start their own on 127.0.0.1 and free ports)
fi
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
