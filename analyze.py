"""Analyse a finished (or half-finished) run, a whole sweep, or one checkpoint.

    python analyze.py multirun/2026-11-22/10-31-07-512004                 # a sweep
    python analyze.py multirun/2026-11-22/10-31-07-512004/hidden=64,weight_decay=0.1   # one job
    python analyze.py outputs/2026-11-22/10-31-07-512004/checkpoints/last.ckpt          # one checkpoint
    python analyze.py --construct gromov --neurons 64,128,256,512 --p 97                # hand-built networks
    python analyze.py --tiny --seed 0    # the background article's tiny networks: tiny/tiny.csv, tiny.json, tiny_*.png

Writes to <path>/analysis/ (beside a checkpoint or model file; or --out): per job analysis.json, neurons.csv and the figures of
the Bussmann post (cosine fits, phase-sum rule, replacement by fits, random cosine networks,
frequency ablation, activations, weight similarity, t-SNE/k-means); for the whole,
summary.csv (one row per job, with its status) and report.html (one self-contained page).

--construct cosine|gromov builds networks instead (Bussmann's random cosine neurons for ReLU,
Gromov's analytic solution for x^2), prints their accuracy over all p*p pairs against the width
N and writes construction.csv, accuracy_vs_neurons.png and one model_N<n>.pt per N (analysable
with analyze.py, trainable with train.py init=...) to --out (default constructions/<name>_p<p>).
"""

import argparse
import sys

from modadd.config import ACTIVATIONS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", help="a sweep dir, a job dir, or a .ckpt / model .pt file")
    parser.add_argument("--construct", choices=("cosine", "gromov"), help="build networks instead of reading a run")
    parser.add_argument("--tiny", action="store_true", help="the background article's tiny networks instead (to --out, default tiny/)")
    parser.add_argument("--p", type=int, help="modulus of --construct (default 113)")
    parser.add_argument("--activation", choices=ACTIVATIONS, help="activation of --construct (default: the construction's own)")
    parser.add_argument("--out", help="output dir (default: <path>/analysis; with --tiny: tiny/)")
    parser.add_argument("--orders", type=int, default=5, help="random neuron orders per replaced fraction (default 5)")
    parser.add_argument("--draws", type=int, default=5, help="random cosine networks per size (default 5)")
    parser.add_argument("--neurons", default="16,32,64,128,256,512", help="random cosine / --construct network sizes (default 16,...,512)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random orders and draws, or of --tiny's training (default 0)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: min(2, cores))")
    args = parser.parse_args()
    if [args.path is not None, args.construct is not None, args.tiny].count(True) != 1:
        parser.error("give either a path to analyse or --construct or --tiny (one of them)")
    if args.path is not None and (args.p is not None or args.activation is not None):
        parser.error("--p and --activation go with --construct (a run's own p and activation are used)")
    if args.tiny and (args.p is not None or args.activation is not None):
        parser.error("--p and --activation go with --construct (the tiny networks have their own)")
    if args.p is not None and args.p < 2:
        parser.error(f"--p={args.p} is invalid: must be an integer >= 2")
    for name in ("orders", "draws"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)} is invalid: must be an integer >= 1")
    try:
        neurons = [int(n) for n in args.neurons.split(",")]
        assert all(n >= 1 for n in neurons)
    except (ValueError, AssertionError):
        parser.error(f"--neurons={args.neurons} is invalid: must be a comma-separated list of integers >= 1")

    from modadd.files import WriteError

    if args.tiny:
        from modadd import tiny  # after the argument checks, as the heavy imports below

        try:
            rows = tiny.write_tiny(args.out or "tiny", args.seed)
        except WriteError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print("\n".join(tiny.table(rows)))
        print(f"wrote tiny.csv, tiny.json and tiny_*.png to {args.out or 'tiny'}")
        return 0

    from modadd.analysis import Settings, analyze, analyze_construction  # heavy imports after the argument checks
    from modadd.runs import RunError

    settings = Settings(orders=args.orders, neurons=neurons, draws=args.draws, seed=args.seed)
    if args.workers is not None:
        settings.workers = max(1, args.workers)
    try:
        if args.construct:
            p = args.p or 113
            analyze_construction(args.construct, p, args.out or f"constructions/{args.construct}_p{p}", settings, args.activation)
        else:
            analyze(args.path, args.out, settings)
    except (RunError, WriteError) as err:  # nothing to analyse; an output that cannot be written
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
