"""`vnp models fetch`: a self-contained pack folder, made on a machine with internet, copied anywhere.

    DIR/pack.yaml                 paths relative to DIR; the DNABERT-S commit (`dnabert_revision`)
    DIR/dnabert/                  config.json, tokenizer.json, the checkpoint, at that commit
    DIR/esm2_t36_3B_UR50D.pt      fair-esm's checkpoint
    DIR/classifier/               the published classifier converted to safetensors + json
    DIR/SHA256SUMS, sources.json  every file's digest; URL, revision, size, sha256, vnp version, date

DNABERT-S comes through huggingface_hub (`snapshot_download` at the commit the revision names, so
`HF_ENDPOINT` and a mirror work); the other files through vnp.models.download. Each file is written
under a temporary name and renamed once complete and checked (the classifier against its published
git blob id); pack.yaml is written last, so a folder without it is unfinished: run the same command
again to continue (finished files are kept, a partial one is resumed).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from vnp.support.errors import InputError
from vnp.support import atomic
from vnp.models import sources
from vnp.models.download import content_length, download_file, get_json
from vnp.models.identity import file_digest
from vnp.models.verify import SOURCES, git_blob_id, write_sums

log = logging.getLogger("vnp")

DNABERT_DIR = "dnabert"
CLASSIFIER_DIR = "classifier"
SPACE_MARGIN = 1.02  # free space asked for beyond the bytes still to come


@dataclass
class FetchOptions:
    hf_endpoint: str
    esm_url: str  # "{name}" is the pack's ESM model name
    classifier_url: str  # "{name}" is the pack's name (300, 500)
    classifier_blob: str | None  # the git blob id the .pth must have; None: not checked
    keep_pth: bool = False
    timeout_s: float = sources.DEFAULT_TIMEOUT_S
    retries: int = 4
    backoff_s: float = 1.0
    progress: bool = True


def fetch_pack(pack: dict, out: Path, options: FetchOptions) -> Path:
    """Fetch the models `pack` (a built-in pack's settings) names into `out`; returns pack.yaml."""
    out.mkdir(parents=True, exist_ok=True)
    repo, revision = pack["dnabert"], pack.get("dnabert_revision") or "main"
    commit = _resolve_commit(options.hf_endpoint, repo, revision, options.timeout_s)
    esm_url = options.esm_url.format(name=pack["esm"])
    classifier_url = options.classifier_url.format(name=pack["name"])
    esm_name = esm_url.rsplit("/", 1)[-1]
    pth_name = classifier_url.rsplit("/", 1)[-1]
    dnabert_files = _plan_dnabert(repo, commit, out, options)
    _check_free_space(out, {**{f"{DNABERT_DIR}/{n}": s for n, s in dnabert_files.items()},
                       esm_name: content_length(esm_url, options.timeout_s)})
    _fetch_dnabert(repo, commit, list(dnabert_files), out, options)
    entries = {f"{DNABERT_DIR}/{name}": {"url": f"{options.hf_endpoint}/{repo}/resolve/{commit}/{name}",
                                        "revision": commit} for name in dnabert_files}
    _fetch_plain(esm_url, out / esm_name, options)
    entries[esm_name] = {"url": esm_url}
    entries.update(_fetch_classifier(classifier_url, out, pth_name, options))
    _write_records(out, pack, entries)
    data = {**pack, "dnabert": DNABERT_DIR, "dnabert_revision": commit, "esm": esm_name,
            "classifier": CLASSIFIER_DIR}
    atomic.write_text(out / "pack.yaml", OmegaConf.to_yaml(OmegaConf.create(data)))
    return out / "pack.yaml"


def _resolve_commit(endpoint: str, repo: str, revision: str, timeout_s: float) -> str:
    """The commit a revision (branch, tag or commit) names now, from the hub's revision API."""
    url = f"{endpoint}/api/models/{repo}/revision/{revision}"
    commit = get_json(url, timeout_s).get("sha")
    if not isinstance(commit, str) or len(commit) != 40:
        raise InputError(f"{url}: the answer names no commit")
    if commit != revision:
        print(f"vnp: {repo}: revision {revision} is commit {commit}", file=sys.stderr)
    return commit


def _plan_dnabert(repo: str, commit: str, out: Path, options: FetchOptions) -> dict[str, int]:
    """name -> size of the DNABERT files to fetch: config, tokenizer, safetensors else the .bin."""
    from vnp.models.dnabert import CHECKPOINT_FILES, CONFIG_FILE, TOKENIZER_FILE

    listed = {info.filename: info.file_size or 0 for info in _fetch_snapshot(repo, commit, out, options, dry_run=True)}
    checkpoint = next((name for name in CHECKPOINT_FILES if name in listed), None)
    missing = [name for name in (CONFIG_FILE, TOKENIZER_FILE) if name not in listed]
    if checkpoint is None or missing:
        raise InputError(f"{repo}@{commit}: the repository lacks {', '.join(missing) or ' and '.join(CHECKPOINT_FILES)}")
    return {name: listed[name] for name in (CONFIG_FILE, TOKENIZER_FILE, checkpoint)}


def _fetch_snapshot(repo: str, commit: str, out: Path, options: FetchOptions, dry_run: bool = False,
              files: list[str] | None = None):
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo, revision=commit, local_dir=out / DNABERT_DIR, endpoint=options.hf_endpoint,
                                 allow_patterns=files, etag_timeout=options.timeout_s, dry_run=dry_run)
    except Exception as err:  # huggingface_hub's errors (HTTP, network, missing files) in one line
        reason = " ".join(str(err).split())[:300]
        raise InputError(f"{repo}@{commit}: from {options.hf_endpoint}: {type(err).__name__}: {reason}") from None


