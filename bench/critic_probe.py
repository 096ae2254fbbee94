"""Does the latent critic memorise the real codes it trains on?  (diagnosis, issue 13.2)

A small training set lets a critic learn its real samples by heart; the generator is then pulled
towards those codes rather than towards the type's distribution. Karras et al. (2020, "Training
generative adversarial networks with limited data", NeurIPS) read this off the discriminator's
outputs on training reals, held-out reals and fakes:

    r_v = (E D(fit) - E D(val)) / (E D(fit) - E D(fake))

0 when held-out real cells score as real as the cells the critic trains on, 1 when they score as
fake as the generated ones. This probe trains one GARAGE model in-process (the default with
``--gan`` overrides) on the train cells of a GAT output and records, at every validation check of
the adversarial phase, the critic's mean output on fit codes, on the trainer's validation codes
(train cells held out from every phase) and on fakes for the validation cells' labels; the fit
cells are drawn to match the validation cells' labels and conditions one for one (a conditional
critic's per-type offset cancels in its loss and may drift, so unmatched samples would mix that
drift into the difference). Each is given to the critic as a critic step gives it: real codes
through the trainer's ``_real`` (posterior noise, if on), the path flag of each fake (also given to
its paired real cell), instance noise (averaged over draws), fakes from the generator being
trained (not the EMA copy the validation score uses). r_v is the ratio of the mean outputs over a
window of checks. The draws are taken with the trainer's random state saved and restored, so the
model trains exactly as it would without the probe.

Caveat: validation codes come from an encoder that never saw those cells, so part of
``D(fit) - D(val)`` can be the encoder placing unseen cells apart (the diagnosis rerun in
``fidelity_notes.md``); ``encoder_shift`` (kNN C2ST of the matched fit codes against the
validation codes, all types pooled) says whether there is such a shift, not how much of r_v it
explains.

Run:  python -m bench.critic_probe --seeds-from bench/_work/fidelity/DS/val/garage_s0/DS.seeds.h5ad \\
        [--gan '{"instance_noise": 0.2}'] [--seed 0] [--threads 1] --out bench/_work/critic/DS_NAME.json
      python -m bench.critic_probe --report bench/_work/critic/*.json --tag NAME
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ._common import RESULTS, machine, train_in_process

BLUR_DRAWS = 4  # instance-noise draws averaged per critic mean
MAX_CELLS = 2000  # validation cells (and as many fit cells) per check


def matched_fit_rows(labels, conds, fit_rows, val_rows, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation rows, fit rows) of equal length: one fit cell of the same label and condition drawn
    for every validation cell (at most MAX_CELLS of them, a random subset), so the two samples have
    the same type mix. A conditional critic's per-type offset cancels in its loss and can drift, so
    unmatched samples would carry that drift into D(fit) - D(val). Validation cells whose group has
    no fit cell are left out."""
    labels, conds = np.asarray(labels), np.asarray(conds)
    rng = np.random.default_rng(seed)
    val = np.asarray(val_rows)
    if len(val) > MAX_CELLS:
        val = np.sort(rng.choice(val, MAX_CELLS, replace=False))
    fit = np.asarray(fit_rows)
    groups: dict = {}
    for r in fit:
        groups.setdefault((labels[r], conds[r]), []).append(r)
    keep, pick = [], []
    for r in val:
        g = groups.get((labels[r], conds[r]))
        if g:
            keep.append(r)
            pick.append(g[rng.integers(len(g))])
    return np.asarray(keep, dtype=np.int64), np.asarray(pick, dtype=np.int64)


def critic_means(trainer, draws: int = BLUR_DRAWS) -> dict:
    """The critic's mean output on type-matched fit and validation codes and on fakes for the
    validation cells' labels, each as a critic step presents them: real codes through ``_real``
    (posterior noise, if on), fakes from the generator being trained, the path flag of each fake
    (given to the real cell paired with it, as in training), and instance noise averaged over
    *draws*. Draws from the trainer's random state, which the caller saves and restores."""
    import torch

    data, net = trainer.data, trainer.net
    labels = trainer._labels.cpu().numpy()
    conds = trainer._conds.cpu().numpy()
    val, fit = matched_fit_rows(labels, conds, data.fit_rows, data.val_rows, int(trainer.cfg.seed))
    v, f = torch.from_numpy(val), torch.from_numpy(fit)
    dv = v.to(trainer.device)
    types, cc = trainer._labels[dv], trainer._conds[dv]
    cond = cc if data.n_conds > 1 else None
    seeds: list = []
    fake = trainer._fake(types, cc, seeds_out=seeds)
    path = trainer._path(seeds)
    n = draws if trainer.cfg.instance_noise else 1

    def d(x):
        return float(np.mean([net.critic(trainer._blur(x), types, cond, path).mean().item() for _ in range(n)]))

    return {"d_fit": d(trainer._real(f)), "d_val": d(trainer._real(v)), "d_fake": d(fake), "n": int(len(val))}


