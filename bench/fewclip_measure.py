"""Few-frame sigma clipping: own MAD scale only (engine revision 2) vs the row-pooled floor.

Runs :func:`utils.stack.combine.combine` (``method="sigclip"``, defaults: 4 sigma, 5
iterations, guard, min_accepted 3) with ``pooled_floor`` False and True on 200x200 frames of
sigma 30 adu: pure Gaussian; with 10 % hot pixels (4x the noise); with cosmic rays (0.1 % of
the samples, half +50 sigma, half +500 sigma).  Prints the table of /work/notes/fewclip.md.
Run: ``PYTHONPATH=$PWD python bench/fewclip_measure.py``.
"""
import numpy as np

from utils.stack.combine import combine
from utils.stack.error_factor import clipped_error_factor

SIG, NY, NX = 30.0, 200, 200


def run(frames, pooled):
    return combine([f.astype(np.float32) for f in frames], method="sigclip",
                   pooled_floor=pooled, workers=1)


def main():
    print("n rule  | gauss clip% mask% | hot clip% mask% | CR50 rej% CR500 rej% "
          "| bias/sig_m err_ratio cef")
    for n in (3, 4, 5, 6, 8, 10, 20):
        rng = np.random.default_rng(100 + n)
        sig = np.full((NY, NX), SIG)
        hot = rng.random((NY, NX)) < 0.10
        sig[hot] *= 4
        hotf = [1000 + sig * rng.standard_normal((NY, NX)) for _ in range(n)]
        g = [1000 + SIG * rng.standard_normal((NY, NX)) for _ in range(n)]
        cr = [f.copy() for f in g]
        hits = np.stack([rng.random((NY, NX)) < 0.001 for _ in range(n)])
        amp = np.stack([np.where(rng.random((NY, NX)) < 0.5, 50, 500) for _ in range(n)])
        for f, m, a in zip(cr, hits, amp):
            f[m] += a[m] * SIG
        single = hits.sum(axis=0) == 1
        for pooled in (False, True):
            r = run(g, pooled)
            ok = r.flags == 0
            clip, mask = np.mean(r.count < n), np.mean(~ok)
            dev = (r.data[ok] - 1000).astype(np.float64)
            bias = dev.mean() / (SIG / np.sqrt(n))
            # as clipped_error_factor: std(master) / rms(reported stderr), kept pixels
            ratio = dev.std() / np.sqrt(np.mean(r.stderr[ok].astype(np.float64) ** 2))
            h = run(hotf, pooled)
            hclip, hmask = np.mean(h.count[hot] < n), np.mean(h.flags[hot] != 0)
            c = run(cr, pooled)
            rej = {}
            for big in (50, 500):  # rejected: the master within 10 of its sigmas of the truth
                sel = single & (hits & (amp == big)).any(axis=0)
                rej[big] = np.mean(np.abs(c.data[sel] - 1000) < 10 * SIG / np.sqrt(n))
            cef = clipped_error_factor(n)
            name = "pool" if pooled else "own"
            print(f"{n:2d} {name:5s} | {100 * clip:6.2f} {100 * mask:6.2f} | {100 * hclip:6.2f} "
                  f"{100 * hmask:6.2f} | {100 * rej[50]:6.2f} {100 * rej[500]:6.2f} | "
                  f"{bias:+.4f} {ratio:.4f} {cef:.4f}", flush=True)


if __name__ == "__main__":
    main()
