"""vnp changes only what it can prove is its own (issue 17, item 1): an output folder that is not
empty and not one vnp made is refused, naming what is there, by predict, train, report and
evaluate -o; in its own folders vnp removes only files of its exact name forms."""

from __future__ import annotations

import json

import pytest

from vnp.run.folder import RunFolder
from vnp.support.errors import InputError


def user_folder(root):
    """A folder of someone's files, some with the names vnp's old globs matched."""
    files = {"notes.txt": "mine", "draft.tmp": "mine", "work/stop-now.txt": "mine", "work/heartbeat-log": "mine",
             "work/ready-1.json": "{}", "work/remaining-a.npy": "mine", "work/old.tmp": "mine",
             "embeddings/keep.npz": "mine"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return files


def unchanged(root, files) -> bool:
    present = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    return present == set(files) and all((root / n).read_text() == t for n, t in files.items())


def test_predict_refuses_a_folder_of_other_files_and_touches_none(tmp_path, capsys):
    from vnp.predict import main

    fasta = tmp_path / "in.fa"
    fasta.write_text(">s\n" + "ATGGCC" * 30 + "\n")
    out = tmp_path / "mine"
    files = user_folder(out)
    assert main([str(fasta), "-o", str(out), "pack=tiny", "progress=false", "threads=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vnp: error: {out}: the output folder is not empty and not one vnp made (it holds "
                          "'draft.tmp', 'embeddings', 'notes.txt', 'work'); choose a new or empty folder")
    assert len(err.splitlines()) == 1 and unchanged(out, files)


def test_an_empty_folder_is_taken(tmp_path):
    folder = RunFolder(tmp_path / "empty")
    folder.root.mkdir()
    folder.check_usable()
    folder.lock()
    folder.close()
    assert folder.is_vnp_folder()
    RunFolder(folder.root).check_usable()  # vnp's own from now on


def test_many_entries_are_counted_not_listed(tmp_path):
    for i in range(9):
        (tmp_path / f"f{i}").write_text("")
    with pytest.raises(InputError, match=r"holds 'f0', 'f1', 'f2', 'f3', 'f4' and 4 more\)"):
        RunFolder(tmp_path).check_usable()


def test_in_its_own_folder_vnp_clears_only_its_exact_names(tmp_path):
    folder = RunFolder(tmp_path / "out")
    folder.check_usable()
    folder.lock()
    files = user_folder(folder.root)
    ours = [folder.ready("0123456789ab"), folder.remaining("0123456789ab"), folder.heartbeat("0123456789ab"),
            folder.stop_request("0123456789ab"), folder.alive(3), folder.work / "ids.txt.vnp-0123456789ab.tmp",
            folder.root / "contigs.tsv.vnp-0123456789ab.tmp",
            folder.embeddings / "part-000001-0123456789abcdef0123456789abcdef.npz",
            folder.parts / "part-000001-0123456789abcdef0123456789abcdef.npz"]
    for path in ours:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("vnp")
    folder.remove_leftovers()
    folder.remove_handshake_files()
    folder.clear_progress()
    folder.close()
    assert not any(path.exists() for path in ours)
    assert unchanged(folder.root, {**files, "work/.lock": ""})


def test_train_refuses_a_folder_of_other_files(tmp_path, capsys):
    from vnp.train import main

    manifest = tmp_path / "m.tsv"
    manifest.write_text("a.fa\tvirus\n")
    out = tmp_path / "mine"
    files = user_folder(out)
    assert main([str(manifest), "-o", str(out), "pack=tiny", "progress=false", "threads=1"]) == 2
    err = capsys.readouterr().err
    assert "the output folder is not empty and not one vnp made" in err and len(err.splitlines()) == 1
    assert unchanged(out, files)


def test_report_refuses_a_run_json_vnp_did_not_write(tmp_path, capsys):
    from vnp.report import main

    (tmp_path / "run.json").write_text(json.dumps({"tool": "another"}))
    (tmp_path / "report.html").write_text("mine")
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"vnp: error: {tmp_path / 'run.json'}: not a vnp run record (a JSON object with a \"vnp\" " \
                  "version); vnp writes a report only into the output folder of one of its runs\n"
    assert (tmp_path / "report.html").read_text() == "mine"


@pytest.fixture
def evaluated_run(tmp_path):
    """The files `vnp evaluate` reads, as a finished run has them."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "chunks.tsv").write_text("chunk_id\tsequence_id\tstart\tend\tframes\tmax_score1\tmax_score2\tlabel\n"
                                    "a_chunk_1\ta\t1\t300\t2\t0.1\t0.9\tvirus\n"
                                    "b_chunk_1\tb\t1\t300\t2\t0.8\t0.2\tothers\n")
    (out / "contigs.tsv").write_text("sequence_id\tmax_virus_score\tlabel\n"
                                     "a\t0.9\tvirus\nb\t0.2\tothers\n")
    labels = tmp_path / "labels.tsv"
    labels.write_text("a\tvirus\nb\tothers\n")
    return out, labels


def test_evaluate_refuses_an_output_folder_of_other_files(evaluated_run, tmp_path, capsys):
    from vnp.evaluate import main

    out, labels = evaluated_run
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "roc.png").write_text("my figure")
    assert main([str(out), str(labels), "-o", str(mine)]) == 2
    assert "the evaluation folder (-o) is not empty and not one vnp made (it holds 'roc.png')" in capsys.readouterr().err
    assert (mine / "roc.png").read_text() == "my figure"
    fresh = tmp_path / "fresh"
    assert main([str(out), str(labels), "-o", str(fresh)]) == 0
    assert main([str(out), str(labels), "-o", str(fresh)]) == 0  # its own evaluation: replaced
    assert sorted(p.name for p in fresh.iterdir()) == ["evaluation.json", "roc.png"]


def test_evaluate_o_an_existing_file_is_one_line(evaluated_run, tmp_path, capsys):
    from vnp.evaluate import main

    out, labels = evaluated_run
    (tmp_path / "file").write_text("mine")
    assert main([str(out), str(labels), "-o", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == f"vnp: error: {tmp_path / 'file'}: -o is an existing file, not a folder\n"
