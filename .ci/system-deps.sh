#!/usr/bin/env bash
# Debian packages the test suite needs for live-stream tests (tests/stream_servers.py):
#   ffmpeg                       HTTP MPEG-TS server (`ffmpeg -listen 1`)
#   python3-gi + gir1.2-gst-rtsp-server-1.0 + GStreamer plugins
#                                a small RTSP server run by the system python3
#   mosquitto                    a real MQTT broker for tests/test_outputs_mqtt.py
#   chromium                     headless browser for the preview page test (tests/test_preview_browser.py)
# Idempotent: when every package is already installed it does not touch apt at all.
# Runs apt-get as root, or through sudo when that is available without a password.
set -euo pipefail

PACKAGES=(
  ffmpeg
  python3-gi
  gir1.2-gstreamer-1.0
  gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly
  gstreamer1.0-libav
  mosquitto
  chromium
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  # dpkg-query prints "install ok installed" only for fully installed packages.
  if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "system-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "system-deps: missing ${missing[*]} and no root/sudo to install them;" \
       "the live-stream tests will be skipped with this reason" >&2
  exit 0
fi

echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
