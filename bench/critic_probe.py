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
explains. ``--critic-holdout F`` measures that: a share F of every type's fit cells never enters
the adversarial phase's real batches (they stay in everything else: the autoencoder, the
standardisation, the library model), so the critic has not seen them while the encoder has, and
r_v splits into the critic's memory (fit against held) and the encoder's shift (held against
validation). With it the model trains on fewer real codes, so it is not the default model.

Run:  python -m bench.critic_probe --seeds-from bench/_work/fidelity/DS/val/garage_s0/DS.seeds.h5ad \\
        [--gan '{"instance_noise": 0.2}'] [--seed 0] [--threads 1] [--critic-holdout 0.1] \\
        --out bench/_work/critic/DS_NAME.json
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


def matched_rows(labels, conds, pools: list, val_rows, seed: int) -> tuple[np.ndarray, list]:
    """(validation rows, [rows of each pool]) of equal length: for every validation cell (at most
    MAX_CELLS of them, a random subset) one cell of the same label and condition drawn from each
    pool, so all samples have the same type mix. A conditional critic's per-type offset cancels in
    its loss and can drift, so unmatched samples would carry that drift into their difference.
    Validation cells whose group is missing from a pool are left out."""
    labels, conds = np.asarray(labels), np.asarray(conds)
    rng = np.random.default_rng(seed)
    val = np.asarray(val_rows)
    if len(val) > MAX_CELLS:
        val = np.sort(rng.choice(val, MAX_CELLS, replace=False))
    groups = []
    for pool in pools:
        g: dict = {}
        for r in np.asarray(pool):
            g.setdefault((labels[r], conds[r]), []).append(r)
        groups.append(g)
    keep, picks = [], [[] for _ in pools]
    for r in val:
        key = (labels[r], conds[r])
        if all(g.get(key) for g in groups):
            keep.append(r)
            for pick, g in zip(picks, groups):
                pick.append(g[key][rng.integers(len(g[key]))])
    return np.asarray(keep, dtype=np.int64), [np.asarray(p, dtype=np.int64) for p in picks]


def matched_fit_rows(labels, conds, fit_rows, val_rows, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``matched_rows`` with one pool: (validation rows, type-matched fit rows)."""
    val, (fit,) = matched_rows(labels, conds, [fit_rows], val_rows, seed)
    return val, fit


def critic_holdout_rows(labels, conds, fit_rows, fraction: float, seed: int) -> np.ndarray:
    """A share *fraction* of every label x condition group's fit cells (rounded down), kept out of
    the adversarial phase's real batches by ``--critic-holdout``: cells the encoder trained on but
    the critic never saw."""
    labels, conds = np.asarray(labels), np.asarray(conds)
    rng = np.random.default_rng(seed + 31)
    fit = np.asarray(fit_rows)
    out = []
    for key in sorted({(labels[r], conds[r]) for r in fit}):
        rows = fit[(labels[fit] == key[0]) & (conds[fit] == key[1])]
        k = int(len(rows) * fraction)
        if k:
            out.append(rng.choice(rows, k, replace=False))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def critic_means(trainer, draws: int = BLUR_DRAWS, held=None) -> dict:
    """The critic's mean output on type-matched fit and validation codes (and, with *held*, the
    fit cells kept out of the adversarial phase) and on fakes for the validation cells' labels,
    each as a critic step presents them: real codes through ``_real`` (posterior noise, if on),
    fakes from the generator being trained, the path flag of each fake (given to the real cell
    paired with it, as in training), and instance noise averaged over *draws*. Draws from the
    trainer's random state, which the caller saves and restores."""
    import torch

    data, net = trainer.data, trainer.net
    if getattr(net.critic, "pack", 1) > 1:  # it scores packs of one label, not single cells
        raise SystemExit("bench.critic_probe: the critic judges packs (--critic-pack > 1), not single cells; "
                         "probe a run without --critic-pack")
    if getattr(trainer, "_depth", None) is not None:  # the critic also takes a depth, which the probe does not give
        raise SystemExit("bench.critic_probe: not for --library depth models (the critic also takes a depth)")
    labels = trainer._labels.cpu().numpy()
    conds = trainer._conds.cpu().numpy()
    fit_rows = np.asarray(data.fit_rows)
    pools = [fit_rows] if held is None else [np.setdiff1d(fit_rows, held), held]
    val, picks = matched_rows(labels, conds, pools, data.val_rows, int(trainer.cfg.seed))
    v = torch.from_numpy(val)
    dv = v.to(trainer.device)
    types, cc = trainer._labels[dv], trainer._conds[dv]
    cond = cc if data.n_conds > 1 else None
    seeds: list = []
    fake = trainer._fake(types, cc, seeds_out=seeds)
    path = trainer._path(seeds)
    n = draws if trainer.cfg.instance_noise else 1

    def d(x):
        return float(np.mean([net.critic(trainer._blur(x), types, cond, path).mean().item() for _ in range(n)]))

    out = {"d_fit": d(trainer._real(torch.from_numpy(picks[0]))), "d_val": d(trainer._real(v)), "d_fake": d(fake),
           "n": int(len(val))}
    if held is not None:
        out["d_held"] = d(trainer._real(torch.from_numpy(picks[1])))
    return out


