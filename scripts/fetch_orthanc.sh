#!/usr/bin/env bash
# A newer Orthanc beside Debian's, for the one test that needs it: a PACS pulling a study
# from the node by C-GET. Debian 12's Orthanc (1.10.1) has no C-GET SCU (Orthanc added it
# in 1.12.6); Debian 13 (trixie) ships 1.12.7. Its package and everything it depends on are
# downloaded with apt from deb.debian.org (signatures checked against this machine's
# debian-archive-keyring, which holds trixie's keys) into a private apt root, unpacked into
# DEST/root, and run with trixie's own dynamic loader and libraries: nothing on the system
# changes. DEST/orthanc is the command; DEST/installed names the version.
#
#   scripts/fetch_orthanc.sh [DEST]      (default .cache/orthanc-trixie; a no-op once there)
set -euo pipefail

DEST=${1:-.cache/orthanc-trixie}
SUITE=trixie
MINIMUM=1.12.6
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

if [ -x "$DEST/orthanc" ] && [ -s "$DEST/installed" ]; then
  exit 0
fi
[ -r "$KEYRING" ] || { echo "fetch_orthanc: $KEYRING is missing (apt-get install debian-archive-keyring)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/fetch-orthanc.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/etc/apt/{apt.conf.d,preferences.d,sources.list.d} \
  "$work"/var/lib/apt/lists/partial "$work"/var/cache/apt/archives/partial "$work"/var/lib/dpkg
: > "$work/var/lib/dpkg/status"  # an empty system: apt downloads the whole dependency closure
echo "deb [signed-by=$KEYRING] http://deb.debian.org/debian $SUITE main" > "$work/etc/apt/sources.list"
apt_opts=(-o "Dir=$work" -o "Dir::State::status=$work/var/lib/dpkg/status"
          -o Debug::NoLocking=1 -o APT::Architecture=amd64 -o APT::Get::AllowUnauthenticated=false
          -o "APT::Sandbox::User=$(id -un)")  # the private root is this user's

echo "fetch_orthanc: Orthanc from Debian $SUITE into $DEST"
apt-get "${apt_opts[@]}" -qq update
apt-get "${apt_opts[@]}" -qq -y --no-install-recommends install --download-only orthanc >/dev/null

rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp/root"
for deb in "$work"/var/cache/apt/archives/*.deb; do
  dpkg-deb -x "$deb" "$DEST.tmp/root"
done
version=$(dpkg-deb -f "$work"/var/cache/apt/archives/orthanc_*.deb Version)

cat > "$DEST.tmp/orthanc" <<'EOF'
#!/bin/sh
# Orthanc from Debian trixie, run with trixie's loader and libraries (scripts/fetch_orthanc.sh).
here=$(dirname "$(readlink -f "$0")")/root
libs=$here/usr/lib/x86_64-linux-gnu:$here/lib/x86_64-linux-gnu:$here/usr/lib
# DCMTK's data dictionary is compiled in as /usr/share/dcmtk/dicom.dic: trixie's, not the system's.
DCMDICTPATH=$here/usr/share/dcmtk/dicom.dic:$here/usr/share/dcmtk/private.dic
export DCMDICTPATH
exec "$here/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "$libs" \
  "$here/usr/sbin/Orthanc" "$@"
EOF
chmod +x "$DEST.tmp/orthanc"

# awk reads every line (head would close the pipe early: SIGPIPE, and pipefail fails).
reported=$("$DEST.tmp/orthanc" --version 2>&1 | awk 'NR == 1 {print $2}')
if [ "$(printf '%s\n%s\n' "$MINIMUM" "$reported" | sort -V | awk 'NR == 1')" != "$MINIMUM" ]; then
  echo "fetch_orthanc: $SUITE has Orthanc $reported, older than $MINIMUM (no C-GET SCU)" >&2
  exit 1
fi
echo "$version" > "$DEST.tmp/installed"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "fetch_orthanc: Orthanc $reported ($version) in $DEST"
