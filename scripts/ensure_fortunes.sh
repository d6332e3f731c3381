#!/bin/sh
# Install Debian's fortunes (the demo's and the tests' real text) when it is missing.
set -e
FORTUNES_DIR=/usr/share/games/fortunes
if [ -f "$FORTUNES_DIR/computers" ]; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's fortunes package" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fortunes >/dev/null
    exit 0
fi
echo "error: $FORTUNES_DIR is missing. Install Debian's fortunes package:" >&2
echo "    sudo apt-get install fortunes" >&2
exit 1
