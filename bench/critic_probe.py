"""Does the latent critic memorise the real codes it trains on?  (diagnosis, issue 13.2)

A small training set lets a critic learn its real samples by heart; the generator is then pulled
towards those codes rather than towards the type's distribution. Karras et al. (2020, "Training
generative adversarial networks with limited data", NeurIPS) read this off the discriminator's
outputs on training reals, held-out reals and fakes:

    r_v = (E D(fit) - E D(val)) / (E D(fit) - E D(fake))

0 when held-out real cells score as real as the cells the critic trains on, 1 when they score as
fake as the generated ones. This probe trains one GARAGE model in-process (the default with
``--gan`` overrides) on the train cells of a GAT output and records, at every validation check of
the adversarial phase, the critic's mean output on an equal-sized sample of fit codes, on the
trainer's validation codes (train cells held out from every phase), and on fakes for the
validation cells' types, each through the critic as training presents it (with ``instance_noise``
the blurred codes, averaged over draws). The draws are taken with the trainer's random state saved
and restored, so the model trains exactly as it would without the probe.

Caveat: validation codes come from an encoder that never saw those cells, so part of
``D(fit) - D(val)`` can be the encoder placing unseen cells apart (the diagnosis rerun in
``fidelity_notes.md``); ``encoder_shift`` (kNN C2ST of fit against validation codes, per type
pooled) reports that shift next to r_v.

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


def _probe_checks(records: list):
    """Patch ``Trainer._gan_val`` so every adversarial check also appends the critic's means."""
    import torch

    from garage.gan import _train

    orig = _train.Trainer._gan_val

    @torch.no_grad()
    def gan_val(self):
        score = orig(self)
        data, net = self.data, self.net
        if len(data.val_rows) < 20 or self.cfg.effective_space != "latent":
            return score
        state = self.dgen.get_state()
        self.dgen.manual_seed(int(self.cfg.seed) + 104729)
        val = torch.from_numpy(np.asarray(data.val_rows[:MAX_CELLS])).to(self.device)
        pick = torch.randperm(len(data.fit_rows), generator=torch.Generator().manual_seed(7))[: len(val)]
        fit = torch.from_numpy(np.asarray(data.fit_rows)[pick.numpy()]).to(self.device)
        cond = (lambda rows: self._conds[rows]) if data.n_conds > 1 else (lambda rows: None)
        g_was, c_was = net.generator.training, net.critic.training
        net.generator.eval()
        net.critic.eval()
        fake = self._fake(self._labels[val], self._conds[val])
        draws = BLUR_DRAWS if self.cfg.instance_noise else 1

        def d(x, rows):
            return float(np.mean([net.critic(self._blur(x), self._labels[rows], cond(rows)).mean().item()
                                  for _ in range(draws)]))

        d_fit, d_val, d_fake = d(data.codes[fit], fit), d(data.codes[val], val), d(fake, val)
        net.generator.train(g_was)
        net.critic.train(c_was)
        self.dgen.set_state(state)
        den = d_fit - d_fake
        records.append({"step": int(self.state.step), "d_fit": d_fit, "d_val": d_val, "d_fake": d_fake,
                        "r_v": (d_fit - d_val) / den if abs(den) > 1e-8 else float("nan"),
                        "val_score": float(score)})
        return score

    _train.Trainer._gan_val = gan_val
    return orig


def encoder_shift(model, seed: int = 0) -> float:
    """kNN C2ST of the fit cells' codes against the validation cells' codes (0.5: no shift)."""
    from garage.evaluate._metrics import c2st_auc

    codes = model.data.codes.detach().cpu().numpy()
    v = np.asarray(model.data.val_rows)
    rng = np.random.default_rng(seed)
    f = rng.permutation(np.asarray(model.data.fit_rows))[: len(v)]
    return float(c2st_auc(codes[f], codes[v], seed=seed))


def summarise(records: list) -> dict:
    """Means over the last third of the checks (the generator the run ends with), and r_v over the
    middle third (``r_v_mid``: is memorisation growing?)."""
    third = max(1, len(records) // 3)
    tail, mid = records[-third:], records[third:2 * third] or records
    keys = ("d_fit", "d_val", "d_fake", "r_v")
    return ({k: float(np.nanmean([r[k] for r in tail])) for k in keys}
            | {"r_v_mid": float(np.nanmean([r["r_v"] for r in mid])), "checks": len(tail)})


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
                    f"{s['r_v']:.2f} | {s['d_fit']:.3f} / {s['d_val']:.3f} / {s['d_fake']:.3f} | `{p.name}` |")
    lines = [f"# Critic overfitting probe ({tag})", "",
             "Command: `python -m bench.critic_probe --report " + " ".join(str(p) for p in sorted(paths)) + f" --tag {tag}`",
             "", "r_v = (D(fit) − D(val)) / (D(fit) − D(fake)) (Karras et al. 2020): 0 = held-out real codes score "
             "like the fit codes, 1 = like the fakes. Means over the middle and the last third of the adversarial phase's checks; `encoder_shift` = kNN "
             "C2ST of fit against validation codes (0.5: none). D means: fit / val / fake.", "",
             "| dataset | GAN options | seed | fit / val cells | encoder_shift | r_v middle third | r_v last third | "
             "D fit / val / fake (end) | json |", "|---|---|---|---|---|---|---|---|---|", *rows, ""]
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
