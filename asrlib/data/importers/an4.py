"""AN4 (CMU census database) in its original layout -> train/dev/test manifests and audio.

Input, as CMU distributes it::

    AN4_DIR/etc/an4_train.transcription          lines "<s> TEXT </s> (utterance id)"
    AN4_DIR/wav/an4_clstk/<speaker>/<id>.sph      16 kHz 16-bit mono NIST SPHERE
    AN4_DIR/etc/an4_test.transcription            optional: the official test set
    AN4_DIR/wav/an4test_clstk/<speaker>/<id>.sph

Output, in ``--out DIR``::

    DIR/audio/<split>/<speaker>/<id>.<flac|opus|wav>
    DIR/train.jsonl  [dev.jsonl]  [test.jsonl]

The text is the transcription line without ``<s>``, ``</s>`` and ``(id)``, whitespace
collapsed, case kept (AN4 writes upper case). The speaker is the audio's folder name; its first
letter is the gender (f/m). Each manifest line has ``audio_filepath``, ``text``, ``duration``
(decoded samples / 16000 of the written file), ``speaker`` and ``id``.

``--dev-speakers N`` moves N training speakers, with all their utterances, to ``dev``: drawn
from the seed within each gender, with the female/male counts allocated in proportion
(largest remainder), so dev keeps the training set's gender balance. ``test.jsonl`` is written
only when the test transcription and its audio folder both exist.

Audio formats: ``flac`` and ``wav`` are lossless 16-bit PCM; ``opus`` is Ogg Opus at
``--opus-bitrate`` kbit/s (average, VBR). libsndfile sets the Opus target bitrate from
soundfile's ``compression_level`` as ``6 + 250 * (1 - level)`` kbit/s per channel, so the
level is computed from the bitrate. Opus decodes back to 16 kHz with the same number of
samples, without a pre-skip offset. The Ogg stream serial, random in libsndfile, is set from
the utterance id, so the same input gives byte-identical files.

Transcription lines that do not parse (the count names the first), with empty text or a repeated
id, and utterances whose audio is missing, unreadable or not 16 kHz mono are skipped and counted.
Manifests are never replaced without ``--force``; with it, the old train/dev/test manifests
and ``audio/<split>`` folders are removed first, so nothing stale remains.

    asrlib prepare an4 AN4_DIR --out DIR [--format flac|opus|wav] [--opus-bitrate 32]
                       [--dev-speakers N] [--seed 0] [--force]

Shapes: source (S,) int16 -> written file (S,) samples at 16 kHz.
"""

from __future__ import annotations

import argparse
import re
import shutil
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

from asrlib.audio import AudioError, measure_duration
from asrlib.data.importers import run_importer
from asrlib.data.manifest import ManifestError, write_manifest

SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test")
SOURCES = {  # split read from the original layout -> (transcription, audio folder)
    "train": ("etc/an4_train.transcription", "wav/an4_clstk"),
    "test": ("etc/an4_test.transcription", "wav/an4test_clstk"),
}
FORMATS = {"flac": ("FLAC", "PCM_16", "flac"), "wav": ("WAV", "PCM_16", "wav"), "opus": ("OGG", "OPUS", "opus")}
OPUS_KBPS = (6, 256)  # the range libsndfile maps compression_level onto
_LINE = re.compile(r"^\s*<s>(.*)</s>\s*\(([^()\s]+)\)\s*$")


def _crc_table() -> list[int]:
    """Byte table of the Ogg page CRC-32: polynomial 0x04C11DB7, not reflected, initial value 0."""
    table = []
    for byte in range(256):
        r = byte << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return table


_OGG_CRC = _crc_table()


