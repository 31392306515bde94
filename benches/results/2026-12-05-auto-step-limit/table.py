import json,glob,sys
def pct(s,p):
    return next(x['value'] for x in s['percentiles'] if x['p']==p)
for d in sys.argv[1:]:
  for f in sorted(glob.glob(d+'/*.json')):
    j=json.load(open(f))
    for l in j['levels']:
        s=l['summary']
        print(f"{'/'.join(f.split('/')[-2:]):<28} {s['load']:<5} tok/s {s['output_throughput']:7.1f} TTFT p50 {pct(s['ttft_ms'],50):7.0f} p99 {pct(s['ttft_ms'],99):7.0f}  ITL p50 {pct(s['itl_ms'],50):6.1f} p99 {pct(s['itl_ms'],99):6.1f}")
