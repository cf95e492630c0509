"""`make demo`: the main job on the bundled example with the tiny pack, built on the fly.

    python -m vnp.demo [OUT]        (default OUT: demo_out)

The example (vnp/data/example.fa) is made by `write_example` below: a few kb of sequences of
several lengths, some coding-like (no stop codon in one frame), some random, one shorter than a
codon, one with N and lower case. The tiny pack has random weights, so its labels mean nothing;
it shows the pipeline end to end. For real predictions use the published models, e.g.
`vnp predict input.fa -o out pack=500 classifier=/path/to/500_model.pth`.
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


def example_sequences(seed: int = 2025) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    records = []
    for i, length in enumerate(LENGTHS):
        if i % 2:
            seq, kind = coding_like(rng, length), "coding-like"
        else:
            seq, kind = random_dna(rng, length), "random"
        if i == 7:
            seq = seq[:200] + "N" * 12 + seq[212:600].lower() + seq[600:]
            kind += ", with N and lower case"
        records.append((f"example_{i + 1} {kind} {length} bp", seq))
    return records


def write_example(path: str | Path) -> None:
    with open(path, "w") as fh:
        for title, seq in example_sequences():
            fh.write(f">{title}\n" + "".join(seq[i:i + 60] + "\n" for i in range(0, len(seq), 60)))


def example_path() -> Path:
    return Path(str(resources.files("vnp") / "data" / "example.fa"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "demo_out")
    # torch is imported only when the demo runs (the generators above are used by benchmarks)
    from vnp.predict import main as predict_main

    code = predict_main([str(example_path()), "-o", str(out), "pack=tiny", "force=true"])
    if code == 0:
        print(f"\nDemo results are in {out}/: prediction_results.txt (per frame), "
              "prediction_results_highestscore.csv (per chunk), chunks.tsv, contigs.tsv, run.json, report.html.\n"
              "The tiny pack has RANDOM weights: its labels are meaningless; it exercises the pipeline.\n"
              f"Report (open it in a browser): {(out / 'report.html').resolve()}\n\n"
              "For real predictions get the published models (DNABERT-S, ESM2-3B ~5.7 GB, the classifier)\n"
              "once, on a machine with internet, check them, and point vnp at the folder:\n"
              "  vnp models fetch 500 -o models/500 && vnp models verify models/500\n"
              "  vnp predict input.fa -o out pack=models/500/pack.yaml      (or VNP_MODELS=models, pack=500)\n"
              "See 'Model packs' in README.md for offline clusters.")
    return code


if __name__ == "__main__":
    sys.exit(main())
