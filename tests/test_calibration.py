"""Calibrated probabilities, the fdr column, call.max_fdr and presets, on synthetic finished runs
whose true P(virus | score) is known.

Every chunk has one frame (F1); its virus score s is drawn from Beta(4, 2) for chunks of viral
sequences and Beta(2, 4) otherwise (score1 = 1 - s). The likelihood ratio is s^2 / (1 - s)^2, so
at a viral share pi the true P(virus | s) = pi s^2 / (pi s^2 + (1 - pi) (1 - s)^2).
The folders are built through vnp's own packer and score store, as `vnp predict` leaves them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import one_error_line, write_mixed_input
from vnp.call import call
from vnp.cli import main as cli_main
from vnp.calibrate import calibrate
from vnp.support.config import PRESETS, PredictConfig, load_config, to_yaml
from vnp.results.tables import RESULT_FILES
from vnp.run.plan import load_plan, pack_inputs
from vnp.results.calibration import estimated_fdr, load_calibration, select_by_fdr
from vnp.run.store import write_atomic

ROOT = Path(__file__).resolve().parents[1]
L = 30  # chunk length: short sequences, many chunks
VIRAL_BETA, OTHER_BETA = (4.0, 2.0), (2.0, 4.0)
# Tolerances, stated: the fitted chunk map is within MAX_ERROR of the true probability at every
# score of 0.05..0.95 and within MEAN_ERROR on average, from about 25,000 labelled chunks.
MAX_ERROR, MEAN_ERROR = 0.06, 0.02


def true_probability(s: np.ndarray, share: float) -> np.ndarray:
    viral, other = share * s ** 2, (1 - share) * (1 - s) ** 2
    return viral / (viral + other)


def synthetic_run(out: Path, n: int, share: float, seed: int, max_chunks: int = 4) -> np.ndarray:
    """A finished run of `n` sequences of 1..max_chunks chunks, a `share` of them viral; returns
    the true class per sequence (True = virus) and writes OUT/labels.tsv."""
    rng = np.random.default_rng(seed)
    virus = rng.random(n) < share
    chunks = rng.integers(1, max_chunks + 1, n)
    lengths = chunks * L - rng.integers(0, L // 2, n)  # the last chunk shorter
    out.mkdir(parents=True)
    fasta = out / "input.fa"
    letters = np.frombuffer(b"ACGT", np.uint8)
    with open(fasta, "w") as fh:
        for i, length in enumerate(lengths.tolist()):
            fh.write(f">s{i}\n{letters[rng.integers(0, 4, length)].tobytes().decode()}\n")
    work = out / "work"
    pack_inputs([fasta], work)
    plan = load_plan(work, L)
    assert plan.n_chunks == int(chunks.sum())
    chunk_virus = np.repeat(virus, chunks)
    s = np.where(chunk_virus, rng.beta(*VIRAL_BETA, plan.n_chunks), rng.beta(*OTHER_BETA, plan.n_chunks))
    scores = np.stack([1 - s, s], axis=1).astype(np.float32)
    (work / "parts").mkdir()
    write_atomic(work / "parts", 0, {"units": np.array([0]), "keys": np.arange(plan.n_chunks) * 6, "scores": scores})
    (work / "record.json").write_text(json.dumps({
        "inputs": [{"path": str(fasta)}], "chunk_length": L, "unit_chunks": plan.n_chunks,
        "filters": {"min_length": 0, "max_n_fraction": 1.0}}))
    (out / "config.yaml").write_text(to_yaml(PredictConfig()))
    (out / "run.json").write_text(json.dumps({"vnp": "0.1.0", "counts": {}}))
    (out / "labels.tsv").write_text("id\tlabel\n" + "".join(f"s{i}\t{'virus' if v else 'others'}\n"
                                                             for i, v in enumerate(virus.tolist())))
    return virus


def tables(out: Path) -> dict[str, bytes]:
    """Every file `vnp call` writes (a synthetic run has no per-frame table)."""
    return {name: (out / name).read_bytes() for name in RESULT_FILES}


def contigs(out: Path) -> list[dict[str, str]]:
    header, *rows = (out / "contigs.tsv").read_text().splitlines()
    return [dict(zip(header.split("\t"), row.split("\t"))) for row in rows]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A calibration fitted on 10,000 sequences (about 25,000 chunks), 30% viral."""
    tmp = tmp_path_factory.mktemp("calibration")
    train = tmp / "train"
    synthetic_run(train, 10_000, 0.3, seed=1)
    path = tmp / "calibration.json"
    data = calibrate([(train, train / "labels.tsv")], path)
    return path, data, tmp


