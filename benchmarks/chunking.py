"""What chunked long-form extraction costs a model with whole-utterance context.

    python benchmarks/chunking.py --model exp/demo/train            # the demo model (tcn, gLN)
    python benchmarks/chunking.py --model DIR --seconds 40 --mixtures 6 --chunks 1 2 4 8

Builds ``--mixtures`` long two-talker mixtures (0 dB) from the synthetic corpus' voices and
cartoon faces (speakers not in the demo's training set), and extracts each target whole and
in chunks of each length (``avse.video.longform.extract_span``: ``--overlap`` seconds of
context on each side, cross-faded, the mixture gain computed once per file). Prints mean
SI-SDRi per chunk length and the SI-SDR of the chunked output against the whole-clip one.
A model without whole-utterance context (``tcn`` with ``cln`` or ``bn`` norms) gives the
whole-clip numbers at every chunk length. Prints numbers; asserts nothing.
"""
import argparse

import numpy as np
import torch


def make_mixture(seed: int, seconds: float):
    from avse.data.synthetic import render_face, speaker_look, speaker_voice, synthesize_utterance

    rng = np.random.default_rng(seed)
    speakers = [10_000 + 2 * seed, 10_001 + 2 * seed]  # far from any demo corpus index
    srcs, lips = [], None
    for i, spk in enumerate(speakers):
        parts, tracks = [], []
        while sum(len(p) for p in parts) < seconds * 16000:
            utt = synthesize_utterance(speaker_voice(99, spk), rng, float(rng.uniform(2.5, 4.5)))
            parts.append(utt.wav)
            tracks.append(np.stack([utt.opening, utt.width, utt.roundness]))
        wav = np.concatenate(parts)[: int(seconds * 16000)]
        srcs.append(wav / (np.std(wav) + 1e-8))
        if i == 0:
            t = np.concatenate(tracks, axis=1)[:, : len(wav) // 640]
            rgb = render_face(t[0], t[1], t[2], look=speaker_look(99, spk))
            gray = (rgb @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)
            lips = gray[:, 113:201, 68:156]
    mix = srcs[0] + srcs[1]
    scale = 0.9 / np.abs(mix).max()
    return (mix * scale).astype(np.float32), (srcs[0] * scale).astype(np.float32), lips


def main(argv=None):
    from avse.inference import AVSEExtractor
    from avse.metrics import si_sdr
    from avse.video.longform import extract_span

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--mixtures", type=int, default=6)
    p.add_argument("--chunks", type=float, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--overlap", type=float, default=1.0)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    ex = AVSEExtractor.from_hparams(args.model)
    sdr = lambda est, ref: float(si_sdr(torch.from_numpy(est)[None], torch.from_numpy(ref)[None]))
    rows = {c: [] for c in ["whole"] + args.chunks}
    for m in range(args.mixtures):
        mix, ref, lips = make_mixture(m, args.seconds)
        gain = float(np.abs(mix).max())
        n = len(lips)
        mix, ref = mix[: n * 640], ref[: n * 640]
        base = sdr(mix, ref)
        whole = ex.extract_array(mix, lips, gain)
        rows["whole"].append((sdr(whole, ref) - base, np.inf))
        for c in args.chunks:
            out = []
            extract_span(lambda w, v: ex.extract_array(w, v, gain), lambda a, b: mix[a:b],
                         lambda a, b: lips[a:b], n, out.append, int(round(c * 25)),
                         int(round(args.overlap * 25)))
            est = np.concatenate(out)
            rows[c].append((sdr(est, ref) - base, sdr(est, whole)))
    print(f"{args.mixtures} mixtures of {args.seconds:g} s, overlap {args.overlap:g} s, model "
          f"{args.model}\n\n| chunk | SI-SDRi (dB) | chunked vs whole (SI-SDR, dB) |\n|---|---|---|")
    for c, vals in rows.items():
        imp = np.mean([v[0] for v in vals])
        agree = np.mean([v[1] for v in vals])
        label = "whole clip" if c == "whole" else f"{c:g} s"
        print(f"| {label} | {imp:.2f} | {'-' if np.isinf(agree) else f'{agree:.1f}'} |")


if __name__ == "__main__":
    main()
