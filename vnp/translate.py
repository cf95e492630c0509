"""`vnp translate`: the original VirNucPro intermediate files, chunking and translation only.

    vnp translate INPUT... -L 500 -o DIR
    python -m vnp.translate INPUT... -L 500 -o DIR

For every input this writes `{stem}_chunked{L}.fa`, `{stem}_identified_nucleotide.fa` and
`{stem}_identified_protein.faa` (the frame selection of `vnp.seq.frames`), and prints a one-line
summary on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from vnp.seq.frames import batched_chunks, translate_chunks
from vnp.seq.seqio import Record, fasta_record, input_stem, iter_records
from vnp.support.atomic import AtomicFiles
from vnp.support.command import command, exit_code, module_main
from vnp.support.errors import InputError
from vnp.support.paths import check_output_folder


@dataclass
class TranslateCounts:
    sequences: int = 0
    chunks: int = 0
    frames: int = 0
    chunks_without_frames: int = 0

    def summary(self, name: str) -> str:
        return (f"{name}: {self.sequences} sequences, {self.chunks} chunks, {self.frames} kept frames, "
                f"{self.chunks_without_frames} chunks with no kept frame")


def _counted(records: Iterable[Record], counts: TranslateCounts) -> Iterator[Record]:
    for record in records:
        counts.sequences += 1
        yield record


def translate_file(path: str | os.PathLike, out_dir: str | os.PathLike, chunk_length: int) -> TranslateCounts:
    """Write the three intermediate files of one input; nothing is left behind if it is bad."""
    stem = input_stem(path)
    out_dir = Path(out_dir)
    targets = [out_dir / f"{stem}_chunked{chunk_length}.fa",
               out_dir / f"{stem}_identified_nucleotide.fa",
               out_dir / f"{stem}_identified_protein.faa"]
    counts = TranslateCounts()
    with AtomicFiles() as files, files.open(targets[0]) as chunked, files.open(targets[1]) as dna, \
            files.open(targets[2]) as protein:
        for batch in batched_chunks(_counted(iter_records(path), counts), chunk_length):
            _write_batch(batch, translate_chunks(batch), chunked, dna, protein, counts)
    return counts


def _write_batch(batch, frames_per_chunk, chunked, dna, protein, counts: TranslateCounts) -> None:
    chunked.write("".join(fasta_record(c.id, c.seq) for c in batch))
    dna.write("".join(f">{f.id}\n{f.nucleotide}\n" for frames in frames_per_chunk for f in frames))
    protein.write("".join(f">{f.id}\n{f.protein}\n" for frames in frames_per_chunk for f in frames))
    counts.chunks += len(batch)
    counts.frames += sum(len(frames) for frames in frames_per_chunk)
    counts.chunks_without_frames += sum(1 for frames in frames_per_chunk if not frames)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="FASTA/FASTQ files (.gz, .bz2, .xz accepted) or unaligned BAM/CRAM")
    parser.add_argument("-L", "--chunk-length", type=int, default=500,
                        help="chunk length in bp (300 and 500 match the published models; default 500)")
    parser.add_argument("-o", "--out-dir", required=True, help="output folder (created if needed)")


def _check_outputs(inputs: list[str], out_dir: Path) -> None:
    stems: dict[str, str] = {}
    for path in inputs:
        stem = input_stem(path)
        if stem in stems:
            same = os.path.realpath(stems[stem]) == os.path.realpath(path)
            problem = "given twice" if same else f"has the same name stem '{stem}' as {stems[stem]}"
            raise InputError(f"{path}: {problem}; its outputs would overwrite each other")
        stems[stem] = path
    check_output_folder(out_dir)


@command
def run(args: argparse.Namespace) -> int:
    if args.chunk_length <= 0:
        raise InputError(f"--chunk-length must be a positive number of bp, got {args.chunk_length}")
    out_dir = Path(args.out_dir)
    _check_outputs(args.inputs, out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{out_dir}: cannot create output folder ({err.strerror})") from None
    if not os.access(out_dir, os.W_OK):
        raise InputError(f"{out_dir}: output folder is not writable")
    failed = 0
    for path in args.inputs:
        try:
            counts = translate_file(path, out_dir, args.chunk_length)
        except InputError as err:  # said, and the next file is translated
            failed += exit_code(err) != 0
            continue
        print(counts.summary(path), file=sys.stderr)
    return 2 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return module_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
