"""`vnp embed` on the tiny pack: input order, shapes, the original's one-sequence-per-call values,
one-line errors with exit code 2 and no partial output."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import BIN, ROOT, run
from vnp.cli import main as vnp_main
from vnp.embed import checked_records, embed_records, nucleotide_check
from vnp.models.batches import token_batches
from vnp.models.dnabert import load_dnabert
from vnp.models.esm import load_esm
from vnp.models.pack import build_tiny_pack

SMALL_BUDGET = "96"  # several batches for these inputs, some padded

# IDs out of sorted order, descriptions, lower case, N, wrapped lines, varied lengths.
NUCLEOTIDES = {
    "z9_chunk_1F1": "ATGAAACGCATTAGCACCACCATTACCACCACCATCACCATTACCACAGGTAACGGTGCGGGCTGA",
    "a1_chunk_2R3": "acgtacgtNNacgtTTGACCA",
    "m5": "GATTACA" * 30,
    "b2 some description": "C",
    "k7": "TTTTAAAACCCCGGGGACGT",
}
PROTEINS = {
    "z9_chunk_1F1": "MKRISTTITTTITITTGNGAG",
    "a1": "M",
    "m5 described": "ACDEFGHIKLMNPQRSTVWYXBZUO",
    "q3": "MSTNPKPQRKTKRNTNRRPQDVKFPGG" * 3,
    "b2": "MKTAYIAK-QRQ.ISFVKSHF",
}


def collect(pieces, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate embed_records' slices: (ids [N] unicode, embeddings [N, dim] float32)."""
    ids: list[str] = []
    arrays = [np.zeros((0, dim), dtype=np.float32)]
    for piece_ids, piece in pieces:
        ids.extend(piece_ids)
        arrays.append(piece)
    return np.asarray(ids, dtype=np.str_), np.concatenate(arrays)


def write_fasta(path: Path, records: dict[str, str], width: int = 20) -> Path:
    with open(path, "w") as fh:
        for title, seq in records.items():
            fh.write(f">{title}\n" + "".join(seq[i:i + width] + "\n" for i in range(0, len(seq), width)))
    return path


def ids_of(records: dict[str, str]) -> list[str]:
    return [title.split()[0] for title in records]


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return build_tiny_pack(tmp_path_factory.mktemp("pack"), seed=0)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    return {"fa": write_fasta(folder / "frames.fa", NUCLEOTIDES), "faa": write_fasta(folder / "frames.faa", PROTEINS)}


def run_embed(capsys, *args: str) -> tuple[int, str]:
    code = vnp_main(["embed", *map(str, args)])
    return code, capsys.readouterr().err