def _probe_checks(records: list, held_fraction: float = 0.0):
    """Patch ``Trainer._gan_val`` so every adversarial check also appends ``critic_means``; with
    *held_fraction*, also ``Trainer._balanced_batch`` so the adversarial phase's real batches never
    draw the held-out fit cells (``critic_holdout_rows``; this changes the training). Returns the
    originals, to put back."""
    import torch

    from garage.gan import _train

    orig = _train.Trainer._gan_val
    orig_batch = _train.Trainer._balanced_batch
    held_of: dict = {}

    def held(self):
        if "rows" not in held_of:
            held_of["rows"] = critic_holdout_rows(self._labels.cpu().numpy(), self._conds.cpu().numpy(),
                                                  self.data.fit_rows, held_fraction, int(self.cfg.seed))
        return held_of["rows"]

    def balanced_batch(self, balance):
        if balance <= 0:
            raise SystemExit("--critic-holdout needs type_balance > 0 (the probe filters the weighted draw)")
        if not hasattr(self, "_w"):
            orig_batch(self, balance)  # sets self._w, self._rows over all fit rows
            keep = ~torch.from_numpy(np.isin(self._rows.numpy(), held(self)))
            self._w, self._rows = self._w[keep], self._rows[keep]
        return orig_batch(self, balance)

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
        m = critic_means(self, held=held(self) if held_fraction else None)
        net.generator.train(g_was)
        net.critic.train(c_was)
        self.dgen.set_state(state)
        records.append({"step": int(self.state.step), **m, "val_score": float(score)})
        return score

    _train.Trainer._gan_val = gan_val
    if held_fraction:
        _train.Trainer._balanced_batch = balanced_batch
    return orig, orig_batch


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
    expectations; a per-check ratio would let one check with a small denominator dominate). With
    critic-held-out cells, r_v splits into ``r_mem`` = (D fit - D held) / (D fit - D fake), the
    critic's memory of the cells it trained on, and ``r_enc`` = (D held - D val) / (D fit - D
    fake), the shift between codes of cells the encoder trained on and unseen cells."""
    third = max(1, len(records) // 3)
    out: dict = {"checks": len(records[-third:])}
    for name, part in (("", records[-third:]), ("_mid", records[third:2 * third] or records)):
        keys = ("d_fit", "d_val", "d_fake") + (("d_held",) if all("d_held" in r for r in part) else ())
        m = {k: float(np.mean([r[k] for r in part])) for k in keys}
        out.update({f"{k}{name}": v for k, v in m.items()})
        out[f"r_v{name}"] = r_v(m["d_fit"], m["d_val"], m["d_fake"])
        out[f"distance{name}"] = m["d_fit"] - m["d_fake"]
        if "d_held" in m:
            out[f"r_mem{name}"] = r_v(m["d_fit"], m["d_held"], m["d_fake"])
            out[f"r_enc{name}"] = out[f"r_v{name}"] - out[f"r_mem{name}"]  # (D held - D val) / (D fit - D fake)
    return out


def run(args) -> dict:
    records: list = []
    gan = json.loads(args.gan)
    if int(gan.get("critic_pack") or 1) > 1:  # refused before any training (critic_means refuses it too)
        raise SystemExit("bench.critic_probe: the critic judges packs (--critic-pack > 1), not single cells; "
                         "probe a run without --critic-pack")
    if gan.get("library") == "depth":  # the critic takes a depth beside each code, which the probe does not give
        raise SystemExit("bench.critic_probe: not for --library depth models (the critic also takes a depth)")
    from garage.gan import _train

    orig, orig_batch = _probe_checks(records, args.critic_holdout)
    try:
        _, model = train_in_process(Path(args.seeds_from), args.seed, args.threads, gan)
    finally:
        _train.Trainer._gan_val, _train.Trainer._balanced_batch = orig, orig_batch
    doc = {"seeds_from": str(args.seeds_from), "seed": args.seed, "gan": gan, "machine": machine(),
           "critic_holdout": args.critic_holdout,
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
        split = (f"{s['r_mem']:.2f} / {s['r_enc']:.2f} ({doc['critic_holdout']:.0%} held)" if "r_mem" in s
                 else "–")
        rows.append(f"| {ds} | {json.dumps(doc['gan']) if doc['gan'] else 'default'} | {doc['seed']} | "
                    f"{doc['n_fit']} / {doc['n_val']} | {doc['encoder_shift']:.3f} | {s['r_v_mid']:.2f} | "
                    f"{s['r_v']:.2f} | {split} | {s['d_fit']:.3f} / {s['d_val']:.3f} / {s['d_fake']:.3f} | "
                    f"{s['distance']:.3f} | `{p.name}` |")
    lines = [f"# Critic overfitting probe ({tag})", "",
             "Command: `python -m bench.critic_probe --report " + " ".join(str(p) for p in sorted(paths)) + f" --tag {tag}`",
             "", "r_v = (D(fit) − D(val)) / (D(fit) − D(fake)) (Karras et al. 2020): 0 = held-out real codes score "
             "like the fit codes, 1 = like the fakes. r_v from the critic's mean outputs over the middle and the last third of the adversarial phase's "
             "checks; fit cells drawn type-matched to the validation cells. `encoder_shift` = kNN C2ST of those fit "
             "against the validation codes (0.5: none). With `--critic-holdout F`, a share F of every type's fit cells "
             "is kept out of the adversarial phase's real batches (the encoder trained on them, the critic never saw "
             "them) and r_v splits into r_mem = (D fit − D held) / (D fit − D fake), the critic's memory, and r_enc = "
             "(D held − D val) / (D fit − D fake), the encoder's shift between seen and unseen cells.", "",
             "| dataset | GAN options | seed | fit / val cells | encoder_shift | r_v middle third | r_v last third | "
             "r_mem / r_enc (last third) | D fit / val / fake (last third) | D fit − D fake (last third) | json |",
             "|---|---|---|---|---|---|---|---|---|---|---|", *rows, ""]
    out = RESULTS / f"critic_probe_{tag}.md"
    out.write_text("\n".join(lines))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds-from")
    ap.add_argument("--gan", default="{}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--critic-holdout", type=float, default=0.0, metavar="F",
                    help="keep a share F of every type's fit cells out of the adversarial phase (changes the "
                         "training) to split r_v into the critic's memory and the encoder's shift")
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
