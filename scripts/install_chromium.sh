#!/usr/bin/env bash
# Installs Debian's chromium package when missing: the browser tests (tests/test_e2e_web.py) and `make bench`'s
# first-paint figure drive it headless through Playwright (executable_path=/usr/bin/chromium; Playwright's own
# browser download is not used). Idempotent; needs root or sudo on first use.
set -euo pipefail
if [[ -x /usr/bin/chromium ]]; then
  exit 0
fi
SUDO=""
if [[ "$(id -u)" != "0" ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
APT=($SUDO apt-get -o DPkg::Lock::Timeout=600 -y -qq)
if ! apt-cache policy chromium 2>/dev/null | grep -q "Candidate: [0-9]"; then
  "${APT[@]}" update
fi
# fonts-dejavu-core: readable text in screenshots whatever else the machine has.
"${APT[@]}" install --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "installed $(/usr/bin/chromium --version 2>/dev/null | head -1)"
