#!/usr/bin/env bash
# fetch-public-data.sh — fetch two small public datasets for trying Encore on real data.
#
# Usage: scripts/fetch-public-data.sh [DEST]        (DEST defaults to data/public)
#
# Nothing in the test suite needs these files; this is for users who want them.
# Both datasets come from wheels on PyPI, downloaded with pip (version- and hash-pinned),
# and only the needed files are extracted with Python's zipfile module:
#
#   DEST/cdnow/CDNOW_master.txt      from lifetimes==0.11.3  (lifetimes/datasets/CDNOW_master.txt)
#   DEST/cdnow/CDNOW_sample.txt      the 2,357-customer 1/10th sample of the same panel (Fader & Hardie's,
#                                    where BG/NBD was first fitted), the master id in its first column
#   DEST/movielens/ml-100k.inter     from recbole==1.2.1     (recbole/dataset_example/ml-100k/)
#   DEST/movielens/ml-100k.item
#   DEST/movielens/ml-100k.user
#
# Licences / citations — respect them when you use or redistribute the data:
#   * MovieLens 100K: GroupLens Research terms of use (non-commercial research use, no
#     redistribution without permission, acknowledge use). Cite:
#       F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and
#       Context. ACM Transactions on Interactive Intelligent Systems 5(4), Article 19.
#       https://doi.org/10.1145/2827872
#     (Here in RecBole's "atomic file" form, as shipped in the recbole wheel.)
#   * CDNOW master data set: as distributed with the lifetimes package; originally made
#     available by Peter S. Fader and Bruce G. S. Hardie (see e.g. Fader, Hardie & Lee,
#     "Counting Your Customers the Easy Way", Marketing Science 24(2), 2005).
#
# Idempotent: files that already exist with the expected line count are left alone, and a
# package is only downloaded if one of its files is missing. Each file is written under a
# temporary name, verified (line count and SHA-256), then moved into place.
#
# Environment: PYTHON (default python3) must have pip; pip's usual config/index is used.
set -euo pipefail

DEST="${1:-data/public}"
PYTHON="${PYTHON:-python3}"

if [[ "${DEST}" == "-h" || "${DEST}" == "--help" ]]; then
    sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

LIFETIMES_REQ="lifetimes==0.11.3 --hash=sha256:261e3dc89977c2b60767ca6728aaa29d429de0c814635070a749c36555895da8"
RECBOLE_REQ="recbole==1.2.1 --hash=sha256:9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"

# One entry per file: package|member inside the wheel|destination (relative to DEST)|lines|sha256
# "lines" is the number of newline characters (what `wc -l` prints); header lines included.
FILES=(
    "lifetimes|lifetimes/datasets/CDNOW_master.txt|cdnow/CDNOW_master.txt|69660|eff6889ed364c5199d6eacbbeb7a6d559971df4406ac876f322c373f00a072ef"
    "lifetimes|lifetimes/datasets/CDNOW_sample.txt|cdnow/CDNOW_sample.txt|6919|6fae10155c0b0ba363c2c386e30f77990d22328220efd862a5edd1443420d94a"
    "recbole|recbole/dataset_example/ml-100k/ml-100k.inter|movielens/ml-100k.inter|100001|4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
    "recbole|recbole/dataset_example/ml-100k/ml-100k.item|movielens/ml-100k.item|1683|51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"
    "recbole|recbole/dataset_example/ml-100k/ml-100k.user|movielens/ml-100k.user|944|4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972"
)

line_count() { wc -l < "$1" | tr -d '[:space:]'; }

have_file() { # path expected_lines
    [[ -f "$1" ]] && [[ "$(line_count "$1")" == "$2" ]]
}

TMP="$(mktemp -d "${TMPDIR:-/tmp}/encore-public-data.XXXXXX")"
trap 'rm -rf "${TMP}"' EXIT

# Which packages are needed?
need_lifetimes=0
need_recbole=0
for entry in "${FILES[@]}"; do
    IFS='|' read -r pkg member rel lines sha <<<"${entry}"
    if ! have_file "${DEST}/${rel}" "${lines}"; then
        [[ "${pkg}" == lifetimes ]] && need_lifetimes=1
        [[ "${pkg}" == recbole ]] && need_recbole=1
    fi
done

download() { # pkg requirement-line
    local pkg="$1" req="$2"
    mkdir -p "${TMP}/${pkg}"
    printf '%s\n' "${req}" > "${TMP}/${pkg}.txt"
    echo "Downloading ${req%% *} with pip ..."
    "${PYTHON}" -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
        -r "${TMP}/${pkg}.txt" -d "${TMP}/${pkg}"
}

[[ "${need_lifetimes}" == 1 ]] && download lifetimes "${LIFETIMES_REQ}"
[[ "${need_recbole}" == 1 ]] && download recbole "${RECBOLE_REQ}"

wrote=()
for entry in "${FILES[@]}"; do
    IFS='|' read -r pkg member rel lines sha <<<"${entry}"
    out="${DEST}/${rel}"
    if have_file "${out}" "${lines}"; then
        echo "ok (already present): ${out} (${lines} lines)"
        continue
    fi
    mkdir -p "$(dirname "${out}")"
    tmp_out="$(dirname "${out}")/.$(basename "${out}").tmp.$$"
    # Extract one member from the (single) wheel of this package into tmp_out and verify it.
    "${PYTHON}" - "${TMP}/${pkg}" "${member}" "${tmp_out}" "${lines}" "${sha}" <<'PY'
import glob, hashlib, os, shutil, sys, zipfile
wheel_dir, member, out, lines, sha = sys.argv[1:]
wheels = glob.glob(os.path.join(wheel_dir, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected exactly one wheel in {wheel_dir}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
data = open(out, "rb").read()
n = data.count(b"\n")
digest = hashlib.sha256(data).hexdigest()
if n != int(lines) or digest != sha:
    os.remove(out)
    sys.exit(f"{member}: got {n} lines / sha256 {digest}, expected {lines} / {sha}")
PY
    if [[ "$(line_count "${tmp_out}")" != "${lines}" ]]; then
        rm -f "${tmp_out}"
        echo "error: ${out}: unexpected line count" >&2
        exit 1
    fi
    mv -f "${tmp_out}" "${out}"
    wrote+=("${out}")
    echo "wrote: ${out} (${lines} lines, $(wc -c < "${out}" | tr -d '[:space:]') bytes)"
done

echo
if [[ ${#wrote[@]} -eq 0 ]]; then
    echo "Nothing to do: all files already present under ${DEST}."
else
    echo "Wrote ${#wrote[@]} file(s) under ${DEST}."
fi
echo "Respect the licences above (MovieLens: GroupLens terms, cite Harper & Konstan 2015;"
echo "CDNOW: as distributed with lifetimes, Fader & Hardie)."
echo
echo "Next:"
echo "  encore import cdnow --src ${DEST}/cdnow/CDNOW_master.txt --out data/cdnow"
echo "  encore import movielens --src ${DEST}/movielens --out data/movielens"
