"""The result tables against the original's: same rows, same float formatting, same decisions."""

from __future__ import annotations

import numpy as np
import pytest

from vnp.support.config import PredictConfig
from vnp.results.tables import write_tables
from vnp.run.plan import load_plan, pack_inputs, read_chunks
from vnp.seq.frames import translate_chunks


def frame_keys(work, plan) -> np.ndarray:
    chunks = read_chunks(plan, work / "sequences.bin", 0, plan.n_chunks)
    return np.asarray([c.index * 6 + f.index for c, frames in zip(chunks, translate_chunks(chunks)) for f in frames])


@pytest.mark.parametrize("stem", ["test_with_orfs", "test_fixed_500bp"])
def test_tables_match_the_original_given_its_scores(vanilla, tmp_path, stem):
    """Feed the original's own scores through vnp's writer: both of its tables come out identical."""
    work = tmp_path / "work"
    pack_inputs([vanilla / f"{stem}.fa"], work)
    plan = load_plan(work, 500)
    reference = vanilla / f"{stem}_outputs"
    rows = [r.split("\t") for r in (reference / "prediction_results.txt").read_text().splitlines()[1:]]
    scores = np.array([[np.float32(r[2]), np.float32(r[3])] for r in rows], dtype=np.float32)
    keys = frame_keys(work, plan)
    assert len(keys) == len(rows)
    write_tables(tmp_path, plan, keys, scores, PredictConfig(), [f"{stem}.fa"])
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv"):
        assert (tmp_path / name).read_bytes() == (reference / name).read_bytes(), name


def test_chunk_decision_and_contig_summary(tmp_path):
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\n" + "ATGGCCAAA" * 130 + "\n>b\nAC\n>c\nA\n")  # a: 1170 bp -> 3 chunks; b, c: no frame
    work = tmp_path / "work"
    pack_inputs([fasta], work)
    plan = load_plan(work, 500)
    keys = frame_keys(work, plan)
    # chunk 1 viral only through a tie (max score2 == max score1), chunk 2 viral, chunk 3 not
    chunk = keys // 6
    scores = np.where((chunk == 0)[:, None], [0.5, 0.5], np.where((chunk == 1)[:, None], [0.1, 0.9], [0.8, 0.2]))
    counts = write_tables(tmp_path, plan, keys, scores.astype(np.float32), PredictConfig(), ["x.fa"])
    best = (tmp_path / "prediction_results_highestscore.csv").read_text().splitlines()
    assert best == ["Modified_ID\tIs_Virus", "a_chunk_1\tTrue", "a_chunk_2\tTrue", "a_chunk_3\tFalse"]
    frames = (tmp_path / "prediction_results.txt").read_text().splitlines()[1:]
    assert all(line.split("\t")[1] == "others" for line in frames if line.startswith("a_chunk_1"))  # tie -> others
    contigs = [line.split("\t") for line in (tmp_path / "contigs.tsv").read_text().splitlines()[1:]]
    assert contigs[0][:12] == ["a", "x.fa", "1170", "3", "2", "0", "0.666667", "0.900000", "0.533333", "virus",
                               "medium", ""]
    assert contigs[1][:12] == ["b", "x.fa", "2", "1", "0", "1", "NA", "NA", "NA", "no_frames", "NA", ""]
    assert counts.chunks == 5 and counts.chunks_without_frames == 2 and counts.viral_chunks == 2


def test_keys_beyond_the_plan_are_refused(tmp_path):
    from vnp.results.tables import check_keys

    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\n" + "ATGGCCAAA" * 130 + "\n")  # 3 chunks: keys 0..17
    pack_inputs([fasta], tmp_path / "work")
    plan = load_plan(tmp_path / "work", 500)
    for keys in ([0, 5, 17], [3], [], [17]):
        check_keys(np.asarray(keys, np.int64), plan)
    for keys in ([0, 18], [-1, 4], [18], [2, 3, 40]):
        with pytest.raises(RuntimeError, match="scored frames beyond the plan's 3 chunks"):
            check_keys(np.asarray(keys, np.int64), plan)
    scores = np.full((2, 2), 0.5, np.float32)
    with pytest.raises(RuntimeError, match="beyond the plan"):
        write_tables(tmp_path, plan, np.asarray([0, 18], np.int64), scores, PredictConfig(), ["x.fa"])
    assert not (tmp_path / "prediction_results.txt").exists()  # nothing written


def test_float32_text_is_numpys_shortest_repr():
    """The scores' text without numpy's per-value Dragon4: every float32 of whole stretches of
    [1e-4, 1) (where the fast path works), the edges around them, and what takes numpy's path."""
    from vnp.results.text import float32_shortest, lines

    def text(values: np.ndarray) -> list[str]:
        return lines([float32_shortest(values)], len(values)).decode().split("\n")[:-1]

    edges = np.array([0, 1, 1e-4, 9.9999e-5, 1.0001e-4, 2 ** -13, 2 ** -14, 0.5, 0.125, 0.1, 0.3, 0.99999994, 1e-7,
                      1e-45, -0.5, 3.0, 1e20, np.nan, np.inf, -np.inf], dtype=np.float32)
    assert text(edges) == edges.astype(str).tolist()
    for lo, hi in ((1e-4, 1.02e-4), (2 ** -14, 2 ** -14 + 1e-6), (0.0999, 0.1001), (0.5, 0.5001), (0.9999, 1.0)):
        bits = np.array([lo, hi], dtype=np.float32).view(np.uint32)
        values = np.arange(bits[0], bits[1], dtype=np.uint32).view(np.float32)  # every float32 between
        assert text(values) == values.astype(str).tolist(), (lo, hi)
    few_places = np.concatenate([np.arange(1, 1 << j, 2) / 2.0 ** j for j in range(1, 17)]).astype(np.float32)
    assert text(few_places) == few_places.astype(str).tolist()  # where x * 10^k can be a tie
    random = np.random.default_rng(0).random(100_000).astype(np.float32)
    assert text(random) == random.astype(str).tolist()


def test_saved_embeddings_are_read_back_in_input_order(tmp_path):
    """`load_embeddings` joins the parts of OUT/embeddings by frame key, whichever part holds a frame;
    a run that saved none gives empty arrays."""
    from vnp.results.tables import load_embeddings

    ids, vectors = load_embeddings(tmp_path)
    assert ids.shape == (0,) and vectors.shape == (0, 0)
    parts = tmp_path / "embeddings"
    parts.mkdir()
    np.savez(parts / "part-000001.npz", ids=np.asarray(["c_chunk_1F2", "a_chunk_1F1"]), keys=np.asarray([13, 0]),
             embeddings=np.asarray([[2.0], [0.0]], np.float32))
    np.savez(parts / "part-000002.npz", ids=np.asarray(["b_chunk_1R1"]), keys=np.asarray([9]),
             embeddings=np.asarray([[1.0]], np.float32))
    ids, vectors = load_embeddings(tmp_path)
    assert ids.tolist() == ["a_chunk_1F1", "b_chunk_1R1", "c_chunk_1F2"] and vectors[:, 0].tolist() == [0, 1, 2]
