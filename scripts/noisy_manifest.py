"""A noisy copy of a manifest: every utterance mixed with noise at one SNR, to test a model in noise.

    .venv/bin/python scripts/noisy_manifest.py --manifest data_samples/an4/dev.jsonl \\
        --noise data_samples/digits/test_unseen.jsonl --snr 10 --out runs/an4_dev_babble10 [--seed 0] [--force]

Each utterance gets a stretch of one line of the ``--noise`` manifest (chosen and placed as in
training, ``asrlib/data/noise.py``: a line shorter than the utterance repeats) at exactly
``--snr`` dB. With the bundled digits corpus as the noise, AN4's dev set becomes dev in babble:
another corpus's speaker saying digits, a voice and recordings no AN4 model trains on, not even
as training noise. Writes ``OUT/audio/<nnnn>.flac`` (16-bit, the model's 16 kHz, scaled down
only where a mix would clip) and ``OUT/<name of the manifest>`` with the original texts and
speakers. Deterministic for a seed; an existing output folder is replaced only with ``--force``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asrlib.audio import load_audio  # noqa: E402
from asrlib.data.manifest import read_manifest  # noqa: E402
from asrlib.data.noise import noise_from_manifest  # noqa: E402

SAMPLE_RATE = 16000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True)
    p.add_argument("--noise", required=True, help="a manifest of noise recordings (texts ignored)")
    p.add_argument("--snr", type=float, required=True, help="dB")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"noisy_manifest.py: error: {out} already holds files; choose a new folder or pass --force", file=sys.stderr)
        return 2
    shutil.rmtree(out, ignore_errors=True)
    (out / "audio").mkdir(parents=True)
    entries, report = read_manifest(args.manifest, strict=True)
    mixer, _ = noise_from_manifest([args.noise], SAMPLE_RATE, (args.snr, args.snr), 1.0, args.seed)
    source = [json.loads(line) for line in Path(args.manifest).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for i, (entry, row) in enumerate(zip(entries, source)):
        wave = load_audio(entry.audio_filepath, SAMPLE_RATE, *entry.span)
        mixed = mixer(wave, 0, i)
        mixed = mixed / max(1.0, float(np.abs(mixed).max()) / 0.999)  # no clipping in 16-bit
        path = out / "audio" / f"{i:04d}.flac"
        sf.write(path, mixed, SAMPLE_RATE, subtype="PCM_16")
        keep = {k: v for k, v in row.items() if k not in ("audio_filepath", "duration", "offset")}
        rows.append({"audio_filepath": f"audio/{path.name}", "duration": round(len(mixed) / SAMPLE_RATE, 3), **keep})
    manifest = out / Path(args.manifest).name
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {manifest}: {len(rows)} utterances at {args.snr:g} dB SNR, noise from {args.noise}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
