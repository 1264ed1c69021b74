#!/usr/bin/env bash
# Builds the wheel, installs it into a fresh venv outside the checkout and runs a short demo there.
# The fresh venv reuses the set-up's pinned torch (and every other dependency) through a .pth file
# pointing at a folder of links to .venv's packages, zarrl itself left out; the wheel is installed
# with --no-deps (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-$REPO/.venv/bin/python}
WORK=$(mktemp -d /tmp/zarrl-wheel.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$REPO"
rm -rf "$REPO/build"
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir "$WORK/deps"
for entry in "$SITE"/*; do
  case "$(basename "$entry")" in
    zarrl*|__editable__*zarrl*|__pycache__|*.pth) ;;
    *) ln -s "$entry" "$WORK/deps/" ;;
  esac
done
"$PY" -m venv "$WORK/venv"
NEW_SITE=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$WORK/deps" > "$NEW_SITE/zz_pinned_deps.pth"
"$WORK/venv/bin/python" -m pip install -q --no-index --no-deps "$WORK"/dist/zarrl-*.whl
mkdir "$WORK/user" && cd "$WORK/user"
"$WORK/venv/bin/python" -c 'import zarrl.engine, sys; assert "/tmp/" in zarrl.engine.__file__, zarrl.engine.__file__'
"$WORK/venv/bin/zarrl" --version
OMP_NUM_THREADS=2 "$WORK/venv/bin/zarrl" demo train.total_frames=1500 train.warmup_frames=500 \
  collector.init_random_frames=500 eval.episodes=2 log.progress=false
test -f runs/demo/checkpoints/final.pt
"$WORK/venv/bin/zarrl" train cartpole_trust_pcl --quiet train.total_frames=1500 eval.episodes=0 >/dev/null
echo "wheel smoke: ok"
