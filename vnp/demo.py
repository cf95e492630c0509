"""`make demo`: the main job on a bundled example whose report shows what vnp finds.

    python -m vnp.demo [OUT]        (default OUT: demo_out)

The biology is SYNTHETIC and the models TINY: "viral" sequences are GC-rich coding-like DNA, "host"
ones AT-rich coding-like DNA, both without stop codons in frame F1. The demo first trains the tiny
pack's classifier head on such sequences with `vnp train` (seconds on a CPU; cached in
OUT/demo_model and reused while its training data is unchanged), then runs `vnp predict` with it on
the example (vnp/data/example.fa, made by `write_example` below): viral contigs, host contigs, a
provirus-like chimera (host, viral, host: a partial viral region), a short read, a sequence with N
and lower case, one shorter than a codon and one without a stop-free frame. Its report thus shows
viral calls, a partial region, the viral FASTA and score tracks; none of it says anything about real
viruses. For real predictions use the published models (README, "Model packs").
"""

from __future__ import annotations

import random
import sys
from importlib import resources
from pathlib import Path

LENGTHS = (60, 150, 300, 499, 500, 501, 730, 1001, 1500, 2345, 2)
SENSE_CODONS = tuple(a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in ("TAA", "TAG", "TGA"))


def coding_like(rng: random.Random, length: int) -> str:
    """`length` bp without a stop codon in frame F1 (so at least that frame is kept)."""
    return "".join(rng.choices(SENSE_CODONS, k=length // 3 + 1))[:length]


def random_dna(rng: random.Random, length: int) -> str:
    return "".join(rng.choices("ACGT", k=length))


GC_CODONS = tuple(c for c in SENSE_CODONS if sum(b in "GC" for b in c) >= 2)
AT_CODONS = tuple(c for c in SENSE_CODONS if sum(b in "AT" for b in c) >= 2)


def viral_like(rng: random.Random, length: int) -> str:
    """The demo's synthetic "virus": GC-rich coding-like DNA (no stop codon in frame F1)."""
    return "".join(rng.choices(GC_CODONS, k=length // 3 + 1))[:length]


def host_like(rng: random.Random, length: int) -> str:
    """The demo's synthetic "host": AT-rich coding-like DNA (no stop codon in frame F1)."""
    return "".join(rng.choices(AT_CODONS, k=length // 3 + 1))[:length]


def example_sequences(seed: int = 2025) -> list[tuple[str, str]]:
    """The demo's input: (FASTA title, sequence) of every kind of contig the report can show."""
    rng = random.Random(seed)
    records = [(f"viral_{i} synthetic virus {n} bp", viral_like(rng, n)) for i, n in enumerate((3000, 2200, 1500), 1)]
    records += [(f"host_{i} synthetic host {n} bp", host_like(rng, n)) for i, n in enumerate((4000, 2500, 1800), 1)]
    chimera = host_like(rng, 3000) + viral_like(rng, 2500) + host_like(rng, 3000)
    records.append(("provirus_1 synthetic host with a viral insert at 3001-5500 (8500 bp)", chimera))
    read = viral_like(rng, 300)
    records.append(("read_1 synthetic viral read 300 bp", read))
    mixed = viral_like(rng, 1200)
    records.append(("viral_4 with N and lower case 1200 bp", mixed[:200] + "N" * 12 + mixed[212:600].lower() + mixed[600:]))
    records.append(("random_1 random DNA, no stop-free frame 700 bp", random_dna(rng, 700)))
    records.append(("tiny_1 shorter than a codon", "AC"))
    return records


def training_sequences(kind: str, seed: int, count: int = 24) -> list[tuple[str, str]]:
    """`count` training sequences of the demo's synthetic "virus" or "host" (1,000-2,000 bp)."""
    rng = random.Random(seed)
    make = viral_like if kind == "virus" else host_like
    return [(f"{kind}_train_{i}", make(rng, rng.randrange(1000, 2001))) for i in range(count)]


def fasta_text(records: list[tuple[str, str]]) -> str:
    """FASTA of (title, sequence) records, 60 letters a line."""
    from vnp.seq.seqio import fasta_record

    return "".join(fasta_record(title, seq) for title, seq in records)


def write_example(path: str | Path) -> None:
    Path(path).write_text(fasta_text(example_sequences()))


def example_path() -> Path:
    return Path(str(resources.files("vnp") / "data" / "example.fa"))


def train_demo_model(folder: Path) -> Path:
    """The tiny pack with its head trained on the synthetic task (`vnp train`); kept in `folder` and
    reused while the training data are unchanged (`vnp train` resumes a finished training)."""
    from vnp.train import main as train_main

    data = folder / "data"
    files = {"virus.fa": fasta_text(training_sequences("virus", seed=1)),
             "host.fa": fasta_text(training_sequences("others", seed=2)),
             "manifest.tsv": "virus.fa\tvirus\nhost.fa\tothers\n"}
    pack = folder / "trained" / "pack.yaml"
    if pack.is_file() and all((data / name).is_file() and (data / name).read_text() == text
                              for name, text in files.items()):
        print(f"vnp demo: reusing the head trained before ({pack})", file=sys.stderr)
        return pack
    data.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (data / name).write_text(text)
    print("vnp demo: training the tiny pack's head on SYNTHETIC sequences (GC-rich = \"virus\", "
          "AT-rich = \"host\") ...", file=sys.stderr)
    code = train_main([str(data / "manifest.tsv"), "-o", str(folder / "trained"), "pack=tiny", "progress=false",
                       "train.max_epochs=30", "train.patience=30", "train.lr=0.01"])
    if code != 0:
        raise SystemExit(code)
    return pack


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "demo_out")
    # torch is imported only when the demo runs (the generators above are used by benchmarks)
    from vnp.predict import main as predict_main

    pack = train_demo_model(out.parent / f"{out.name}_model")
    code = predict_main([str(example_path()), "-o", str(out), f"pack={pack}", "force=true"])
    if code == 0:
        print(f"\nDemo results are in {out}/: contigs.tsv (per sequence), chunks.tsv, regions.tsv/.bed/.gff3,\n"
              "viral_sequences.fna, viral_regions.fna, summary.tsv, the original's prediction_results.txt and\n"
              "prediction_results_highestscore.csv, run.json, report.html.\n"
              "These are TINY models trained in seconds on SYNTHETIC biology (GC-rich \"viruses\", AT-rich\n"
              "\"hosts\"): the calls show what vnp reports, not real viruses.\n"
              f"Report (open it in a browser): {(out / 'report.html').resolve()}\n\n"
              "For real predictions get the published models (DNABERT-S, ESM2-3B ~5.7 GB, the classifier)\n"
              "once, on a machine with internet, check them, and point vnp at the folder:\n"
              "  vnp models fetch 500 -o models/500 && vnp models verify models/500\n"
              "  vnp predict input.fa -o out pack=models/500/pack.yaml      (or VNP_MODELS=models, pack=500)\n"
              "See 'Model packs' in README.md for offline clusters.")
    return code


if __name__ == "__main__":
    sys.exit(main())
