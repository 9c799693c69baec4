#!/usr/bin/env bash
# Debian's headless Chromium and its chromedriver, for the UI's browser tests (tests/ui/).
# Installed with apt (as root, or through sudo without a password); nothing is downloaded at test
# time, and no test framework may fetch a browser of its own. Prints the chromium path.
set -euo pipefail
chromium=${COMPOZY_CHROMIUM:-/usr/bin/chromium}
driver=${COMPOZY_CHROMEDRIVER:-/usr/bin/chromedriver}
if [[ -x $chromium && -x $driver ]]; then
  echo "$chromium"
  exit 0
fi
echo "[ui] installing Debian's chromium and chromium-driver" >&2
if [[ $(id -u) -eq 0 ]]; then
  apt=(apt-get)
elif sudo -n true 2>/dev/null; then
  apt=(sudo -n apt-get)
else
  echo "[ui] $chromium or $driver is missing; install them: apt-get install -y chromium chromium-driver" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${apt[@]}" update -qq >&2
"${apt[@]}" install -y -qq chromium chromium-driver >&2
echo "$chromium"
