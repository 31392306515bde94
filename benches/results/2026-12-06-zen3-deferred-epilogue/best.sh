#!/usr/bin/env bash
# best.sh N BIN... : runs each kernel-bench binary (target/release/deps/kernels-<hash>) N
# times alternating and prints, per shape and whole-model step, the
# fastest figure of each binary over all runs (the last binary against the first).
n=$1; shift
out=$(mktemp -d)
for r in $(seq $n); do for b in "$@"; do
  "$b" --bench --noplot nomatch_xyz 2>&1 | grep -E " (16|64|512) |prefill 512|decode, batch 16|Q4 step" >> "$out/$(basename $b)"
done; done
python3 - "$out" "$@" <<'PY'
import sys, os, re, collections
d = sys.argv[1]; bins = [os.path.basename(b) for b in sys.argv[2:]]
best = collections.OrderedDict()
for b in bins:
    for line in open(os.path.join(d, b)):
        f = line.split()
        if line.startswith('q'):
            key = f[0] + ' m=' + f[1]; val = float(f[5].rstrip('µs'))  # fastest µs
        elif 'ms/step' in line:
            key = ' '.join(f[:5]); val = float(re.search(r'fastest ([0-9.]+)', line).group(1))
        else:
            key = 'peak Q4 step'; val = -float(re.search(r'fastest ([0-9.]+)', line).group(1))
        best.setdefault(key, {}); best[key][b] = min(best[key].get(b, 1e18), val)
print('%-44s' % 'case (fastest; peak as -GMAC/s)' + ''.join('%14s' % b for b in bins) + '   ratio')
for k, v in best.items():
    vals = [v.get(b, float('nan')) for b in bins]
    print('%-44s' % k + ''.join('%14.1f' % x for x in vals) + '   %.3f' % (vals[-1] / vals[0]))
PY