def parse_transcription(path: Path, counts: Counter) -> list[tuple[str, str]]:
    """[(utterance id, text)] in file order; bad, empty and repeated lines are counted.

    The count key of lines that do not parse names the first one (``file:line``) to fix.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8/ASCII text ({e})") from None
    pairs, seen, bad = [], set(), None
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        m = _LINE.match(raw)
        if not m:
            bad = bad or f"line not '<s> TEXT </s> (id)', first at {path}:{number}"
            counts[bad] += 1
            continue
        text, utt = " ".join(m.group(1).split()), m.group(2)
        if not text:
            counts["empty text"] += 1
        elif utt in seen:
            counts["repeated id"] += 1
        else:
            seen.add(utt)
            pairs.append((utt, text))
    return pairs


def list_utterances(an4_dir: Path, split: str, counts: Counter) -> list[dict]:
    """[{id, text, speaker, source}] of one original split whose .sph exists (others counted)."""
    trans, wav_dir = (an4_dir / p for p in SOURCES[split])
    audio = {p.stem: p for p in sorted(wav_dir.glob("*/*.sph"))}  # id -> path
    rows = []
    for utt, text in parse_transcription(trans, counts):
        if utt not in audio:
            counts["missing audio"] += 1
            continue
        rows.append({"id": utt, "text": text, "speaker": audio[utt].parent.name, "source": audio[utt]})
    return rows


def choose_dev_speakers(speakers: list[str], n: int, seed: int) -> list[str]:
    """``n`` of ``speakers``, stratified by first letter (gender), deterministic for ``seed``."""
    groups: dict[str, list[str]] = {}
    for spk in sorted(set(speakers)):
        groups.setdefault(spk[:1].lower(), []).append(spk)
    total = sum(len(g) for g in groups.values())
    if not 0 <= n < total:
        raise ManifestError(f"--dev-speakers {n}: choose 0 <= N < {total} (the training set has {total} speakers)")
    quota = {g: n * len(members) / total for g, members in groups.items()}
    take = {g: int(q) for g, q in quota.items()}
    for g in sorted(quota, key=lambda g: (take[g] - quota[g], g))[: n - sum(take.values())]:
        take[g] += 1  # largest remainders first
    chosen = []
    for k, g in enumerate(sorted(groups)):
        rng = np.random.default_rng([seed, k])
        chosen += [groups[g][i] for i in rng.permutation(len(groups[g]))[: take[g]]]
    return sorted(chosen)


def set_ogg_serial(path: Path, serial: int) -> None:
    """Give every Ogg page of ``path`` the stream serial ``serial`` (and a new page CRC).

    libsndfile draws a random serial per file; a fixed one makes rebuilds byte-identical.
    """
    data, pos = bytearray(path.read_bytes()), 0
    while pos < len(data):
        if data[pos : pos + 4] != b"OggS" or pos + 27 > len(data):
            raise AudioError(f"{path}: not an Ogg page at byte {pos}")
        n_seg = data[pos + 26]
        end = pos + 27 + n_seg + sum(data[pos + 27 : pos + 27 + n_seg])
        struct.pack_into("<I", data, pos + 14, serial)  # bytes 14-17: stream serial number
        struct.pack_into("<I", data, pos + 22, 0)  # bytes 22-25: CRC, computed with zeros here
        crc = 0
        for byte in data[pos:end]:
            crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[(crc >> 24) ^ byte]
        struct.pack_into("<I", data, pos + 22, crc)
        pos = end
    path.write_bytes(data)


def write_audio(source: Path, target: Path, fmt: str, opus_kbps: float) -> None:
    """Re-encode one SPHERE file; raises AudioError if unreadable or not 16 kHz mono."""
    try:
        samples, rate = sf.read(str(source), dtype="int16")  # (S,) or (S, C)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudioError(f"cannot read {source}: {e}") from None
    if rate != SAMPLE_RATE or samples.ndim != 1 or len(samples) == 0:
        raise AudioError(f"{source}: expected 16 kHz mono, got {rate} Hz, shape {samples.shape}")
    container, subtype, _ = FORMATS[fmt]
    level = (OPUS_KBPS[1] - opus_kbps) / (OPUS_KBPS[1] - OPUS_KBPS[0]) if fmt == "opus" else None
    target.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(target), samples, SAMPLE_RATE, format=container, subtype=subtype, compression_level=level)
    if container == "OGG":
        set_ogg_serial(target, zlib.crc32(target.stem.encode()))


def prepare_an4(
    an4_dir: str | Path,
    out_dir: str | Path,
    fmt: str = "flac",
    opus_kbps: float = 32.0,
    dev_speakers: int = 0,
    seed: int = 0,
    force: bool = False,
    with_test: bool = True,
) -> tuple[dict[str, Path], Counter]:
    """The corpus of the module docstring -> ({split: manifest}, counts); ``with_test=False``
    leaves the official test set out even when it is present."""
    an4_dir, out_dir = Path(an4_dir), Path(out_dir)
    if fmt not in FORMATS:
        raise ManifestError(f"unknown audio format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not OPUS_KBPS[0] <= opus_kbps <= OPUS_KBPS[1]:
        raise ManifestError(f"--opus-bitrate {opus_kbps}: Opus takes {OPUS_KBPS[0]}-{OPUS_KBPS[1]} kbit/s")
    if not (an4_dir / SOURCES["train"][0]).is_file():
        raise ManifestError(f"{an4_dir / SOURCES['train'][0]} not found; pass the AN4 folder that holds etc/ and wav/")
    existing = [str(out_dir / f"{s}.jsonl") for s in SPLITS if (out_dir / f"{s}.jsonl").exists()]
    if existing and not force:
        raise ManifestError(f"{', '.join(existing)} already exist(s); refusing to overwrite (pass --force to rebuild)")
    counts: Counter = Counter()
    train = list_utterances(an4_dir, "train", counts)
    if not train:
        raise ManifestError(f"no usable utterances in {an4_dir / SOURCES['train'][0]}: {dict(counts)}")
    dev = set(choose_dev_speakers([r["speaker"] for r in train], dev_speakers, seed)) if dev_speakers else set()
    splits = {"train": [r for r in train if r["speaker"] not in dev]}
    if dev:
        splits["dev"] = [r for r in train if r["speaker"] in dev]
    if with_test and all((an4_dir / p).exists() for p in SOURCES["test"]):
        splits["test"] = list_utterances(an4_dir, "test", counts)
    if force:  # no stale audio or manifest of an earlier build stays behind
        for split in SPLITS:
            (out_dir / f"{split}.jsonl").unlink(missing_ok=True)
            shutil.rmtree(out_dir / "audio" / split, ignore_errors=True)
    manifests = {}
    for split, utts in splits.items():
        rows = []
        for u in utts:
            target = out_dir / "audio" / split / u["speaker"] / f"{u['id']}.{FORMATS[fmt][2]}"
            try:
                write_audio(u["source"], target, fmt, opus_kbps)
                duration = measure_duration(target)  # decoded samples / rate of what was written
            except AudioError:
                target.unlink(missing_ok=True)
                counts["unreadable or not 16 kHz mono audio"] += 1
                continue
            row = {"audio_filepath": str(target.resolve()), "text": u["text"], "duration": duration}
            rows.append({**row, "speaker": u["speaker"], "id": u["id"]})
        manifests[split] = write_manifest(out_dir / f"{split}.jsonl", rows, force=force)
        counts["written"] += len(rows)
    return manifests, counts


def _prepare_cli(*args) -> tuple[str, Counter]:
    manifests, counts = prepare_an4(*args)
    sizes = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in manifests.values()}
    return ", ".join(f"{p} ({n})" for p, n in sizes.items()), counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asrlib prepare an4", description=__doc__.split("\n\n")[0])
    parser.add_argument("an4_dir", help="AN4 folder holding etc/an4_train.transcription and wav/an4_clstk/")
    parser.add_argument("--out", required=True, help="corpus folder (audio/ and the manifests)")
    parser.add_argument("--format", choices=tuple(FORMATS), default="flac", help="audio written (default: lossless flac)")
    parser.add_argument("--opus-bitrate", type=float, default=32.0, help="kbit/s for --format opus (6-256, default 32)")
    parser.add_argument("--dev-speakers", type=int, default=0, help="training speakers held out as dev.jsonl")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dev speaker draw")
    parser.add_argument("--force", action="store_true", help="replace existing manifests and audio/<split> folders")
    args = parser.parse_args(argv)
    return run_importer(
        "an4", _prepare_cli, args.an4_dir, args.out, args.format, args.opus_bitrate, args.dev_speakers, args.seed, args.force
    )
