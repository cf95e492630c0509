"""`vnp models`: the published models on machines without internet.

    vnp models fetch 500 -o DIR          DNABERT-S (pinned commit), ESM2-3B, the 500 bp classifier
    vnp models fetch both -o DIR         DIR/500 and DIR/300 (the language models stored once)
    vnp models verify DIR                every checksum, the classifier's published git blob id
    vnp models list                      the built-in packs, where each resolves, verified or not

Offline-cluster recipe: fetch on a login node, `vnp models verify DIR`, copy DIR to the cluster,
then `vnp predict ... pack=DIR/pack.yaml` (or fetch into $VNP_MODELS/500 and keep pack=500).
`--mirror URL` points every source at a mirror holding the same paths (its root speaks the Hugging
Face hub API, as HF_ENDPOINT does); `--hf-endpoint`, `--esm-url`, `--classifier-url` point one each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vnp.support.command import command
from vnp.support.errors import InputError
from vnp.models import sources

PACK_CHOICES = ("500", "300", "both")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    fetch = sub.add_parser("fetch", help="download a pack's models into a folder that can be copied anywhere")
    fetch.add_argument("pack", metavar="PACK", help="500, 300, both, or a pack YAML naming a hub id and ESM model")
    fetch.add_argument("-o", "--out-dir", required=True, metavar="DIR")
    fetch.add_argument("--mirror", metavar="URL", help="one mirror for every source (hub API at its root; the "
                       "ESM and classifier files under their original paths)")
    fetch.add_argument("--hf-endpoint", metavar="URL", help="the Hugging Face hub (default $HF_ENDPOINT or "
                       f"{sources.HF_ENDPOINT})")
    fetch.add_argument("--esm-url", metavar="URL", help=f"the ESM checkpoint (default {sources.ESM_MODEL_URL})")
    fetch.add_argument("--classifier-url", metavar="URL", help=f"the classifier .pth (default "
                       f"{sources.CLASSIFIER_URL}); another URL skips the published blob id check")
    fetch.add_argument("--classifier-blob", metavar="SHA1", help="the git blob id the classifier must have")
    fetch.add_argument("--keep-pth", action="store_true", help="keep the original .pth beside the safetensors")
    fetch.add_argument("--timeout", type=float, default=sources.DEFAULT_TIMEOUT_S, metavar="S",
                       help="seconds a server may stay silent (default %(default)s)")
    fetch.add_argument("--retries", type=int, default=4, help="tries again after an interrupted transfer, "
                       "waiting 1, 2, 4 ... s (default %(default)s)")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bars")
    verify = sub.add_parser("verify", help="recompute every checksum of a fetched pack folder (exit 1 on a mismatch)")
    verify.add_argument("folder", metavar="DIR", help="a pack folder, or a folder of packs ($VNP_MODELS)")
    sub.add_parser("list", help="the built-in packs and where each resolves")


@command
def run(args: argparse.Namespace) -> int:
    return {"fetch": run_fetch, "verify": run_verify, "list": run_list}[args.models_command](args)


def run_fetch(args: argparse.Namespace) -> int:
    from vnp.models.fetch import fetch_pack, link_shared

    if sources.network().offline:
        raise InputError("vnp models fetch needs the network, and HF_HUB_OFFLINE is set")
    if args.timeout <= 0 or args.retries < 0:
        raise InputError("--timeout must be positive and --retries at least 0")
    out = Path(args.out_dir)
    names = ["500", "300"] if args.pack == "both" else [args.pack]
    done = []
    for name in names:
        pack = _pack_settings(name)
        target = out / pack["name"] if args.pack == "both" else out
        if done:
            link_shared(done[0].parent, target)
        done.append(fetch_pack(pack, target, _options(args, pack)))
    for path in done:
        print(f"vnp: pack {path.parent.name if args.pack == 'both' else args.pack} is in {path.parent}; check it "
              f"with `vnp models verify {path.parent}`, then use pack={path}", file=sys.stderr)
    return 0


def _pack_settings(name: str) -> dict:
    from vnp.support.config import read_yaml_mapping
    from vnp.models.pack import BUILTIN, builtin_pack_data

    if name in BUILTIN:
        return builtin_pack_data(name)
    if not Path(name).is_file():
        raise InputError(f"{name}: not a pack to fetch (500, 300, both, or a pack YAML file)")
    return read_yaml_mapping(name, "model pack")


def _options(args: argparse.Namespace, pack: dict):
    from vnp.models.fetch import FetchOptions

    def mirrored(url: str) -> str:  # the same path under the mirror
        return args.mirror.rstrip("/") + "/" + url.split("/", 3)[3] if args.mirror else url

    classifier_url = args.classifier_url or mirrored(sources.CLASSIFIER_URL)
    blob = args.classifier_blob or (None if args.classifier_url else sources.CLASSIFIER_BLOBS.get(str(pack["name"])))
    return FetchOptions(hf_endpoint=(args.hf_endpoint or args.mirror or sources.hf_endpoint()).rstrip("/"),
                        esm_url=args.esm_url or mirrored(sources.ESM_MODEL_URL), classifier_url=classifier_url,
                        classifier_blob=blob, keep_pth=args.keep_pth, timeout_s=args.timeout,
                        retries=args.retries, progress=not args.no_progress)


def pack_folders(folder: Path) -> list[Path]:
    """`folder` itself when it holds a pack, else its sub-folders that do."""
    if (folder / "pack.yaml").is_file():
        return [folder]
    found = sorted(p.parent for p in folder.glob("*/pack.yaml")) if folder.is_dir() else []
    if not found:
        raise InputError(f"{folder}: no pack.yaml in it or in its sub-folders")
    return found


def run_verify(args: argparse.Namespace) -> int:
    from vnp.models.verify import SUMS, verify_folder

    failed = 0
    for folder in pack_folders(Path(args.folder)):
        if not (folder / SUMS).exists():
            raise InputError(f"{folder}: no {SUMS} (not a folder made by `vnp models fetch`)")
        checks = verify_folder(folder)
        for check in checks:
            print(f"{'ok' if check.problem is None else 'FAILED':6} {folder / check.name}"
                  f"{': ' + check.problem if check.problem else ''}")
        bad = sum(c.problem is not None for c in checks)
        total = sum(c.size for c in checks)
        print(f"{folder}: {'verified' if not bad else 'FAILED'}: {len(checks) - bad} of {len(checks)} files "
              f"match ({total / 1e9:.2f} GB)")
        failed += bad
    return 1 if failed else 0


def run_list(args: argparse.Namespace) -> int:
    from vnp.models.pack import BUILTIN, builtin_pack_data, installed_pack
    from vnp.models.verify import verify_folder

    for name in BUILTIN:
        installed = installed_pack(name)
        if installed is not None:
            try:
                bad = [c for c in verify_folder(installed.parent) if c.problem]
                state = "verified" if not bad else f"NOT verified: {bad[0].name}: {bad[0].problem}"
            except InputError as err:
                state = f"NOT verified: {err}"
            print(f"{name}: {installed} ({state})")
        else:
            data = builtin_pack_data(name)
            print(f"{name}: not fetched; at run time {data['dnabert']}@{data.get('dnabert_revision') or 'main'} "
                  f"from {sources.hf_endpoint()} and {data['esm']} from fair-esm (caches), classifier= needed; "
                  f"`vnp models fetch {name} -o $VNP_MODELS/{name}` installs it")
    print(f"VNP_MODELS={sources.models_dir() or '(unset)'}; offline={'yes' if sources.network().offline else 'no'}")
    return 0