def test_the_chunk_map_recovers_the_true_probability(fitted):
    path, data, tmp = fitted
    calibration = load_calibration(path)
    share = data["chunk"]["virus_share"]
    grid = np.linspace(0.05, 0.95, 91)
    error = np.abs(calibration.chunk.probability(grid) - true_probability(grid, share))
    assert error.max() <= MAX_ERROR and error.mean() <= MEAN_ERROR, (error.max(), error.mean())
    # and as chunks.tsv gives it
    train = tmp / "train"
    call(train, [f"calibration={path}"])
    header, *rows = (train / "chunks.tsv").read_text().splitlines()
    columns = header.split("\t")
    s, p = (np.array([float(row.split("\t")[columns.index(name)]) for row in rows])
            for name in ("max_score2", "virus_probability"))
    inside = (s >= 0.05) & (s <= 0.95)
    error = np.abs(p - true_probability(s, share))[inside]
    assert error.max() <= MAX_ERROR and error.mean() <= MEAN_ERROR, (error.max(), error.mean())


def test_the_sequence_map_recovers_the_true_probability_of_one_chunk_sequences(tmp_path):
    """With one chunk per sequence a sequence's true P(virus) is its chunk's: the logistic score
    and the isotonic map over it recover it (same tolerances as for chunks)."""
    run = tmp_path / "run"
    synthetic_run(run, 10_000, 0.3, seed=3, max_chunks=1)
    data = calibrate([(run, run / "labels.tsv")], tmp_path / "c.json")
    call(run, [f"calibration={tmp_path / 'c.json'}"])
    rows = contigs(run)
    s = np.array([float(r["max_virus_score"]) for r in rows])
    p = np.array([float(r["virus_probability"]) for r in rows])
    inside = (s >= 0.05) & (s <= 0.95)
    error = np.abs(p - true_probability(s, data["sequence"]["virus_share"]))[inside]
    assert error.max() <= MAX_ERROR and error.mean() <= MEAN_ERROR, (error.max(), error.mean())


@pytest.mark.parametrize("max_fdr, low, high", [(0.05, 0.03, 0.07), (0.10, 0.07, 0.13)])
def test_max_fdr_holds_on_a_held_out_set(fitted, max_fdr, low, high):
    path, _, tmp = fitted
    held_out = tmp / f"held_out_{max_fdr}"
    virus = synthetic_run(held_out, 10_000, 0.3, seed=7)
    call(held_out, [f"calibration={path}", f"call.max_fdr={max_fdr}"])
    rows = contigs(held_out)
    called = np.array([r["label"] == "virus" for r in rows])
    realised = float(np.mean(~virus[called]))
    assert low <= realised <= high, realised
    p = np.array([float(r["virus_probability"]) for r in rows])
    fdr = np.array([float(r["fdr"]) if r["fdr"] != "NA" else np.nan for r in rows])
    assert np.all(np.isnan(fdr[~called])) and fdr[called].max() <= max_fdr
    # the largest such set: every sequence called has a higher p than every one left out, and
    # adding the best one left out would take the estimate above max_fdr
    assert p[called].min() >= p[~called].max()
    assert np.mean(1 - np.r_[p[called], p[~called].max()]) > max_fdr
    # fdr = mean of 1 - p over the called sequences with a p at least as high (6 decimals printed)
    order = np.lexsort((fdr[called], -p[called]))  # printed p may tie where the p behind it does not
    np.testing.assert_allclose(fdr[called][order], np.cumsum(1 - p[called][order]) / np.arange(1, called.sum() + 1),
                               atol=2e-6)


def test_fdr_and_selection_on_literal_values():
    p = np.array([0.9, 0.8, 0.8, 0.5, np.nan, 0.99])
    called = np.array([True, True, True, False, True, True])
    expected = [(0.01 + 0.1) / 2, (0.01 + 0.1 + 0.2 + 0.2) / 4, (0.01 + 0.1 + 0.2 + 0.2) / 4, np.nan, np.nan, 0.01]
    np.testing.assert_allclose(estimated_fdr(p, called), expected)
    # running means by decreasing p: 0.01, 0.055, 0.1275 (the tie 0.8 enters whole), 0.2
    assert select_by_fdr(p, 0.06).tolist() == [True, False, False, False, False, True]
    assert select_by_fdr(p, 0.13).tolist() == [True, True, True, False, False, True]
    assert select_by_fdr(p, 0.005).tolist() == [False] * 6