def load_npz(path: Path) -> tuple[list[str], np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == {"ids", "embeddings"}
        return data["ids"].tolist(), data["embeddings"]


def padded_batch_among(lengths: list[int], batcher) -> bool:
    """Whether SMALL_BUDGET batches put sequences of different lengths together (padding)."""
    return any(len({lengths[i] for i in batch}) > 1 for batch in batcher(lengths, int(SMALL_BUDGET)))


@torch.no_grad()
def dnabert_one_per_call(embedder, seqs: list[str]) -> np.ndarray:
    """The original: `model(tokenizer(seq))[0]`, mean over its tokens, one unpadded sequence per call."""
    rows = []
    for seq in seqs:
        input_ids = torch.tensor([embedder.tokenizer.encode(seq.upper()).ids])
        rows.append(embedder.model(input_ids)[0].mean(0).numpy())
    return np.stack(rows)


@torch.no_grad()
def esm_one_per_call(embedder, proteins: list[str]) -> np.ndarray:
    """The original: fair-esm's batch converter and forward, `t[0, 1 : len + 1].mean(0)`."""
    convert = embedder.alphabet.get_batch_converter()
    rows = []
    for protein in proteins:
        _, _, tokens = convert([("id", protein)])
        reps = embedder.model(tokens, repr_layers=[embedder.layer])["representations"][embedder.layer]
        rows.append(reps[0, 1 : len(protein) + 1].mean(0).numpy())
    return np.stack(rows)


def test_dnabert_ids_shapes_and_values(pack, inputs, tmp_path, capsys):
    out = tmp_path / "sub" / "dnabert.npz"
    code, err = run_embed(capsys, "dnabert", inputs["fa"], "-m", pack.dnabert, "-o", out, "--max-tokens", SMALL_BUDGET)
    assert code == 0, err
    ids, vectors = load_npz(out)
    assert ids == ids_of(NUCLEOTIDES)
    assert vectors.dtype == np.float32 and vectors.shape == (len(NUCLEOTIDES), pack.dnabert_dim)
    embedder = load_dnabert(pack.dnabert)
    assert padded_batch_among(embedder.token_lengths(list(NUCLEOTIDES.values())), token_batches)
    expected = dnabert_one_per_call(embedder, list(NUCLEOTIDES.values()))
    np.testing.assert_allclose(vectors, expected, atol=1e-5, rtol=0)
    assert f"{len(NUCLEOTIDES)} records" in err and os.listdir(out.parent) == ["dnabert.npz"]


@pytest.mark.parametrize("attention", ["sdpa", "fair-esm"])
@pytest.mark.parametrize("layer", [None, 1])
def test_esm_ids_shapes_and_values(pack, inputs, tmp_path, capsys, attention, layer):
    out = tmp_path / "esm.npz"
    extra = [] if layer is None else ["--layer", str(layer)]
    code, err = run_embed(capsys, "esm", inputs["faa"], "-m", pack.esm, "-o", out, "--max-tokens", SMALL_BUDGET,
                          "--attention", attention, *extra)
    assert code == 0, err
    ids, vectors = load_npz(out)
    assert ids == ids_of(PROTEINS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(PROTEINS), pack.esm_dim)
    embedder = load_esm(pack.esm, layer=layer, attention="fair-esm")
    assert padded_batch_among(embedder.token_lengths(list(PROTEINS.values())), token_batches)
    expected = esm_one_per_call(embedder, list(PROTEINS.values()))
    np.testing.assert_allclose(vectors, expected, atol=1e-5, rtol=0)


def test_slices_give_the_same_rows(pack, inputs, tmp_path, capsys):
    """Embedding in slices of 2 records (as a rank would its share) changes nothing."""
    embedder = load_dnabert(pack.dnabert)
    records = checked_records(inputs["fa"], nucleotide_check)
    ids, vectors = collect(embed_records(embedder, records, max_tokens=64, batch_records=2), embedder.dim)
    whole = embedder.embed([seq.upper() for seq in NUCLEOTIDES.values()], max_tokens=64)
    assert ids.tolist() == ids_of(NUCLEOTIDES)
    np.testing.assert_allclose(vectors, whole, atol=1e-6, rtol=0)
    empty_ids, empty = collect(embed_records(embedder, [], max_tokens=64), embedder.dim)
    assert empty_ids.shape == (0,) and empty.shape == (0, pack.dnabert_dim)


def test_gzip_input_and_bf16(pack, inputs, tmp_path, capsys):
    gz = tmp_path / "frames.fa.gz"
    gz.write_bytes(gzip.compress(inputs["fa"].read_bytes()))
    out = tmp_path / "bf16.npz"
    code, err = run_embed(capsys, "dnabert", gz, "-m", pack.dnabert, "-o", out, "--precision", "bf16")
    assert code == 0, err
    ids, vectors = load_npz(out)
    assert ids == ids_of(NUCLEOTIDES) and vectors.dtype == np.float32 and np.isfinite(vectors).all()
    full = dnabert_one_per_call(load_dnabert(pack.dnabert), list(NUCLEOTIDES.values()))
    assert np.abs(vectors - full).max() < 0.2


# The project's reader (vnp.seq.seqio) reads embed's input: the same messages as `vnp predict`.
BAD_INPUTS = {
    "missing": (None, "no such file"),
    "empty": ("", "empty file"),
    "blank": ("\n\n", "no records (only blank lines)"),
    "text": ("ACGT\nACGT\n", "line 1: not a FASTA/FASTQ file"),
    "duplicate": (">r1\nACGT\n>r2 x\nAC\n>r1 again\nGG\n", "record 'r1' (line 5): duplicate record ID"),
    "no_id": (">r1\nACGT\n>\nACGT\n", "line 3: header has no record ID"),
    "empty_seq": (">r1\n>r2\nACGT\n", "record 'r1' (line 1): empty sequence"),
    "not_dna": (">r1\nACGT\n>r2\nACGJ\n", "record 'r2' (line 4): invalid character 'J' at column 4"),
    "binary": (b">r1\nAC\xff\xfeGT\n", "binary data"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_nucleotide_input_is_one_line(pack, tmp_path, capsys, case):
    content, message = BAD_INPUTS[case]
    path = tmp_path / f"{case}.fa"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out" / "x.npz"
    code, err = run_embed(capsys, "dnabert", path, "-m", pack.dnabert, "-o", out)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"vnp: error: {path}") and message in err
    leftovers = os.listdir(out.parent) if out.parent.exists() else []
    assert leftovers == []  # nothing partial left behind


@pytest.mark.parametrize("protein, char", [("MKT*", "*"), ("MKtA", "t"), ("MK<mask>LJ", "J")])
def test_protein_esm_cannot_encode_is_one_line(pack, tmp_path, capsys, protein, char):
    path = write_fasta(tmp_path / "bad.faa", {"ok": "MKV", "p7 desc": protein})
    out = tmp_path / "x.npz"
    code, err = run_embed(capsys, "esm", path, "-m", pack.esm, "-o", out)
    assert code == 2 and not out.exists()
    assert err == f"vnp: error: {path}: record 'p7': character {char!r} cannot be encoded by ESM " \
                  "(expected amino-acid letters, X, B, Z, U, O, '-' or '.')\n"


def test_bad_settings_are_one_line(pack, inputs, tmp_path, capsys):
    cases = [
        (["dnabert", inputs["fa"], "-m", tmp_path / "no_model", "-o", tmp_path / "x.npz"], "no_model"),
        (["esm", inputs["faa"], "-m", pack.esm, "--layer", "9", "-o", tmp_path / "x.npz"], "layer 9"),
        (["dnabert", inputs["fa"], "-m", pack.dnabert, "-o", tmp_path], "existing folder"),
        (["dnabert", inputs["fa"], "-m", pack.dnabert, "-o", tmp_path / "x.npz", "--max-tokens", "-1"], "--max-tokens"),
    ]
    for args, message in cases:
        code, err = run_embed(capsys, *args)
        assert code == 2 and err.count("\n") == 1 and message in err, err


def test_python_dash_m_entry_point(pack, inputs, tmp_path):
    out = tmp_path / "esm.npz"
    ok = subprocess.run([sys.executable, "-m", "vnp.embed", "esm", str(inputs["faa"]), "-m", pack.esm, "-o", str(out)],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert load_npz(out)[0] == ids_of(PROTEINS)  # a missing input's one line: the "missing" case above


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [2, 3])
def test_embed_under_torchrun_equals_single_process(tmp_path, pack, capsys, ranks):
    """Records sharded in units over the ranks, gathered to rank 0: same ids and rows."""
    import random

    fasta = tmp_path / "frames.fa"
    rng = random.Random(4)
    fasta.write_text("".join(f">f{i}\n{''.join(rng.choices('ACGT', k=rng.randint(20, 200)))}\n" for i in range(23)))
    args = ["dnabert", fasta, "-m", pack.dnabert, "--batch-records", "4"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread, as each rank under torchrun: identical bits
    try:
        assert run_embed(capsys, *args, "-o", tmp_path / "one.npz")[0] == 0
    finally:
        torch.set_num_threads(threads)
    multi = run([str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={ranks}", "-m", "vnp.embed",
                 *map(str, args), "-o", str(tmp_path / "many.npz")])
    assert multi.returncode == 0, multi.stderr
    one, many = np.load(tmp_path / "one.npz"), np.load(tmp_path / "many.npz")
    assert list(one["ids"]) == [f"f{i}" for i in range(23)] == list(many["ids"])
    assert np.array_equal(one["embeddings"], many["embeddings"])


SLOW_CHECK = """
import sys, time
import vnp.embed as embed

checked = embed.checked_records


def slow(path, check):  # a long checking pass (a huge input), longer than --timeout-s
    time.sleep(6)
    yield from checked(path, check)


embed.checked_records = slow
sys.exit(embed.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_checking_pass_longer_than_the_timeout_stops_no_rank(tmp_path, pack):
    """The checking pass runs on every rank at once (no rank waits in a collective while another
    reads the whole input), so an input that takes longer to check than --timeout-s still runs."""
    fasta = tmp_path / "frames.fa"
    fasta.write_text("".join(f">f{i}\n{'ACGT' * (5 + i)}\n" for i in range(5)))
    (tmp_path / "slow_check.py").write_text(SLOW_CHECK)
    proc = run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(tmp_path / "slow_check.py"),
                "dnabert", str(fasta), "-m", pack.dnabert, "--timeout-s", "3", "-o", str(tmp_path / "out.npz")],
               timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(np.load(tmp_path / "out.npz")["ids"]) == [f"f{i}" for i in range(5)]
