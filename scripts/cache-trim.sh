#!/usr/bin/env bash
# Keeps the build caches under the cache directory bounded, so that runs of `make test` on
# one machine (CI reuses the cache between fresh clones) never fill its disk. On
# 2026-12-03 the cache grew to 48 GiB in a day and a CI run died with ENOSPC.
#
#   scripts/cache-trim.sh CACHE_DIR
#
# 1. Cargo target directories (those with a CACHEDIR.TAG) lose `incremental/` (the
#    Makefile builds with CARGO_INCREMENTAL=0) and every artifact no build has read for
#    CACHE_STALE_DAYS days (default 3): test binaries and dependencies of older commits.
#    Cargo rebuilds a unit whose output is missing, so this costs time, never correctness.
#    Ages are access times; the root file system is mounted relatime, which updates them
#    at least daily.
# 2. If the cache is still over CACHE_CAP_GIB (default 40) or the disk has less than
#    CACHE_MIN_FREE_GIB free (default 15), whole build directories go, largest first,
#    until both hold. Downloaded tools and the Go module cache stay: they are small and
#    slow to fetch again.
set -euo pipefail

cache=${1:?usage: cache-trim.sh CACHE_DIR}
stale_days=${CACHE_STALE_DAYS:-3}
cap_gib=${CACHE_CAP_GIB:-40}
min_free_gib=${CACHE_MIN_FREE_GIB:-15}

[[ -d $cache ]] || exit 0

size_gib() { du -s --block-size=1G "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
free_gib() { df --output=avail --block-size=1G "$cache" | tail -1 | tr -d ' '; }
within_bounds() { (($(size_gib "$cache") <= cap_gib && $(free_gib) >= min_free_gib)); }

before=$(size_gib "$cache")
mapfile -t targets < <(find "$cache" -maxdepth 2 -name CACHEDIR.TAG -printf '%h\n')
for target in "${targets[@]}"; do
	find "$target" -type d -name incremental -prune -exec rm -rf {} +
	find "$target" -type f -atime "+$stale_days" \
		\( -path '*/deps/*' -o -path '*/build/*' -o -path '*/examples/*' \) -delete
done

# Build directories that can go whole: cargo targets and Go's build cache.
mapfile -t wipeable < <({
	printf '%s\n' "${targets[@]}"
	[[ -d $cache/go/build ]] && echo "$cache/go/build"
} | while read -r dir; do [[ -n $dir ]] && echo "$(size_gib "$dir") $dir"; done | sort -rn | cut -d' ' -f2-)
for dir in "${wipeable[@]}"; do
	within_bounds && break
	echo "cache-trim: removing $dir ($(size_gib "$dir") GiB): cache over ${cap_gib} GiB or under ${min_free_gib} GiB free" >&2
	rm -rf "$dir"
done

after=$(size_gib "$cache")
echo "cache-trim: $cache ${before} -> ${after} GiB, $(free_gib) GiB free on its disk"
if (($(free_gib) < min_free_gib)); then
	echo "cache-trim: warning: only $(free_gib) GiB free after trimming the cache; a cold build needs ~${min_free_gib}" >&2
fi