def test_prior_moves_the_odds():
    from vnp.results.calibration import with_prior

    p = np.array([0.5, 0.9])
    np.testing.assert_allclose(with_prior(p, 0.3, 0.3), p)
    # share 0.3 -> 0.5: odds times (1 / 1) / (0.3 / 0.7) = 7/3
    np.testing.assert_allclose(with_prior(p, 0.3, 0.5), [0.7, 9 * 7 / 3 / (1 + 9 * 7 / 3)])


def test_calibration_on_record_and_reset_to_todays_tables(fitted):
    """Without a calibration the tables are today's; with one, run.json names the file and its
    checksum; `calibration=` and `call.preset=default` return to today's tables in one call."""
    import hashlib

    path, _, tmp = fitted
    run = tmp / "reset"
    synthetic_run(run, 2_000, 0.3, seed=11)
    call(run, [])
    today = tables(run)
    assert "virus_probability" not in today["contigs.tsv"].decode().splitlines()[0]
    assert "virus_probability" not in today["chunks.tsv"].decode().splitlines()[0]
    run_json = call(run, [f"calibration={path}", "call.max_fdr=0.05", "call.min_score=0.6",
                          "regions.switch_penalty=5", "call.prior=0.2"])
    assert run_json["calls"]["calibration"] == {"path": str(path.resolve()),
                                                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert tables(run)["contigs.tsv"].decode().splitlines()[0].endswith("\tvirus_probability\tfdr")
    assert tables(run)["chunks.tsv"].decode().splitlines()[0].endswith("\tlabel\tvirus_probability")
    again = call(run, ["calibration=", "call.preset=default"])
    assert tables(run) == today
    assert "calibration" not in again["calls"]
    assert (run / "config.yaml").read_text() == to_yaml(PredictConfig())


def flat(config) -> dict[str, object]:
    from dataclasses import asdict

    return {f"{section}.{key}": value for section in ("call", "regions") for key, value in
            asdict(getattr(config, section)).items()}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_change_exactly_the_documented_keys(preset):
    defaults, chosen = flat(PredictConfig()), flat(load_config(None, [f"call.preset={preset}"]))
    changed = {key: value for key, value in chosen.items() if value != defaults[key] and key != "call.preset"}
    assert changed == PRESETS[preset]
    assert changed == readme_presets()[preset]
    # keys given beside a preset override it, in either order
    for items in ([f"call.preset={preset}", "call.min_fraction=0.9"],
                  ["call.min_fraction=0.9", f"call.preset={preset}"]):
        assert load_config(None, items).call.min_fraction == 0.9


def readme_presets() -> dict[str, dict[str, object]]:
    """The README's preset table: | key | relaxed | default | conservative |."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("| key | relaxed | default | conservative |"):].split("\n\n")[0].splitlines()[2:]
    presets = {"relaxed": {}, "default": {}, "conservative": {}}
    for line in block:
        key, *values = [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        default = values[1]
        for name, value in zip(("relaxed", "default", "conservative"), values):
            if value != default:
                presets[name][key] = type(flat(PredictConfig())[key])(value)
    return presets


def test_a_preset_in_vnp_call_starts_over(fitted):
    _, _, tmp = fitted
    run = tmp / "presets"
    synthetic_run(run, 500, 0.3, seed=12)
    call(run, ["call.min_score=0.7", "call.high_margin=0.9", "regions.merge_gap=50"])
    call(run, ["call.preset=conservative"])
    assert flat(load_config(str(run / "config.yaml"), [])) == flat(load_config(None, ["call.preset=conservative"]))
    call(run, ["call.min_fraction=0.8"])  # later calls start from the preset's values
    assert load_config(str(run / "config.yaml"), []).call.min_score == PRESETS["conservative"]["call.min_score"]


def refusal(capsys, text: str, *args: str) -> None:
    """`vnp ARGS` (in this process: the words are the subject) exits 2 with one line holding `text`."""
    capsys.readouterr()
    assert cli_main(list(args)) == 2
    one_error_line(capsys.readouterr().err, text)


def test_refusals(fitted, tmp_path, capsys):
    path, _, tmp = fitted
    small = tmp_path / "small"
    synthetic_run(small, 120, 0.3, seed=4)
    refusal(capsys, "at least 50 of each class are needed",
            "calibrate", str(small), str(small / "labels.tsv"), "-o", str(tmp_path / "c.json"))
    assert not (tmp_path / "c.json").exists()
    none = tmp_path / "none"
    synthetic_run(none, 300, 0.0, seed=4)
    refusal(capsys, "(one class is missing)",
            "calibrate", str(none), str(none / "labels.tsv"), "-o", str(tmp_path / "c.json"))
    refusal(capsys, "give each run with its labels", "calibrate", str(none), "-o", str(tmp_path / "c.json"))
    (tmp_path / "stranger.tsv").write_text("s1\tvirus\nnope\tothers\n")
    refusal(capsys, "1 IDs are neither sequences nor chunks",
            "calibrate", str(none), str(tmp_path / "stranger.tsv"), "-o", str(tmp_path / "c.json"))
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    refusal(capsys, "not a vnp calibration file", "call", str(none), f"calibration={tmp_path / 'bad.json'}")
    refusal(capsys, "call.max_fdr needs calibration=", "call", str(none), "call.max_fdr=0.05")
    refusal(capsys, "call.preset must be relaxed, default or conservative", "call", str(none), "call.preset=strict")
    refusal(capsys, "calibration file not found", "call", str(none), f"calibration={tmp_path / 'missing.json'}")


def test_chunk_labels_take_precedence_over_their_sequence(tmp_path):
    from vnp.calibrate import labelled_items

    run = tmp_path / "run"
    virus = synthetic_run(run, 20, 0.5, seed=5, max_chunks=2)
    (tmp_path / "labels.tsv").write_text("s0\tvirus\ns0_chunk_1\tothers\ns1_chunk_1\tvirus\n")
    entry, (chunk_x, chunk_y, record_x, record_y) = labelled_items(run, tmp_path / "labels.tsv")
    assert record_y.tolist() == [1] and entry["labelled_sequences"] == 1
    # s0's chunks: the first labelled others by its own ID, the rest virus by s0's; then s1_chunk_1
    chunks_of_s0 = len(chunk_y) - 1
    assert chunk_y.tolist() == [0] + [1] * (chunks_of_s0 - 1) + [1] and entry["labelled_chunks"] == len(chunk_y)
    del virus


def test_the_report_shows_the_calibration(fitted):
    path, _, tmp = fitted
    run = tmp / "report"
    synthetic_run(run, 1_000, 0.3, seed=13)
    call(run, [])
    assert "<h2>Calibration</h2>" not in (run / "report.html").read_text()
    call(run, [f"calibration={path}", "call.max_fdr=0.1"])
    page = (run / "report.html").read_text()
    section = page[page.index("<h2>Calibration</h2>"):]
    section = section[:section.index("</section>")]
    called = sum(r["label"] == "virus" for r in contigs(run))
    assert load_calibration(path).sha256 in section and str(path.resolve()) in section
    assert f'data-calibrated-called="{called}"' in section and "call.max_fdr 0.1" in section
    assert section.count("<img") == 1 and "no reliability diagram" not in section
    path_copy = tmp / "moved.json"
    path_copy.write_bytes(path.read_bytes())
    call(run, [f"calibration={path_copy}"])
    path_copy.unlink()
    from vnp.results.report.page import write_report

    write_report(run)
    assert "no reliability diagram" in (run / "report.html").read_text()


def test_predict_takes_a_calibration(fitted, tmp_path, capsys):
    """`vnp predict ... calibration=`: the columns and the record at the end of a real run; a bad
    file is refused at the start, before anything is embedded or written."""
    from vnp.predict import main as predict_main

    path, _, _ = fitted
    fasta = write_mixed_input(tmp_path / "mixed.fa")
    common = ["pack=tiny", "progress=false", "threads=1", "batch.unit_chunks=4", "dist.timeout_s=60"]
    (tmp_path / "bad.json").write_text("{}")
    bad = f"calibration={tmp_path / 'bad.json'}"
    capsys.readouterr()
    assert predict_main([str(fasta), "-o", str(tmp_path / "refused"), *common, bad]) == 2
    one_error_line(capsys.readouterr().err, "not a vnp calibration file")
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "out"
    assert predict_main([str(fasta), "-o", str(out), *common, f"calibration={path}", "call.max_fdr=0.2"]) == 0
    rows = contigs(out)
    assert all(r["virus_probability"] == "NA" for r in rows if r["label"] in ("no_frames", "filtered"))
    assert all(0 < float(r["virus_probability"]) < 1 for r in rows if r["label"] in ("virus", "others"))
    assert all((r["fdr"] == "NA") == (r["label"] != "virus") for r in rows)
    assert json.loads((out / "run.json").read_text())["calls"]["calibration"]["sha256"] == load_calibration(path).sha256