def _fetch_dnabert(repo: str, commit: str, files: list[str], out: Path, options: FetchOptions) -> None:
    """snapshot_download resumes its own partial files; a failed try is tried again with back-off."""
    folder = out / DNABERT_DIR
    if all((folder / name).is_file() for name in files) and not (folder / ".cache").exists():
        return  # finished by an earlier run
    for attempt in range(options.retries + 1):
        try:
            _fetch_snapshot(repo, commit, out, options, files=files)
            break
        except InputError as err:
            if attempt == options.retries:
                raise
            wait = options.backoff_s * 2 ** attempt
            print(f"vnp: {err}; trying again in {wait:.0f} s", file=sys.stderr)
            time.sleep(wait)
    shutil.rmtree(folder / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping


def _fetch_plain(url: str, dest: Path, options: FetchOptions) -> None:
    if dest.is_file():
        return
    part = dest.with_name(dest.name + ".part")
    download_file(url, part, options.timeout_s, options.retries, options.backoff_s, progress=options.progress)
    os.replace(part, dest)


def _fetch_classifier(url: str, out: Path, pth_name: str, options: FetchOptions) -> dict[str, dict]:
    """Download the .pth, check its git blob id, convert it to safetensors (+ json)."""
    from vnp.models.pack import convert_classifier

    pth = out / pth_name
    entries = {}
    if not (out / CLASSIFIER_DIR).is_dir():
        part = pth if pth.is_file() else pth.with_name(pth.name + ".part")
        if part != pth:
            download_file(url, part, options.timeout_s, options.retries, options.backoff_s, progress=options.progress)
        blob = git_blob_id(part)
        if options.classifier_blob and blob != options.classifier_blob:
            part.unlink()
            raise InputError(f"{url}: git blob id {blob}, not the published {options.classifier_blob}; the file "
                             "was removed (a changed or wrong file)")
        tmp = out / (CLASSIFIER_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        convert_classifier(str(part), str(tmp))
        os.replace(tmp, out / CLASSIFIER_DIR)
        if options.keep_pth:
            os.replace(part, pth)
        else:
            part.unlink()
    for name in ("classifier.safetensors", "classifier.json"):
        entries[f"{CLASSIFIER_DIR}/{name}"] = {"url": url, "converted_from": pth_name}
    if pth.is_file():
        entries[pth_name] = {"url": url, **({"git_blob": options.classifier_blob} if options.classifier_blob else {})}
    return entries


def _check_free_space(out: Path, sizes: dict[str, int]) -> None:
    """Refuse before downloading when the bytes still to come do not fit."""
    needed = sum(max(size - _present(out / name), 0) for name, size in sizes.items())
    free = shutil.disk_usage(out).free
    if needed * SPACE_MARGIN > free:
        raise InputError(f"{out}: {free / 1e9:.1f} GB free, the pack needs {needed / 1e9:.1f} GB more")


def _present(path: Path) -> int:
    for candidate in (path, path.with_name(path.name + ".part")):
        if candidate.is_file():
            return candidate.stat().st_size
    return 0


def _write_records(out: Path, pack: dict, entries: dict[str, dict]) -> None:
    """SHA256SUMS and sources.json over every file of the pack."""
    from vnp import __version__

    files = {}
    for name, entry in sorted(entries.items()):
        path = out / name
        files[name] = {**entry, "size": path.stat().st_size, "sha256": file_digest(path, "model pack file")}
    write_sums(out, {name: entry["sha256"] for name, entry in files.items()})
    record = {"pack": pack["name"], "vnp_version": __version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "files": files}
    atomic.write_text(out / SOURCES, json.dumps(record, indent=2) + "\n")


def link_shared(source: Path, dest: Path) -> None:
    """The language models of a pack fetched before (`both`): hard links (copies across
    filesystems), so two packs of one folder hold DNABERT-S and ESM2-3B once."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in [source / DNABERT_DIR, *source.glob("esm2_*.pt")]:
        for src in ([item] if item.is_file() else [p for p in item.iterdir() if p.is_file()]):
            target = dest / src.relative_to(source)
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, target)
            except OSError:
                shutil.copy2(src, target)
