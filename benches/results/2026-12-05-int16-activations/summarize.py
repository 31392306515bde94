import re,statistics,sys
cur=None; res={}
for line in open(sys.argv[1]):
    m=re.match(r'== round (\d) activations (\S+)',line)
    if m: cur=m.group(2); idx=0; continue
    if '%' in line: continue
    m=re.search(r'thrpt:\s+\[([\d.]+)\s+(K?)elem/s\s+([\d.]+)\s+(K?)elem/s',line)
    if m:
        v=float(m.group(3))*(1000 if m.group(4)=='K' else 1)
        res.setdefault((cur,idx),[]).append(v); idx+=1
names=['prefill_512','decode_b1','decode_b16']
for i,n in enumerate(names):
    med={a:statistics.median(res[(a,i)]) for a in ['int8','int16','f32'] if (a,i) in res}
    print(n, {a:[round(x) for x in res[(a,i)]] for a in med}, {a:round(med[a]) for a in med}, 'int16/int8 %.2f f32/int8 %.2f'%(med['int16']/med['int8'],med['f32']/med['int8']) if len(med)==3 else '')
