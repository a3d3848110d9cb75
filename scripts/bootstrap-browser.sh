#!/usr/bin/env bash
# What the e2e browser tests need beyond `make bootstrap`: Debian's Chromium and its
# WebDriver (selenium itself comes with the venv's test extras). Silent when present.
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
    echo "bootstrap-browser: apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