def _probe_checks(records: list):
    """Patch ``Trainer._gan_val`` so every adversarial check also appends ``critic_means``."""
    import torch

    from garage.gan import _train

    orig = _train.Trainer._gan_val

    @torch.no_grad()
    def gan_val(self):
        score = orig(self)
        if len(self.data.val_rows) < 20 or self.cfg.effective_space != "latent":
            return score
        state = self.dgen.get_state()
        self.dgen.manual_seed(int(self.cfg.seed) + 104729)
        net = self.net
        g_was, c_was = net.generator.training, net.critic.training
        net.generator.eval()
        net.critic.eval()
        m = critic_means(self)
        net.generator.train(g_was)
        net.critic.train(c_was)
        self.dgen.set_state(state)
        records.append({"step": int(self.state.step), **m, "val_score": float(score)})
        return score

    _train.Trainer._gan_val = gan_val
    return orig


def encoder_shift(model, seed: int = 0) -> float:
    """kNN C2ST of type-matched fit cells' codes against the validation cells' codes, all types
    pooled (0.5: no shift). An AUC, not a critic output: it says whether unseen cells' codes sit
    apart, not how much of D(fit) - D(val) that explains."""
    from garage.evaluate._metrics import c2st_auc

    d = model.data
    labels = (d.labels if d.labels is not None else d.types).cpu().numpy()
    val, fit = matched_fit_rows(labels, d.conds.cpu().numpy(), d.fit_rows, d.val_rows, seed)
    codes = d.codes.detach().cpu().numpy()
    return float(c2st_auc(codes[fit], codes[val], seed=seed))


def r_v(d_fit: float, d_val: float, d_fake: float) -> float:
    """(D fit - D val) / (D fit - D fake), nan when the denominator is not positive (the critic
    does not rank fit cells above fakes, so the ratio has no meaning)."""
    den = d_fit - d_fake
    return (d_fit - d_val) / den if den > 1e-8 else float("nan")


def summarise(records: list) -> dict:
    """Over the last third of the checks (the generator the run ends with) and the middle third:
    the mean critic outputs, and r_v as the ratio of those means (Karras et al. define it from
    expectations; a per-check ratio would let one check with a small denominator dominate)."""
    third = max(1, len(records) // 3)
    out: dict = {"checks": len(records[-third:])}
    for name, part in (("", records[-third:]), ("_mid", records[third:2 * third] or records)):
        m = {k: float(np.mean([r[k] for r in part])) for k in ("d_fit", "d_val", "d_fake")}
        out.update({f"{k}{name}": v for k, v in m.items()})
        out[f"r_v{name}"] = r_v(m["d_fit"], m["d_val"], m["d_fake"])
        out[f"distance{name}"] = m["d_fit"] - m["d_fake"]
    return out


def run(args) -> dict:
    records: list = []
    gan = json.loads(args.gan)
    from garage.gan import _train

    orig = _probe_checks(records)
    try:
        _, model = train_in_process(Path(args.seeds_from), args.seed, args.threads, gan)
    finally:
        _train.Trainer._gan_val = orig
    doc = {"seeds_from": str(args.seeds_from), "seed": args.seed, "gan": gan, "machine": machine(),
           "n_fit": int(len(model.data.fit_rows)), "n_val": int(len(model.data.val_rows)),
           "encoder_shift": encoder_shift(model, args.seed), "checks": records,
           "summary": summarise(records)}
    return doc


def report(paths: list[Path], tag: str) -> Path:
    rows = []
    for p in sorted(paths):
        doc = json.loads(p.read_text())
        s = summarise(doc["checks"])
        ds = Path(doc["seeds_from"]).name.split(".")[0]
        rows.append(f"| {ds} | {json.dumps(doc['gan']) if doc['gan'] else 'default'} | {doc['seed']} | "
                    f"{doc['n_fit']} / {doc['n_val']} | {doc['encoder_shift']:.3f} | {s['r_v_mid']:.2f} | "
                    f"{s['r_v']:.2f} | {s['d_fit']:.3f} / {s['d_val']:.3f} / {s['d_fake']:.3f} | {s['distance']:.3f} | `{p.name}` |")
    lines = [f"# Critic overfitting probe ({tag})", "",
             "Command: `python -m bench.critic_probe --report " + " ".join(str(p) for p in sorted(paths)) + f" --tag {tag}`",
             "", "r_v = (D(fit) − D(val)) / (D(fit) − D(fake)) (Karras et al. 2020): 0 = held-out real codes score "
             "like the fit codes, 1 = like the fakes. r_v from the critic's mean outputs over the middle and the last third of the adversarial phase's "
             "checks; fit cells drawn type-matched to the validation cells. `encoder_shift` = kNN C2ST of those fit "
             "against the validation codes (0.5: none).", "",
             "| dataset | GAN options | seed | fit / val cells | encoder_shift | r_v middle third | r_v last third | "
             "D fit / val / fake (end) | D fit − D fake (end) | json |", "|---|---|---|---|---|---|---|---|---|---|", *rows, ""]
    out = RESULTS / f"critic_probe_{tag}.md"
    out.write_text("\n".join(lines))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds-from")
    ap.add_argument("--gan", default="{}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    ap.add_argument("--report", nargs="+", type=Path)
    ap.add_argument("--tag", default="probe")
    args = ap.parse_args(argv)
    if args.report:
        print(report(args.report, args.tag))
        return
    if not args.seeds_from or not args.out:
        ap.error("--seeds-from and --out are required (or --report)")
    doc = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    s = doc["summary"]
    print(f"r_v {s['r_v']:.3f} (D fit {s['d_fit']:.3f}, val {s['d_val']:.3f}, fake {s['d_fake']:.3f}); "
          f"encoder shift {doc['encoder_shift']:.3f}")


if __name__ == "__main__":
    main()
