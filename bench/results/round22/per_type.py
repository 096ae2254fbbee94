# Per-type C2ST and spread (÷ its control) of GARAGE against scVI, mean over seeds, from the
# evaluate/eval.per_type.tsv files under bench/_work/fidelity (round 22 of the notes; read only).
# Run: .venv/bin/python bench/results/round22/per_type.py > bench/results/round22/per_type.txt
import pandas as pd
from pathlib import Path
base=str(Path(__file__).resolve().parents[2] / '_work' / 'fidelity')
def load(ds,split,m,seeds):
    fr=[]
    for s in seeds:
        try: fr.append(pd.read_csv(f'{base}/{ds}/{split}/{m}_s{s}/evaluate/eval.per_type.tsv',sep='\t',index_col=0))
        except FileNotFoundError: pass
    return fr
for ds,split,seeds,ms in [('baron_mouse','test',[0,1,2],['garage','garage_ts4','scvi']),('mouse_bladder','test',[0,1,2],['garage','garage_ts4','scvi']),
                          ('baron_mouse','val',[13,14],['garage_lr2','scvi']),('pbmc3k','val',[13,14,15],['garage_lr2','scvi']),
                          ('kang_ifnb','val',[13,14],['garage_lr2','scvi']),('sc_mixology','val',[13,14],['garage_lr2','scvi'])]:
    out={}
    for m in ms:
        fr=load(ds,split,m,seeds)
        if not fr: continue
        out['n']=fr[0]['n_real_holdout']; out['control']=fr[0]['c2st_control']
        cat=pd.concat(fr); g=cat.groupby(level=0)
        out[f'{m} ({len(fr)})']=g['c2st'].mean(); out[f'{m} spread']=(cat['spread_ratio']/cat['spread_ratio_control']).groupby(level=0).mean()
    d=pd.DataFrame(out).sort_values('n',ascending=False)
    print(f'\n{ds} {split} seeds {seeds}'); print(d[d.n>=20].round(3).to_string())

# across every type with >= 20 holdout cells of the six tables: the GARAGE - scVI per-type C2ST
# against (a) the GARAGE - scVI difference in spread ratio (each ÷ its control) and (b) GARAGE's own
# spread ratio ÷ control; Spearman over all types and within each table
import numpy as np
from scipy.stats import spearmanr
xs, gs, ys = [], [], []
for ds,split,seeds,g in [('baron_mouse','test',[0,1,2],'garage'),('mouse_bladder','test',[0,1,2],'garage'),('baron_mouse','val',[13,14],'garage_lr2'),('pbmc3k','val',[13,14,15],'garage_lr2'),('kang_ifnb','val',[13,14],'garage_lr2'),('sc_mixology','val',[13,14],'garage_lr2')]:
    a=pd.concat(load(ds,split,g,seeds)); b=pd.concat(load(ds,split,'scvi',seeds))
    sa=(a['spread_ratio']/a['spread_ratio_control']).groupby(level=0).mean(); ca=a['c2st'].groupby(level=0).mean(); cb=b['c2st'].groupby(level=0).mean()
    sb=(b['spread_ratio']/b['spread_ratio_control']).groupby(level=0).mean()
    n=a['n_real_holdout'].groupby(level=0).first(); keep=n[n>=20].index
    d=(ca-cb)[keep]
    print(f'{ds} {split}: rho(spread difference, C2ST difference) {spearmanr((sa-sb)[keep], d)[0]:+.2f}; '
          f'rho(GARAGE spread, C2ST difference) {spearmanr(sa[keep], d)[0]:+.2f}')
    xs+=list((sa-sb)[keep]); gs+=list(sa[keep]); ys+=list(d)
print('all', len(xs), 'types: spread difference', spearmanr(xs, ys))
print('all', len(xs), 'types: GARAGE spread', spearmanr(gs, ys))
